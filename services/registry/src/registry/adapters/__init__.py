"""Storage adapters of the registry."""

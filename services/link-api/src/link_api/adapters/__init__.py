"""Storage and remote-service adapters of link-api."""

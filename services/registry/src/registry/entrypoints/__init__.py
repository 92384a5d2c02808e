"""How requests and events reach the registry's handlers."""

"""How requests and events reach link-api's handlers."""

"""The broker's rules: providers, authorization sessions, grants, and whose mailbox signed in."""

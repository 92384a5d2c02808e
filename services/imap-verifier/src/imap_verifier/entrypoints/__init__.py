"""How events reach the verifier's handler."""

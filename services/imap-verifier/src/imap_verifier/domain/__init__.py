"""What the verifier decides, without I/O."""

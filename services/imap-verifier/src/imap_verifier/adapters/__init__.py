"""The verifier's adapters: its MongoDB store, the proof relay and the typed INBOX."""

"""The registry's rules: who may link which mailbox, and how many; no I/O here."""

"""What a link request is and how its status moves; no I/O here."""

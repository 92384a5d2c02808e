"""The registry's rules: link lifecycle, who may take an address, plans; no I/O here."""

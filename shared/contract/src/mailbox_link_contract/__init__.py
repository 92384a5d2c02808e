"""mailbox-link's public event contract: the catalogue of topics and events (`topics`), the
event models (`events`), the failure codes (`failures`), how to read a record (`reading`), and
example events and JSON Schemas per version (`files`). It depends on pydantic alone."""

CONTRACT_VERSION = "1.6.0"

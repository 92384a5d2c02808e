"""The passwords of a link request, once opened; never printed."""

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class MailboxCredentials:
    """IMAP and SMTP passwords as the user gave them."""

    imap_password: str
    smtp_password: str

    def __repr__(self) -> str:
        return "MailboxCredentials(<redacted>)"

    @classmethod
    def from_json(cls, text: str) -> "MailboxCredentials":
        """Reads the JSON object that link-api sealed."""
        raw = json.loads(text)
        return cls(imap_password=str(raw["imap_password"]), smtp_password=str(raw["smtp_password"]))

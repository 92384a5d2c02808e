"""What a link request's sealed `credentials` hold once opened; never printed."""

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class MailboxCredentials:
    """IMAP and SMTP passwords as the user gave them."""

    imap_password: str
    smtp_password: str

    def __repr__(self) -> str:
        return "MailboxCredentials(<redacted>)"

    def to_json(self) -> str:
        """Returns the JSON object that gets sealed into LinkRequested."""
        return json.dumps(
            {"imap_password": self.imap_password, "smtp_password": self.smtp_password}
        )

    @classmethod
    def from_json(cls, text: str) -> "MailboxCredentials":
        """Reads an opened JSON object back."""
        raw = json.loads(text)
        return cls(imap_password=str(raw["imap_password"]), smtp_password=str(raw["smtp_password"]))

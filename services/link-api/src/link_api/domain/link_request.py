"""A validated request to link a custom-IMAP mailbox, in normalized form."""

import hashlib
import json
from dataclasses import dataclass

from mailbox_link_shared.credentials import MailboxCredentials
from mailbox_link_shared.events import MailboxOwner, ProviderType, ServerSettings


@dataclass(frozen=True)
class LinkRequest:
    """Everything needed to verify and link one mailbox, already validated and normalized."""

    owner: MailboxOwner
    address: str
    provider: ProviderType
    imap: ServerSettings
    smtp: ServerSettings
    credentials: MailboxCredentials

    def fingerprint(self) -> str:
        """Identifies the request's non-secret content, to tell a retry from a different request."""
        content = {
            "owner": self.owner.model_dump(),
            "address": self.address,
            "provider": self.provider.value,
            "imap": self.imap.model_dump(mode="json"),
            "smtp": self.smtp.model_dump(mode="json"),
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def in_flight_key(self) -> str:
        """Names 'this user linking this mailbox', of which only one may be under way at a time."""
        return f"{self.owner.account_id}\x1f{self.owner.user_id}\x1f{self.address}"

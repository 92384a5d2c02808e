"""Calls the registry's HTTP API for what only it knows: which mailboxes a user has linked."""

import logging
from enum import Enum
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from mailbox_link_contract.events import MailboxOwner

logger = logging.getLogger(__name__)


class RegistryUnavailable(Exception):
    """The registry did not answer; the caller should retry later."""


class Unlink(Enum):
    """What the registry made of an unlink."""

    UNLINKED = "unlinked"
    NOT_FOUND = "not_found"
    IN_PROGRESS = "in_progress"  # the mailbox is being linked right now


class Registry(Protocol):
    """What link-api asks of the registry."""

    async def list_mailboxes(self, owner: MailboxOwner) -> list[dict[str, Any]]: ...
    async def unlink_mailbox(self, owner: MailboxOwner, mailbox: str) -> Unlink: ...


class HttpRegistry:
    """Registry over HTTP with link-api's own service token."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def list_mailboxes(self, owner: MailboxOwner) -> list[dict[str, Any]]:
        response = await self._call("GET", _mailboxes_path(owner))
        mailboxes: list[dict[str, Any]] = response.json()["mailboxes"]
        return mailboxes

    async def unlink_mailbox(self, owner: MailboxOwner, mailbox: str) -> Unlink:
        """Unlinks the mailbox named by its normalized address or its mailbox_id."""
        # Every character percent-encoded ("/" included): the registry decodes the segment.
        response = await self._call("DELETE", f"{_mailboxes_path(owner)}/{quote(mailbox, safe='')}")
        if response.status_code == httpx.codes.CONFLICT:
            return Unlink.IN_PROGRESS
        if response.status_code == httpx.codes.NO_CONTENT:
            return Unlink.UNLINKED
        return Unlink.NOT_FOUND

    async def _call(self, method: str, path: str) -> httpx.Response:
        try:
            response = await self._client.request(method, path)
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(type(exc).__name__) from exc
        if response.status_code in (401, 403):
            # Configuration, not an outage: the operator must fix the keys (docs/adr/0017).
            logger.error(
                "the registry refused MBL_REGISTRY_TOKEN (%s): list it in the registry's "
                "MBL_SERVICE_KEYS and grant it the scope 'registry' in MBL_SERVICE_KEY_SCOPES",
                response.status_code,
            )
        if response.status_code >= 500 or response.status_code in (401, 403):
            raise RegistryUnavailable(f"registry answered {response.status_code}")
        return response


def _mailboxes_path(owner: MailboxOwner) -> str:
    account, user = quote(owner.account_id, safe=""), quote(owner.user_id, safe="")
    return f"/v1/accounts/{account}/users/{user}/mailboxes"

"""Asking the registry for a linked mailbox's access, as an internal service does
(docs/adr/0023): `POST /v1/accounts/{account_id}/mailboxes/{mailbox_id}/access` with a key
holding the `mailbox_access` scope.

The answer is read tolerantly (unknown fields are ignored, as the contract asks of event
readers too), and the secrets it carries never appear in a repr.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from mailbox_link_contract.values import ConnectionSecurity

PASSWORD_MECHANISMS = ("PLAIN", "LOGIN")
TOKEN_MECHANISMS = ("XOAUTH2", "OAUTHBEARER")


@dataclass(frozen=True)
class MailServer:
    """How to reach and log in to one of the mailbox's servers."""

    host: str
    port: int
    security: ConnectionSecurity
    username: str
    password: str | None = field(default=None, repr=False)  # password mailboxes only


@dataclass(frozen=True)
class MailboxAccess:
    """What the registry handed out: servers and either passwords or a fresh access token."""

    mailbox_id: str
    address: str
    auth: str  # "password" or "oauth"
    imap: MailServer
    smtp: MailServer
    # PLAIN/LOGIN for passwords (in the registry's order of preference), else the one
    # mechanism the token goes with (XOAUTH2 or OAUTHBEARER).
    sasl_mechanisms: tuple[str, ...]
    access_token: str | None = field(default=None, repr=False)
    expires_at: datetime | None = None
    health: str | None = None
    cache_control: str = ""  # the answer's Cache-Control header (no-store expected)

    @property
    def uses_token(self) -> bool:
        """True when the servers are logged in to with the access token."""
        return self.access_token is not None


class AccessRefused(Exception):
    """The registry refused: 403 (scope), 404 (not this key's mailbox), 409 (reconnect
    required), 429 (rate limit), ... with the API's error code."""

    def __init__(self, status: int, code: str, retry_after: str | None = None) -> None:
        super().__init__(f"access refused: {status} {code}")
        self.status = status
        self.code = code
        self.retry_after = retry_after


class UnreadableAccess(ValueError):
    """A 200 answer this service cannot use (a field missing or of the wrong kind)."""


def access_path(account_id: str, mailbox_id: str) -> str:
    """Returns the access route of one mailbox."""
    return f"/v1/accounts/{account_id}/mailboxes/{mailbox_id}/access"


async def request_access(
    registry: httpx.AsyncClient,
    account_id: str,
    mailbox_id: str,
    *,
    min_valid_seconds: int | None = None,
) -> MailboxAccess:
    """Asks for the mailbox's access. `registry` carries the base URL, the key
    (`Authorization: Bearer ...`) and a timeout; raises AccessRefused on any error answer."""
    body = {} if min_valid_seconds is None else {"min_valid_seconds": min_valid_seconds}
    response = await registry.post(access_path(account_id, mailbox_id), json=body)
    if response.status_code != 200:
        raise AccessRefused(
            response.status_code, error_code(response), response.headers.get("retry-after")
        )
    try:
        document = response.json()
    except ValueError as exc:
        raise UnreadableAccess("the answer is not JSON") from exc
    return parse_access(document, mailbox_id, response.headers.get("cache-control", ""))


def registry_client(registry_url: str, key: str, timeout: float = 10.0) -> httpx.AsyncClient:
    """Returns a client of the registry calling with `key`."""
    return httpx.AsyncClient(
        base_url=registry_url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout
    )


def error_code(response: httpx.Response) -> str:
    """The API's error code: {"error": "<code>", ...} (mailbox_link_shared.http), also read
    from {"error": {"code": ...}}; the status as text when the body has none."""
    try:
        document = response.json()
    except ValueError:
        return str(response.status_code)
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict):
        error = error.get("code")
    return error if isinstance(error, str) else str(response.status_code)


def parse_access(document: object, mailbox_id: str = "", cache_control: str = "") -> MailboxAccess:
    """Reads an access answer; raises UnreadableAccess naming the field (never its value)."""
    doc = _object(document, "body")
    token = doc.get("access_token")
    if token is not None and not isinstance(token, str):
        raise UnreadableAccess("access_token: not a string")
    if token is not None:
        mechanism = _string(doc, "sasl_mechanism").upper()
        if mechanism not in TOKEN_MECHANISMS:
            raise UnreadableAccess("sasl_mechanism: not XOAUTH2 or OAUTHBEARER")
        mechanisms: tuple[str, ...] = (mechanism,)
    else:
        offered = doc.get("sasl_mechanisms", list(PASSWORD_MECHANISMS))
        if not isinstance(offered, list):
            raise UnreadableAccess("sasl_mechanisms: not a list")
        mechanisms = tuple(m.upper() for m in offered if str(m).upper() in PASSWORD_MECHANISMS)
        if not mechanisms:
            raise UnreadableAccess("sasl_mechanisms: neither PLAIN nor LOGIN")
    shared_password = doc.get("password")
    imap = _server(doc, "imap", shared_password, needs_password=token is None)
    smtp = _server(doc, "smtp", shared_password, needs_password=token is None)
    expires_at = doc.get("expires_at")
    return MailboxAccess(
        mailbox_id=str(doc.get("mailbox_id") or mailbox_id),
        address=str(doc.get("address") or imap.username),
        auth=str(doc.get("auth") or ("oauth" if token is not None else "password")),
        imap=imap,
        smtp=smtp,
        sasl_mechanisms=mechanisms,
        access_token=token,
        expires_at=_time(expires_at) if expires_at is not None else None,
        health=_optional_string(doc.get("health", doc.get("status"))),
        cache_control=cache_control,
    )


def _server(
    doc: dict[str, Any], name: str, shared_password: object, *, needs_password: bool
) -> MailServer:
    server = _object(doc.get(name), name)
    try:
        security = ConnectionSecurity(_string(server, "security", name))
    except ValueError as exc:
        raise UnreadableAccess(f"{name}.security: not ssl or starttls") from exc
    port = server.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise UnreadableAccess(f"{name}.port: not a port number")
    password = server.get("password", shared_password)
    if needs_password and not isinstance(password, str):
        raise UnreadableAccess(f"{name}.password: missing")
    return MailServer(
        host=_string(server, "host", name),
        port=port,
        security=security,
        username=_string(server, "username", name),
        password=password if isinstance(password, str) else None,
    )


def _object(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UnreadableAccess(f"{name}: not an object")
    return value


def _string(doc: dict[str, Any], key: str, parent: str = "") -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise UnreadableAccess(f"{parent + '.' if parent else ''}{key}: not a string")
    return value


def _optional_string(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _time(value: object) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)  # seconds since the epoch
    if not isinstance(value, str):
        raise UnreadableAccess("expires_at: not a date-time")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UnreadableAccess("expires_at: not a date-time") from exc

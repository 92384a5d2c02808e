"""The HTTP schema refuses every class of bad input with the field named and a fix, and a
refused request stores and emits nothing; any address accepted can be unlinked."""

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from link_api.adapters.detector import Detector
from link_api.adapters.registry_client import HttpRegistry, Unlink
from link_api.domain.link_request import LinkRequest
from link_api.entrypoints.http import build_router
from link_api.entrypoints.schemas import LinkRequestIn
from link_api.handlers import LinkApiDeps
from link_api_fakes import FakeAutoconfig, FakeDns, InMemoryLinkStore
from mailbox_link_contract.events import AuthMethod, MailboxOwner, ProviderType, ServerSettings
from mailbox_link_shared.addresses import normalize_address
from mailbox_link_shared.credentials import MailboxCredentials
from mailbox_link_shared.crypto import SecretBox, generate_key
from mailbox_link_shared.http import MAX_BODY_BYTES, CallerKeys, build_http_app, scoped
from mailbox_link_shared.publishing import RecordingPublisher
from mailbox_link_shared.scopes import Scope, caller_keys


def _body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "email": "alice@example.org",
        "terms_accepted": True,
        "imap": {"host": "imap.example.org", "port": 993, "security": "ssl", "password": "pw-123"},
        "smtp": {"host": "smtp.example.org", "port": 587, "security": "starttls"},
    }
    body.update(changes)
    return body


def test_defaults_usernames_to_the_email_and_smtp_password_to_imap() -> None:
    request = LinkRequestIn.model_validate(_body(email=" Alice@Example.org ")).to_domain(
        MailboxOwner(account_id="acme", user_id="u1")
    )
    assert request.address == "alice@example.org"
    assert request.imap.username == request.smtp.username == "alice@example.org"
    assert request.credentials is not None
    assert request.credentials.smtp_password == "pw-123"
    assert "pw-123" not in repr(request)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"email": "alice@@example.org"}, "email"),
        ({"terms_accepted": False}, "terms_accepted"),
        ({"terms_accepted": "yes"}, "terms_accepted"),
        ({"reconnect": "true"}, "reconnect"),
        ({"reconnect": 1}, "reconnect"),
        (
            {"imap": {"host": "imap.example.org", "port": 0, "security": "ssl", "password": "x"}},
            "port",
        ),
        (
            {"imap": {"host": "imap.example.org", "port": 993, "security": "tls", "password": "x"}},
            "security",
        ),
        (
            {
                "imap": {
                    "host": "imap .example.org",
                    "port": 993,
                    "security": "ssl",
                    "password": "x",
                }
            },
            "host",
        ),
        (
            {"imap": {"host": "imap.example.org", "port": 993, "security": "ssl", "password": ""}},
            "password",
        ),
        ({"surprise": 1}, "surprise"),
        ({"auth": "sso"}, "auth"),
        ({"auth": "OAuth"}, "auth"),
        (
            {
                "imap": {
                    "host": "imap.example.org",
                    "port": True,
                    "security": "ssl",
                    "password": "x",
                }
            },
            "port",
        ),
        (
            {
                "imap": {
                    "host": "imap.example.org",
                    "port": 993.0,
                    "security": "ssl",
                    "password": "x",
                }
            },
            "port",
        ),
        (
            {
                "imap": {
                    "host": "imap.example.org",
                    "port": "993",
                    "security": "ssl",
                    "password": "x",
                }
            },
            "port",
        ),
        ({"terms_accepted": 1}, "terms_accepted"),
    ],
)
def test_bad_input_names_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        LinkRequestIn.model_validate(_body(**changes))
    locations = [".".join(str(p) for p in error["loc"]) for error in refused.value.errors()]
    assert any(field in loc for loc in locations), locations


def test_auth_is_optional_and_takes_password_or_oauth() -> None:
    assert LinkRequestIn.model_validate(_body()).auth is None
    assert LinkRequestIn.model_validate(_body(auth="oauth")).auth is AuthMethod.OAUTH
    assert LinkRequestIn.model_validate(_body(auth="password")).auth is AuthMethod.PASSWORD


@pytest.mark.parametrize(
    ("auth", "credentials"),
    [
        (AuthMethod.PASSWORD, None),
        (AuthMethod.OAUTH, MailboxCredentials("pw", "pw")),
    ],
    ids=["password-link-without-passwords", "oauth-link-with-passwords"],
)
def test_a_link_request_carries_passwords_exactly_when_it_links_with_them(
    auth: AuthMethod, credentials: MailboxCredentials | None
) -> None:
    server = ServerSettings(host="imap.gmail.com", port=993, security="ssl", username="a@gmail.com")
    owner = MailboxOwner(account_id="acme", user_id="u1")
    with pytest.raises(ValueError, match="credentials"):
        LinkRequest(owner, "a@gmail.com", ProviderType.GOOGLE, server, server, credentials, auth)


# --- over HTTP: refusals store and emit nothing ---------------------------------------------

TOKEN = "caller-token-caller-token-0123"
KEYS = CallerKeys(caller_keys({"caller": SecretStr(TOKEN)}, {}, {}))
USER = "/v1/accounts/acme/users/u1"
SECRET = "pw-never-echoed"


@dataclass
class RecordingRegistry:
    """Unlinks what it was told it holds: normalized addresses and mailbox ids."""

    held: set[str] = field(default_factory=set)
    asked: list[str] = field(default_factory=list)

    async def list_mailboxes(self, owner: MailboxOwner) -> list[dict[str, Any]]:
        return []

    async def unlink_mailbox(self, owner: MailboxOwner, mailbox: str) -> Unlink:
        self.asked.append(mailbox)
        if mailbox in self.held:
            self.held.remove(mailbox)
            return Unlink.UNLINKED
        return Unlink.NOT_FOUND


@dataclass
class Api:
    client: httpx.AsyncClient
    store: InMemoryLinkStore
    publisher: RecordingPublisher
    registry: RecordingRegistry

    def untouched(self) -> bool:
        store = self.store
        return not (store.links or store.in_flight or store.keys or self.publisher.events)


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    store, publisher, registry = InMemoryLinkStore(), RecordingPublisher(), RecordingRegistry()
    box = SecretBox({"k1": SecretStr(generate_key())}, "k1")
    deps = LinkApiDeps(store, publisher, box, timedelta(minutes=15))
    app = build_http_app(
        title="link-api under test",
        router=scoped(
            KEYS.require(Scope.LINKS),
            build_router(deps, registry, Detector(FakeDns(), FakeAutoconfig())),
        ),
        keys=KEYS,
        on_start=[],
        on_stop=[],
    )
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://link-api.test", headers=headers
    ) as client:
        yield Api(client, store, publisher, registry)


def _raw(port: str = "993", password: str = f'"{SECRET}"', email: str = "alice@example.org") -> str:
    """The body as text, so that what json.dumps cannot write can be sent."""
    return (
        f'{{"email": "{email}", "terms_accepted": true, '
        f'"imap": {{"host": "imap.example.org", "port": {port}, "security": "ssl", '
        f'"password": {password}}}, '
        '"smtp": {"host": "smtp.example.org", "port": 587, "security": "starttls"}}'
    )


FIELD_REFUSALS = [
    ("duplicate-key", _raw().replace('"email": ', '"email": "x@y.org", "email": ', 1), "email"),
    ("duplicate-nested-key", _raw(port="993, \"port\": 1"), "imap.port"),
    ("port-true", _raw(port="true"), "imap.port"),
    ("port-false", _raw(port="false"), "imap.port"),
    ("port-float", _raw(port="993.0"), "imap.port"),
    ("port-string", _raw(port='"993"'), "imap.port"),
    ("terms-as-number", _raw().replace(": true", ": 1"), "terms_accepted"),
    ("lone-surrogate-password", _raw(password='"\\ud800"'), "imap.password"),
    ("lone-low-surrogate-password", _raw(password='"a\\udc00b"'), "imap.password"),
    ("lone-surrogate-email", _raw(email="al\\ud800@example.org"), "email"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "field"), [c[1:] for c in FIELD_REFUSALS], ids=[c[0] for c in FIELD_REFUSALS]
)
async def test_strictly_invalid_fields_get_422_naming_the_field_and_change_nothing(
    api: Api, text: str, field: str
) -> None:
    response = await api.client.post(f"{USER}/links", content=text.encode())
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_request"
    assert field in [p["field"] for p in response.json()["fields"]], response.json()
    assert SECRET not in response.text
    assert api.untouched()


MALFORMED = [
    ("bad-utf8", _raw().encode().replace(b"alice", b"al\xffice")),
    ("utf8-encoded-surrogate", _raw().encode().replace(b"alice", b"al\xed\xa0\x80ice")),
    ("latin1", _raw(email="jos\u00e9@example.org").encode("latin-1")),
    ("utf16", _raw().encode("utf-16")),
    ("5000-digit-number", _raw(port="9" * 5000).encode()),
    ("huge-float", _raw(port="1e999").encode()),
    ("nan", _raw(port="NaN").encode()),
    ("infinity", _raw(port="Infinity").encode()),
    ("deep-nesting", b"[" * 5000 + b"]" * 5000),
    ("nesting-past-the-limit", b'{"imap": ' + b"[" * 40 + b"]" * 40 + b"}"),
    ("trailing-data", _raw().encode() + b" x"),
    ("truncated", _raw().encode()[:-5]),
    ("single-quotes", _raw().replace('"', "'").encode()),
    ("not-json", b"not json"),
]


@pytest.mark.parametrize("body", [c[1] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
async def test_a_malformed_body_gets_400_naming_the_body_and_changes_nothing(
    api: Api, body: bytes
) -> None:
    response = await api.client.post(f"{USER}/links", content=body)
    assert response.status_code == 400, response.text
    refusal = response.json()
    assert refusal["error"] == "bad_request"
    assert "malformed" in refusal["message"]
    assert [p["field"] for p in refusal["fields"]] == ["body"]
    assert SECRET not in response.text
    assert api.untouched()


async def test_a_chunked_body_over_the_cap_gets_413_and_changes_nothing(api: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        body = _raw().encode()
        yield body[:-1]
        for _ in range(MAX_BODY_BYTES // 4096 + 2):
            yield b" " * 4096
        yield b"}"

    response = await api.client.post(f"{USER}/links", content=chunks())
    assert response.status_code == 413
    assert response.json()["fields"][0]["field"] == "body"
    assert api.untouched()


async def test_a_valid_chunked_body_is_accepted(api: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield _raw().encode()

    response = await api.client.post(f"{USER}/links", content=chunks())
    assert response.status_code == 202, response.text


# --- unlink: any address the API accepts, or the mailbox_id ---------------------------------

# Each character normalize_address accepts in a local part that means something in a URL, or
# that an HTTP client may encode: every one must survive the path.
SPECIAL = "/%?#+&=!$'*^_`{|}~-"


@pytest.mark.parametrize("char", list(SPECIAL))
async def test_an_address_with_any_accepted_character_can_be_unlinked_percent_encoded(
    api: Api, char: str
) -> None:
    address = normalize_address(f"a{char}b@example.org")
    api.registry.held.add(address)
    response = await api.client.delete(f"{USER}/mailboxes/{quote(address, safe='')}")
    assert response.status_code == 204, response.text
    assert api.registry.asked == [address]


async def test_a_mailbox_can_be_unlinked_by_its_mailbox_id(api: Api) -> None:
    api.registry.held.add("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
    response = await api.client.delete(f"{USER}/mailboxes/0f1e2d3c4b5a69788796a5b4c3d2e1f0")
    assert response.status_code == 204, response.text
    again = await api.client.delete(f"{USER}/mailboxes/0f1e2d3c4b5a69788796a5b4c3d2e1f0")
    assert again.status_code == 404
    assert again.json()["fields"][0]["field"] == "mailbox"


@pytest.mark.parametrize("name", ["a@@example.org", "a b@example.org", "%20", "x" * 200, ""])
async def test_an_unlink_naming_no_valid_mailbox_gets_422_naming_it(api: Api, name: str) -> None:
    response = await api.client.delete(f"{USER}/mailboxes/{quote(name, safe='')}")
    assert response.status_code == 422, response.text
    assert [p["field"] for p in response.json()["fields"]] == ["mailbox"]
    assert api.registry.asked == []


@pytest.mark.parametrize("mailbox", ["a/b@example.org", "a%2fb?c#d@example.org", "0f1e2d3c"])
async def test_the_registry_client_percent_encodes_the_whole_segment(mailbox: str) -> None:
    paths: list[bytes] = []

    def registry(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.raw_path)
        return httpx.Response(204)

    transport = httpx.MockTransport(registry)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
        unlinked = await HttpRegistry(client).unlink_mailbox(
            MailboxOwner(account_id="acme", user_id="u1"), mailbox
        )
    assert unlinked is Unlink.UNLINKED
    [path] = paths
    assert path == f"{USER}/mailboxes/{quote(mailbox, safe='')}".encode()


@pytest.mark.parametrize(
    ("status", "unlinked"),
    [(204, Unlink.UNLINKED), (404, Unlink.NOT_FOUND), (409, Unlink.IN_PROGRESS)],
)
async def test_the_registry_client_tells_a_mailbox_being_linked_from_one_not_found(
    status: int, unlinked: Unlink
) -> None:
    transport = httpx.MockTransport(
        lambda _: httpx.Response(status, content=json.dumps({}).encode())
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
        owner = MailboxOwner(account_id="acme", user_id="u1")
        assert await HttpRegistry(client).unlink_mailbox(owner, "a@example.org") is unlinked

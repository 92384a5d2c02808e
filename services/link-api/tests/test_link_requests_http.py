"""POST .../links end to end inside link-api, with fakes for storage, Kafka and DNS: which
requests become OAuth or password links, what they emit, what the link JSON shows, and that
every refusal names the field and the fix and leaves nothing behind."""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from link_api import handlers
from link_api.adapters.detector import Detector
from link_api.adapters.dns_lookup import SrvTarget
from link_api.adapters.registry_client import Unlink
from link_api.entrypoints.http import build_router
from link_api.handlers import LinkApiDeps
from link_api_fakes import FakeAutoconfig, FakeDns, InMemoryLinkStore
from mailbox_link_contract.events import (
    AuthMethod,
    Authority,
    AuthorizationRequired,
    AuthorizationRequiredData,
    LinkRequested,
    MailboxLinked,
    MailboxLinkedData,
    MailboxOwner,
    ProviderType,
    ServerSettings,
    utc_now,
)
from mailbox_link_shared.crypto import SecretBox, generate_key
from mailbox_link_shared.http import CallerKeys, build_http_app, scoped
from mailbox_link_shared.publishing import RecordingPublisher
from mailbox_link_shared.scopes import Scope, caller_keys

TOKEN = "caller-token-caller-token-0123"
KEYS = CallerKeys(caller_keys({"caller": SecretStr(TOKEN)}, {}, {}))
OWNER = MailboxOwner(account_id="acme", user_id="u1")
LINKS = "/v1/accounts/acme/users/u1/links"
WORKSPACE_DOMAIN = "acme-corp.example"  # Google Workspace, known only by its MX
HOSTED_DOMAIN = "smallbiz.example"  # Rackspace-hosted IMAP, known by its MX
OWN_DOMAIN = "example.org"  # its own mail server, published in SRV records
SECRET = "hunter2-never-echoed"
SIGN_IN_URL = "https://accounts.google.com/o/oauth2/v2/auth?client_id=c&state=s1"


class NoRegistry:
    """The registry is not asked anything by link requests."""

    async def list_mailboxes(self, owner: MailboxOwner) -> list[dict[str, Any]]:
        raise AssertionError("not expected")

    async def unlink_mailbox(self, owner: MailboxOwner, mailbox: str) -> Unlink:
        raise AssertionError("not expected")


@dataclass
class Api:
    client: httpx.AsyncClient
    deps: LinkApiDeps
    store: InMemoryLinkStore
    publisher: RecordingPublisher

    def requested(self) -> list[LinkRequested]:
        return [e for e in self.publisher.events if isinstance(e, LinkRequested)]


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    store, publisher = InMemoryLinkStore(), RecordingPublisher()
    box = SecretBox({"k1": SecretStr(generate_key())}, "k1")
    deps = LinkApiDeps(store, publisher, box, timedelta(minutes=15))
    dns = FakeDns(
        mx_records={
            WORKSPACE_DOMAIN: ["aspmx.l.google.com", "alt1.aspmx.l.google.com"],
            HOSTED_DOMAIN: ["mx1.emailsrvr.com"],
            OWN_DOMAIN: ["mx.example.org"],
        },
        srv_records={
            f"_imaps._tcp.{OWN_DOMAIN}": [SrvTarget("mail.example.org", 993, 0, 0)],
            f"_submissions._tcp.{OWN_DOMAIN}": [SrvTarget("mail.example.org", 465, 0, 0)],
        },
    )
    app = build_http_app(
        title="link-api under test",
        router=scoped(
            KEYS.require(Scope.LINKS),
            build_router(deps, NoRegistry(), Detector(dns, FakeAutoconfig())),
        ),
        keys=KEYS,
        on_start=[],
        on_stop=[],
    )
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://link-api.test", headers=headers
    ) as client:
        yield Api(client, deps, store, publisher)


def _server(host: str, port: int, security: str, address: str) -> ServerSettings:
    return ServerSettings(host=host, port=port, security=security, username=address)


@pytest.mark.parametrize(
    ("address", "provider", "imap", "smtp"),
    [
        (
            "alice@gmail.com",
            "google",
            ("imap.gmail.com", 993, "ssl"),
            ("smtp.gmail.com", 465, "ssl"),
        ),
        (
            "carol@outlook.com",
            "microsoft",
            ("outlook.office365.com", 993, "ssl"),
            ("smtp.office365.com", 587, "starttls"),
        ),
        (
            f"dave@{WORKSPACE_DOMAIN}",
            "google",
            ("imap.gmail.com", 993, "ssl"),
            ("smtp.gmail.com", 465, "ssl"),
        ),
        (
            "erin@yahoo.com",
            "yahoo",
            ("imap.mail.yahoo.com", 993, "ssl"),
            ("smtp.mail.yahoo.com", 465, "ssl"),
        ),
        ("frank@aol.com", "aol", ("imap.aol.com", 993, "ssl"), ("smtp.aol.com", 465, "ssl")),
    ],
    ids=["gmail", "outlook", "workspace-by-mx", "yahoo", "aol"],
)
async def test_an_address_alone_at_a_sign_in_provider_becomes_an_oauth_link(
    api: Api,
    address: str,
    provider: str,
    imap: tuple[str, int, str],
    smtp: tuple[str, int, str],
) -> None:
    answer = await api.client.post(LINKS, json={"email": address, "terms_accepted": True})
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert (body["provider"], body["auth"], body["status"]) == (provider, "oauth", "pending")
    assert body["authorization"] is None  # until the broker sends the sign-in URL
    [event] = api.requested()
    data = event.data
    assert (data.provider, data.auth) == (ProviderType(provider), AuthMethod.OAUTH)
    assert data.credentials is None
    assert data.imap == _server(*imap, address)
    assert data.smtp == _server(*smtp, address)


async def test_auth_oauth_may_be_asked_for_explicitly(api: Api) -> None:
    body = {"email": "alice@gmail.com", "terms_accepted": True, "auth": "oauth"}
    answer = await api.client.post(LINKS, json=body)
    assert answer.status_code == 202, answer.text
    [event] = api.requested()
    assert (event.data.provider, event.data.auth) == (ProviderType.GOOGLE, AuthMethod.OAUTH)


async def test_an_app_password_still_makes_a_password_link(api: Api) -> None:
    body = {"email": "alice@gmail.com", "terms_accepted": True, "password": "abcd efgh ijkl mnop"}
    answer = await api.client.post(LINKS, json=body)
    assert answer.status_code == 202, answer.text
    assert (answer.json()["provider"], answer.json()["auth"]) == ("imap", "password")
    [event] = api.requested()
    assert (event.data.provider, event.data.auth) == (ProviderType.IMAP, AuthMethod.PASSWORD)
    assert event.data.imap.host == "imap.gmail.com"
    assert event.data.credentials is not None
    opened = api.deps.secret_box.open(event.data.credentials, "alice@gmail.com")
    assert "abcdefghijklmnop" in opened


REFUSED = [
    # Microsoft takes no passwords over IMAP/SMTP: sign in instead.
    ({"email": "carol@outlook.com", "password": SECRET}, "oauth_required", "password"),
    ({"email": "carol@outlook.com", "auth": "password"}, "oauth_required", "auth"),
    (
        {"email": "x@icloud.com", "provider": "microsoft", "password": SECRET},
        "oauth_required",
        "password",
    ),
    # A sign-in link takes no password.
    (
        {"email": "alice@gmail.com", "auth": "oauth", "password": SECRET},
        "invalid_request",
        "password",
    ),
    # No sign-in at iCloud or at a custom IMAP host.
    ({"email": "x@icloud.com", "auth": "oauth"}, "oauth_not_supported", "auth"),
    ({"email": f"x@{HOSTED_DOMAIN}", "auth": "oauth"}, "oauth_not_supported", "auth"),
    # Password providers need the password.
    ({"email": f"x@{HOSTED_DOMAIN}"}, "invalid_request", "password"),
    ({"email": "x@icloud.com"}, "invalid_request", "password"),
    ({"email": "alice@gmail.com", "auth": "password"}, "invalid_request", "password"),
    # Typed servers link with their password.
    (
        {
            "email": "x@example.org",
            "auth": "oauth",
            "imap": {
                "host": "imap.example.org",
                "port": 993,
                "security": "ssl",
                "password": SECRET,
            },
            "smtp": {"host": "smtp.example.org", "port": 465, "security": "ssl"},
        },
        "invalid_request",
        "auth",
    ),
    ({"email": "alice@gmail.com", "auth": "sso"}, "invalid_request", "auth"),
]


@pytest.mark.parametrize(("body", "code", "field"), REFUSED)
async def test_a_refused_request_names_the_field_and_leaves_nothing_behind(
    api: Api, body: dict[str, Any], code: str, field: str
) -> None:
    answer = await api.client.post(LINKS, json={**body, "terms_accepted": True})
    assert answer.status_code == 422, answer.text
    refusal = answer.json()
    assert refusal["error"] == code
    [problem] = refusal["fields"]
    assert problem["field"] == field
    assert problem["message"]
    assert SECRET not in answer.text
    assert api.publisher.events == []
    assert (api.store.links, api.store.in_flight, api.store.keys) == ({}, {}, {})


async def test_the_link_shows_the_sign_in_url_only_while_it_is_needed(api: Api) -> None:
    answer = await api.client.post(LINKS, json={"email": "alice@gmail.com", "terms_accepted": True})
    link_id, status_url = answer.json()["link_id"], answer.json()["status_url"]
    expires_at = utc_now() + timedelta(minutes=10)
    await handlers.when_authorization_required_show_url(
        _authorization_required(link_id, expires_at), api.deps
    )
    waiting = (await api.client.get(status_url)).json()
    assert (waiting["status"], waiting["auth"]) == ("authorization_required", "oauth")
    assert waiting["authorization"] == {"url": SIGN_IN_URL, "expires_at": expires_at.isoformat()}

    await handlers.when_registry_answer_update_status(_linked(link_id), api.deps)
    linked = (await api.client.get(status_url)).json()
    assert (linked["status"], linked["authorization"]) == ("linked", None)
    assert SIGN_IN_URL not in str(linked)


def _authorization_required(link_id: str, expires_at: datetime) -> AuthorizationRequired:
    data = AuthorizationRequiredData(
        link_id=link_id,
        owner=OWNER,
        address="alice@gmail.com",
        provider=ProviderType.GOOGLE,
        authorize_url=SIGN_IN_URL,
        expires_at=expires_at,
    )
    return AuthorizationRequired(correlation_id=link_id, producer="oauth-broker", data=data)


def _linked(link_id: str) -> MailboxLinked:
    data = MailboxLinkedData(
        link_id=link_id,
        mailbox_id="mb1",
        owner=OWNER,
        address="alice@gmail.com",
        provider=ProviderType.GOOGLE,
    )
    return MailboxLinked(correlation_id=link_id, producer="registry", data=data)


# Which servers speak for an address: typed servers at a known provider must be its own, and
# every LinkRequested says why its servers speak for the address.


def _typed(
    address: str,
    imap_host: str,
    smtp_host: str,
    *,
    imap_port: int = 993,
    username: str | None = None,
) -> dict[str, Any]:
    imap: dict[str, Any] = {
        "host": imap_host,
        "port": imap_port,
        "security": "ssl",
        "password": SECRET,
    }
    if username is not None:
        imap["username"] = username
    return {
        "email": address,
        "terms_accepted": True,
        "imap": imap,
        "smtp": {"host": smtp_host, "port": 465, "security": "ssl"},
    }


GMAIL, GOOGLEMAIL, WORKSPACE = "x@gmail.com", "x@googlemail.com", f"dave@{WORKSPACE_DOMAIN}"
FOREIGN_SERVERS = [
    (_typed(GMAIL, "localhost", "localhost"), "imap.host", "Google"),
    (_typed(GOOGLEMAIL, "imap.evil.example", "smtp.gmail.com"), "imap.host", "Google"),
    (_typed("X@GMail.com", "IMAP.GMAIL.COM.", "smtp.evil.example"), "smtp.host", "Google"),
    (_typed("carol@outlook.com", "imap.evil.example", "localhost"), "imap.host", "Microsoft"),
    (_typed("x@icloud.com", "imap.gmail.com", "smtp.gmail.com"), "imap.host", "iCloud"),
    (_typed(WORKSPACE, "mail.acme-corp.example", "smtp.gmail.com"), "imap.host", "Google"),
]


@pytest.mark.parametrize(("body", "field", "name"), FOREIGN_SERVERS)
async def test_typed_servers_that_are_not_the_known_providers_own_are_refused(
    api: Api, body: dict[str, Any], field: str, name: str
) -> None:
    answer = await api.client.post(LINKS, json=body)
    assert answer.status_code == 422, answer.text
    refusal = answer.json()
    assert refusal["error"] == "provider_servers_required"
    assert f"is hosted by {name}" in refusal["message"]
    [problem] = refusal["fields"]
    assert problem["field"] == field
    # The fix names the way that works: the provider's sign-in, or its own servers.
    assert f"sign in with {name}" in problem["message"] or "use imap." in problem["message"]
    assert SECRET not in answer.text
    assert api.publisher.events == []
    assert (api.store.links, api.store.in_flight, api.store.keys) == ({}, {}, {})


async def test_typed_servers_of_the_known_provider_link_with_the_providers_authority(
    api: Api,
) -> None:
    answer = await api.client.post(
        LINKS, json=_typed("someone@gmail.com", "Imap.Gmail.com", "smtp.gmail.com")
    )
    assert answer.status_code == 202, answer.text
    [event] = api.requested()
    assert (event.data.provider, event.data.auth) == (ProviderType.IMAP, AuthMethod.PASSWORD)
    assert event.data.authority is Authority.PROVIDER


async def test_typed_microsoft_servers_with_a_password_say_to_sign_in(api: Api) -> None:
    body = _typed("carol@outlook.com", "outlook.office365.com", "smtp-mail.outlook.com")
    answer = await api.client.post(LINKS, json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "oauth_required"
    assert answer.json()["fields"][0]["field"] == "imap.password"
    assert api.publisher.events == []
    assert api.store.links == {}


async def test_an_explicit_provider_cannot_send_a_known_providers_address_elsewhere(
    api: Api,
) -> None:
    body = {"email": "x@icloud.com", "provider": "google", "password": SECRET}
    answer = await api.client.post(LINKS, json={**body, "terms_accepted": True})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "provider_servers_required"
    assert answer.json()["fields"][0]["field"] == "provider"
    assert api.publisher.events == []
    assert api.store.links == {}


AUTHORITIES = [
    # Sign-in, the provider's own servers by detection, by MX, or typed.
    ({"email": "alice@gmail.com"}, Authority.PROVIDER),
    ({"email": "alice@gmail.com", "password": "abcd efgh ijkl mnop"}, Authority.PROVIDER),
    ({"email": f"dave@{WORKSPACE_DOMAIN}"}, Authority.PROVIDER),
    ({"email": "x@icloud.com", "password": SECRET}, Authority.PROVIDER),
    # The domain's SRV records: detected, or typed as published.
    ({"email": f"erin@{OWN_DOMAIN}", "password": SECRET}, Authority.PUBLISHED_SETTINGS),
    (_typed(f"erin@{OWN_DOMAIN}", "mail.example.org", "mail.example.org"),
     Authority.PUBLISHED_SETTINGS),
    # Another host or port of the address's domain, or of its MX hosts' domain.
    (_typed(f"erin@{OWN_DOMAIN}", "imap.example.org", "smtp.example.org"), Authority.SAME_DOMAIN),
    (_typed(f"erin@{OWN_DOMAIN}", "mail.example.org", "x", imap_port=143), Authority.SAME_DOMAIN),
    ({"email": f"bob@{HOSTED_DOMAIN}", "password": SECRET}, Authority.SAME_DOMAIN),
    # Anything else links only once a message sent to the address arrives.
    (_typed(f"erin@{OWN_DOMAIN}", "localhost", "localhost"), Authority.OWNERSHIP_PROOF),
    (_typed(f"erin@{OWN_DOMAIN}", "imap.elsewhere.net", "smtp.elsewhere.net"),
     Authority.OWNERSHIP_PROOF),
    (_typed(f"erin@{OWN_DOMAIN}", "mail.example.org", "mail.example.org", username="erin"),
     Authority.OWNERSHIP_PROOF),
    (_typed("nobody@no-dns.example", "imap.no-dns.example", "smtp.no-dns.example"),
     Authority.OWNERSHIP_PROOF),
]  # fmt: skip


@pytest.mark.parametrize(("body", "authority"), AUTHORITIES)
async def test_every_link_request_says_why_its_servers_speak_for_the_address(
    api: Api, body: dict[str, Any], authority: Authority
) -> None:
    answer = await api.client.post(LINKS, json={**body, "terms_accepted": True})
    assert answer.status_code == 202, answer.text
    [event] = api.requested()
    assert event.data.authority is authority

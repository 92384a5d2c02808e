"""The mailbox access route on in-memory storage, a fake broker and in-memory rate-limit slots:
a key granted mailbox_access gets a password mailbox's servers and passwords, or an OAuth
mailbox's fresh token; another account's mailbox and an unknown id are the same 404; a
mailbox to reconnect gets 409 and no credential; other keys 403; every answer no-store; each
key its own budget; every ask audited without the secret."""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from mailbox_link_contract.events import (
    AuthMethod,
    Failure,
    LinkRequested,
    LinkRequestedData,
    MailboxHealth,
    MailboxLinked,
    MailboxOwner,
    MailboxReconnectRequired,
    MailboxReconnectRequiredData,
    MailboxVerified,
    MailboxVerifiedData,
    ProviderType,
    ServerSettings,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_contract.values import EncryptedSecret
from mailbox_link_shared.credentials import MailboxCredentials
from mailbox_link_shared.crypto import SecretBox, generate_key
from mailbox_link_shared.http import CallerKeys, build_http_app
from mailbox_link_shared.publishing import RecordingPublisher
from mailbox_link_shared.rate_limits import Limit, MemorySlots, RateLimiter
from mailbox_link_shared.scopes import Scope, caller_keys
from registry import handlers
from registry.adapters.registry_store import Verification
from registry.decisions import change_mailbox
from registry.domain.links import with_health
from registry.domain.plans import DEFAULT_PLANS, PlanTable
from registry.entrypoints.access_http import build_access_router
from registry.handlers import RegistryDeps
from registry.mailbox_access import (
    AccessDeps,
    AccessEntry,
    AccessOutcome,
    BrokerToken,
    BrokerUnavailable,
    GrantNotFound,
    GrantRefused,
    forget_old_entries,
)
from registry_fakes import FakeClock, InMemoryRegistryStore

BOX = SecretBox({"k": SecretStr(generate_key())}, "k")
ALICE = MailboxOwner(account_id="acme", user_id="alice")
BOB = MailboxOwner(account_id="globex", user_id="bob")
PASSWORDS = MailboxCredentials("imap-secret-1", "smtp-secret-2")
TOKENS = {n: f"{n}-token-".ljust(32, "x") for n in ("mailer", "bound", "link-api", "tiny")}
KEYS = CallerKeys(
    caller_keys(
        {n: SecretStr(t) for n, t in TOKENS.items()},
        {
            "mailer": [Scope.MAILBOX_ACCESS],
            "bound": [Scope.MAILBOX_ACCESS],
            "link-api": [Scope.REGISTRY],
            "tiny": [Scope.MAILBOX_ACCESS],
        },
        {"bound": ["globex"]},
    )
)
LIMIT = 5


@dataclass
class FakeBroker:
    """The broker's token route: grants by link id, sealed like the broker seals them."""

    clock: FakeClock
    grants: dict[str, tuple[str, str]] = field(default_factory=dict)  # link -> (address, token)
    refused: bool = False
    away: bool = False
    asked: list[tuple[str, int]] = field(default_factory=list)

    async def access_token(self, link_id: str, min_valid_seconds: int) -> BrokerToken:
        self.asked.append((link_id, min_valid_seconds))
        if self.away:
            raise BrokerUnavailable("ConnectError", 7)
        if self.refused:
            raise GrantRefused(link_id)
        if link_id not in self.grants:
            raise GrantNotFound(link_id)
        address, token = self.grants[link_id]
        expires_at = self.clock() + timedelta(seconds=max(min_valid_seconds, 3000))
        return BrokerToken(BOX.seal(token, address), address, expires_at, "XOAUTH2")


@dataclass
class ListAudit:
    entries: list[AccessEntry] = field(default_factory=list)

    async def record(self, entry: AccessEntry) -> None:
        self.entries.append(entry)

    async def forget_before(self, cutoff: datetime) -> int:
        kept = [e for e in self.entries if e.at >= cutoff]
        forgotten = len(self.entries) - len(kept)
        self.entries = kept
        return forgotten


@dataclass
class Registry:
    deps: RegistryDeps
    access: AccessDeps
    broker: FakeBroker
    audit: ListAudit
    clock: FakeClock
    client: httpx.AsyncClient

    async def link(
        self, owner: MailboxOwner, link_id: str, address: str, oauth: bool = False
    ) -> str:
        """Links the mailbox through the events, as the verifiers would; its mailbox_id."""
        server = {"port": 993, "security": "ssl", "username": address}
        imap = ServerSettings(host="imap.example.org", **server)
        smtp = ServerSettings(host="smtp.example.org", **{**server, "port": 465})
        credentials = BOX.seal('{"access_token": "x"}' if oauth else PASSWORDS.to_json(), address)
        data = LinkRequestedData(
            link_id=link_id,
            owner=owner,
            address=address,
            provider=ProviderType.GOOGLE if oauth else ProviderType.IMAP,
            auth=AuthMethod.OAUTH if oauth else AuthMethod.PASSWORD,
            imap=imap,
            smtp=smtp,
            credentials=None if oauth else credentials,
        )
        requested = LinkRequested(correlation_id=link_id, producer="link-api", data=data)
        await handlers.when_link_requested_reserve(requested, self.deps)
        verified = MailboxVerifiedData(**{**data.model_dump(), "credentials": credentials})
        await handlers.when_mailbox_verified_link(
            MailboxVerified(correlation_id=link_id, producer="verifier", data=verified), self.deps
        )
        assert isinstance(self.deps.publisher, RecordingPublisher)
        [linked] = [
            e
            for e in self.deps.publisher.events
            if isinstance(e, MailboxLinked) and e.data.link_id == link_id
        ]
        if oauth:
            self.broker.grants[link_id] = (address, f"token-of-{link_id}")
        return linked.data.mailbox_id

    async def ask(
        self, key: str, account: str, mailbox_id: str, body: Any = None
    ) -> httpx.Response:
        return await self.client.post(
            f"/v1/accounts/{account}/mailboxes/{mailbox_id}/access",
            json=body,
            headers={"Authorization": f"Bearer {TOKENS[key]}"},
        )


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    clock = FakeClock()
    deps = RegistryDeps(
        InMemoryRegistryStore(clock),
        RecordingPublisher(),
        PlanTable(DEFAULT_PLANS, "basic"),
        timedelta(minutes=15),
        clock,
    )
    broker, audit = FakeBroker(clock), ListAudit()
    access = AccessDeps(
        registry=deps,
        secret_box=BOX,
        broker=broker,
        audit=audit,
        limiter=RateLimiter(MemorySlots()),
        per_key=Limit("mailbox_access", LIMIT, timedelta(minutes=1)),
        default_min_valid_seconds=300,
        clock=clock,
    )
    app = build_http_app(
        title="registry under test",
        router=build_access_router(access, KEYS),
        keys=KEYS,
        on_start=[],
        on_stop=[],
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as client:
        yield Registry(deps, access, broker, audit, clock, client)


def assert_no_store(answer: httpx.Response) -> None:
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["pragma"] == "no-cache"


async def test_a_password_mailbox_answers_its_servers_and_passwords(registry: Registry) -> None:
    mailbox_id = await registry.link(ALICE, "l1", "box@example.org")
    answer = await registry.ask("mailer", "acme", mailbox_id)
    assert answer.status_code == 200, answer.text
    assert_no_store(answer)
    assert answer.json() == {
        "mailbox_id": mailbox_id,
        "email": "box@example.org",
        "auth": "password",
        "status": "active",
        "imap": {
            "host": "imap.example.org",
            "port": 993,
            "security": "ssl",
            "username": "box@example.org",
            "password": "imap-secret-1",
        },
        "smtp": {
            "host": "smtp.example.org",
            "port": 465,
            "security": "ssl",
            "username": "box@example.org",
            "password": "smtp-secret-2",
        },
        "sasl_mechanisms": ["PLAIN", "LOGIN"],
    }


async def test_an_oauth_mailbox_answers_a_token_from_the_broker_valid_for_the_margin(
    registry: Registry,
) -> None:
    mailbox_id = await registry.link(ALICE, "l1", "box@gmail.com", oauth=True)
    answer = await registry.ask("mailer", "acme", mailbox_id, {"min_valid_seconds": 3300})
    assert answer.status_code == 200, answer.text
    assert_no_store(answer)
    body = answer.json()
    assert body["auth"] == "oauth"
    assert body["access_token"] == "token-of-l1"
    assert body["sasl_mechanism"] == "XOAUTH2"
    expires_at = datetime.fromisoformat(body["expires_at"])
    assert expires_at >= registry.clock() + timedelta(seconds=3300)
    assert "password" not in body["imap"]
    assert registry.broker.asked == [("l1", 3300)]
    await registry.ask("mailer", "acme", mailbox_id)  # no body: the configured default
    assert registry.broker.asked[-1] == ("l1", 300)


async def test_another_accounts_mailbox_and_an_unknown_id_are_the_same_404(
    registry: Registry,
) -> None:
    mailbox_id = await registry.link(ALICE, "l1", "box@example.org")
    other_account = await registry.ask("mailer", "globex", mailbox_id)
    unknown = await registry.ask("mailer", "acme", "m-never-was")
    assert other_account.status_code == unknown.status_code == 404
    assert other_account.json() == unknown.json()
    assert unknown.json()["error"] == "mailbox_not_found"
    assert_no_store(unknown)
    # A key bound to another account: 404 from the guard, before anything is read.
    bound = await registry.ask("bound", "acme", mailbox_id)
    assert bound.status_code == 404
    assert bound.json()["error"] == "account_not_found"
    assert_no_store(bound)
    assert "secret" not in other_account.text + unknown.text + bound.text


async def test_a_mailbox_to_reconnect_gets_409_and_no_credential(registry: Registry) -> None:
    mailbox_id = await registry.link(ALICE, "l1", "box@gmail.com", oauth=True)
    registry.broker.refused = True  # the broker's refresh was refused for good
    refused = await registry.ask("mailer", "acme", mailbox_id)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"] == "reconnect_required"
    assert "token-of" not in refused.text
    assert_no_store(refused)
    password_box = await registry.link(ALICE, "l2", "box@example.org")
    await _flag_reconnect(registry, "l2", password_box)
    flagged = await registry.ask("mailer", "acme", password_box)
    assert flagged.status_code == 409
    assert "secret" not in flagged.text


async def test_a_degraded_mailbox_is_answered_and_says_so(registry: Registry) -> None:
    mailbox_id = await registry.link(ALICE, "l1", "box@example.org")
    found = await handlers.find_mailbox("acme", mailbox_id, registry.deps)
    assert found is not None
    # Its servers were unreachable at the last check: not its credentials' fault (ADR 0023).
    await change_mailbox(
        found,
        lambda _, mailbox: (
            with_health(mailbox, MailboxHealth.DEGRADED, FailureCode.IMAP_UNREACHABLE),
            None,
        ),
        registry.deps,
    )
    answer = await registry.ask("mailer", "acme", mailbox_id)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "degraded"
    assert answer.json()["imap"]["password"] == "imap-secret-1"


async def _flag_reconnect(registry: Registry, link_id: str, mailbox_id: str) -> None:
    data = MailboxReconnectRequiredData(
        mailbox_id=mailbox_id,
        link_id=link_id,
        owner=ALICE,
        address="box@example.org",
        provider=ProviderType.IMAP,
        failure=Failure.of(FailureCode.RECONNECT_REQUIRED, "password changed"),
    )
    event = MailboxReconnectRequired(correlation_id=link_id, producer="test", data=data)
    await handlers.when_reconnect_required_flag_mailbox(event, registry.deps)


async def test_a_key_without_the_scope_gets_403_no_store(registry: Registry) -> None:
    mailbox_id = await registry.link(ALICE, "l1", "box@example.org")
    answer = await registry.ask("link-api", "acme", mailbox_id)
    assert answer.status_code == 403
    assert answer.json()["fields"][0]["field"] == "Authorization"
    assert_no_store(answer)
    missing = await registry.client.post(f"/v1/accounts/acme/mailboxes/{mailbox_id}/access")
    assert missing.status_code == 401
    assert_no_store(missing)


async def test_each_key_has_its_own_budget_and_is_told_when_to_retry(registry: Registry) -> None:
    mailbox_id = await registry.link(ALICE, "l1", "box@example.org")
    for _ in range(LIMIT):
        assert (await registry.ask("mailer", "acme", mailbox_id)).status_code == 200
    over = await registry.ask("mailer", "acme", mailbox_id)
    assert over.status_code == 429
    assert over.json()["error"] == "too_many_requests"
    assert 1 <= int(over.headers["retry-after"]) <= 60
    assert_no_store(over)
    assert "secret" not in over.text
    # Another key is not held back by this one.
    assert (await registry.ask("tiny", "acme", mailbox_id)).status_code == 200
    registry.clock.advance(timedelta(minutes=1))
    assert (await registry.ask("mailer", "acme", mailbox_id)).status_code == 200


async def test_every_ask_is_audited_without_the_secret(registry: Registry) -> None:
    mailbox_id = await registry.link(ALICE, "l1", "box@example.org")
    oauth_id = await registry.link(ALICE, "l2", "box@gmail.com", oauth=True)
    await registry.ask("mailer", "acme", mailbox_id)
    await registry.ask("mailer", "acme", oauth_id)
    await registry.ask("mailer", "acme", "m-unknown")
    registry.broker.away = True
    away = await registry.ask("tiny", "acme", oauth_id)
    assert away.status_code == 503
    assert away.headers["retry-after"] == "7"
    assert_no_store(away)
    seen = [(e.key, e.mailbox_id, e.auth, e.outcome) for e in registry.audit.entries]
    assert seen == [
        ("mailer", mailbox_id, "password", AccessOutcome.GRANTED),
        ("mailer", oauth_id, "oauth", AccessOutcome.GRANTED),
        ("mailer", "m-unknown", "unknown", AccessOutcome.NOT_FOUND),
        ("tiny", oauth_id, "oauth", AccessOutcome.UNAVAILABLE),
    ]
    assert all(e.account_id == "acme" and e.at == registry.clock() for e in registry.audit.entries)
    text = repr(registry.audit.entries)
    for secret in ("imap-secret-1", "smtp-secret-2", "token-of-l2"):
        assert secret not in text
    registry.clock.advance(timedelta(days=91))
    assert await forget_old_entries(registry.access) == 4
    assert registry.audit.entries == []


async def test_a_reconnected_mailbox_answers_its_reconnects_passwords(registry: Registry) -> None:
    mailbox_id = await registry.link(ALICE, "l1", "box@example.org")
    store = registry.deps.store
    assert isinstance(store, InMemoryRegistryStore)
    # The mailbox took a reconnect's verification (ADR 0019): sealed to that request's spelling.
    new = MailboxCredentials("new-imap", "new-smtp")
    [(key, decision)] = [(k, d) for k, d in store.decisions.items() if k[0] == "l1"][-1:]
    assert decision.mailbox is not None
    old = await store.get_verification("l1")
    assert old is not None
    reconnect_address = "Box@example.org"
    sealed: EncryptedSecret = BOX.seal(new.to_json(), reconnect_address)
    await store.add_verification("r1", Verification(old.imap, old.smtp, old.auth, sealed))
    link = await store.get_link("l1")
    assert link is not None
    store.links["r1"] = replace(link, link_id="r1", address=reconnect_address)
    store.decisions[key] = replace(decision, mailbox=replace(decision.mailbox, verified_by="r1"))
    answer = await registry.ask("mailer", "acme", mailbox_id)
    assert answer.status_code == 200, answer.text
    assert answer.json()["imap"]["password"] == "new-imap"


@pytest.mark.parametrize(
    "body",
    [{"min_valid_seconds": 3301}, {"min_valid_seconds": -1}, {"min_valid_seconds": "60"},
     {"min_valid_seconds": 1.5}, {"other": 1}],
)  # fmt: skip
async def test_a_margin_out_of_range_is_refused_no_store(
    registry: Registry, body: dict[str, Any]
) -> None:
    mailbox_id = await registry.link(ALICE, "l1", "box@gmail.com", oauth=True)
    answer = await registry.ask("mailer", "acme", mailbox_id, body)
    assert answer.status_code == 422, answer.text
    assert_no_store(answer)
    assert registry.broker.asked == []

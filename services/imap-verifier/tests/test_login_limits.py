"""The verifier's rate limits, with the network and the limits' store faked: guesses for one
login stop reaching its server after the free failures, a spent budget fails the link with
too_many_attempts and the time to wait, and nothing connects for it."""

import ssl
from datetime import UTC, datetime, timedelta

from pydantic import SecretStr
from verifier_fakes import NO_RELAY, FakeNetwork, MemoryPendingStore

from imap_verifier.handlers import verify_link
from imap_verifier.login_limits import LoginLimits
from imap_verifier.ports import VerifierDeps
from mailbox_link_contract.events import (
    Authority,
    LinkRequested,
    LinkRequestedData,
    MailboxOwner,
    MailboxVerified,
    ServerSettings,
    VerificationFailed,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.crypto import SecretBox, generate_key
from mailbox_link_shared.publishing import RecordingPublisher
from mailbox_link_shared.rate_limits import BackOff, Limit, MemorySlots, RateLimiter

NOW = datetime(2026, 12, 7, 16, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
BOX = SecretBox({"k1": SecretStr(generate_key())}, "k1")
ADDRESS = "alice@example.org"


def _limited(
    network: FakeNetwork,
    per_login: int = 100,
    per_host: int = 100,
    unmetered: frozenset[str] = frozenset(),
) -> VerifierDeps:
    limits = LoginLimits(
        RateLimiter(MemorySlots()),
        Limit("login_attempts", per_login, HOUR),
        Limit("host_logins", per_host, timedelta(minutes=1)),
        BackOff(free_failures=3, first_wait=timedelta(minutes=15)),
        unmetered,
    )
    return VerifierDeps(
        publisher=RecordingPublisher(),
        secret_box=BOX,
        resolve=network.resolve,
        probe_imap=network.probe_imap,
        probe_smtp=network.probe_smtp,
        tls=ssl.create_default_context(),
        allowlist=(),
        timeout=5.0,
        store=MemoryPendingStore(),
        proof=NO_RELAY,
        clock=lambda: NOW,
        login_limits=limits,
    )


def _with_password(password: str, link_id: str) -> LinkRequested:
    imap = ServerSettings(host="imap.example.org", port=993, security="ssl", username=ADDRESS)
    smtp = ServerSettings(host="smtp.example.org", port=465, security="ssl", username=ADDRESS)
    sealed = BOX.seal(f'{{"imap_password": "{password}", "smtp_password": "{password}"}}', ADDRESS)
    data = LinkRequestedData(
        link_id=link_id,
        owner=MailboxOwner(account_id="acme", user_id="u1"),
        address=ADDRESS,
        provider="imap",
        imap=imap,
        smtp=smtp,
        credentials=sealed,
        authority=Authority.SAME_DOMAIN,
    )
    return LinkRequested(correlation_id=link_id, producer="test", data=data)


def _outcomes(deps: VerifierDeps) -> list[str]:
    assert isinstance(deps.publisher, RecordingPublisher)
    return [
        e.data.failure.code if isinstance(e, VerificationFailed) else "verified"
        for e in deps.publisher.events
        if isinstance(e, VerificationFailed | MailboxVerified)
    ]


async def test_wrong_passwords_stop_reaching_the_server_after_the_free_failures() -> None:
    network = FakeNetwork(imap_failure=FailureCode.IMAP_AUTH_FAILED)
    deps = _limited(network)
    for n in range(8):
        await verify_link(_with_password(f"guess-{n}", f"l{n}"), deps)
    assert _outcomes(deps) == ["imap_auth_failed"] * 3 + ["too_many_attempts"] * 5
    assert [kind for kind, _, _ in network.logins].count("imap") == 3
    assert isinstance(deps.publisher, RecordingPublisher)
    refused = deps.publisher.events[-1]
    assert isinstance(refused, VerificationFailed)
    assert refused.data.failure.detail == "try again after 16:15 UTC (in 15 minutes)"
    assert "guess" not in refused.model_dump_json()


async def test_the_right_password_does_not_link_during_back_off() -> None:
    network = FakeNetwork(imap_failure=FailureCode.IMAP_AUTH_FAILED)
    deps = _limited(network)
    for n in range(3):
        await verify_link(_with_password(f"guess-{n}", f"l{n}"), deps)
    network.imap_failure = None  # the next password would work
    await verify_link(_with_password("right", "l-right"), deps)
    assert _outcomes(deps)[-1] == "too_many_attempts"
    assert ("imap", "alice@example.org", "right") not in network.logins


async def test_a_spent_login_budget_refuses_before_connecting() -> None:
    network = FakeNetwork()  # every login works: the budget alone refuses
    deps = _limited(network, per_login=2)
    for n in range(3):
        await verify_link(_with_password("pw", f"l{n}"), deps)
    assert _outcomes(deps) == ["verified", "verified", "too_many_attempts"]
    assert len(network.logins) == 4  # IMAP and SMTP of the first two


async def test_a_spent_host_budget_refuses_other_logins_at_that_host() -> None:
    network = FakeNetwork()
    deps = _limited(network, per_host=1)
    await verify_link(_with_password("pw", "l1"), deps)
    other = _with_password("pw", "l2")
    imap = other.data.imap.model_copy(update={"username": "bob@example.org"})
    other = other.model_copy(update={"data": other.data.model_copy(update={"imap": imap})})
    await verify_link(other, deps)
    assert _outcomes(deps) == ["verified", "too_many_attempts"]


async def test_a_big_providers_own_servers_have_no_host_budget_but_logins_still_do() -> None:
    network = FakeNetwork()
    hosts = frozenset({"imap.example.org", "smtp.example.org"})
    deps = _limited(network, per_login=2, per_host=1, unmetered=hosts)
    for n, user in enumerate(["a@example.org", "b@example.org", "c@example.org"]):
        other = _with_password("pw", f"l{n}")
        imap = other.data.imap.model_copy(update={"username": user})
        smtp = other.data.smtp.model_copy(update={"username": user})
        update = {"imap": imap, "smtp": smtp}
        await verify_link(
            other.model_copy(update={"data": other.data.model_copy(update=update)}), deps
        )
    for n in range(3, 6):  # one login three times: its own budget of two is spent
        await verify_link(_with_password("pw", f"l{n}"), deps)
    assert _outcomes(deps) == ["verified"] * 5 + ["too_many_attempts"]


async def test_an_unrelated_failure_does_not_count_towards_back_off() -> None:
    network = FakeNetwork(imap_failure=FailureCode.IMAP_UNREACHABLE)
    deps = _limited(network)
    for n in range(5):
        await verify_link(_with_password("pw", f"l{n}"), deps)
    assert _outcomes(deps) == ["imap_unreachable"] * 5


async def test_each_refused_login_of_a_check_counts_towards_its_own_back_off() -> None:
    """IMAP's failure is the one reported first, SMTP's is among the others: it counts too."""
    network = FakeNetwork(
        imap_failure=FailureCode.IMAP_AUTH_FAILED, smtp_failure=FailureCode.SMTP_AUTH_FAILED
    )
    deps = _limited(network)
    for n in range(3):
        await verify_link(_with_password(f"guess-{n}", f"l{n}"), deps)
    assert isinstance(deps.publisher, RecordingPublisher)
    last = deps.publisher.events[-1]
    assert isinstance(last, VerificationFailed)
    assert [o.code for o in last.data.failure.other_failures] == [FailureCode.SMTP_AUTH_FAILED]
    # Another IMAP login, out of any back-off: only SMTP's recorded failures can refuse it.
    other = _with_password("guess-3", "l3")
    imap = other.data.imap.model_copy(update={"username": "bob@example.org"})
    await verify_link(
        other.model_copy(update={"data": other.data.model_copy(update={"imap": imap})}), deps
    )
    assert _outcomes(deps)[-1] == "too_many_attempts"


async def test_imap_and_smtp_refusing_one_login_at_one_host_count_as_one_wrong_password() -> None:
    network = FakeNetwork(
        imap_failure=FailureCode.IMAP_AUTH_FAILED, smtp_failure=FailureCode.SMTP_AUTH_FAILED
    )
    deps = _limited(network)
    for n in range(4):
        guess = _with_password(f"guess-{n}", f"l{n}")
        smtp = guess.data.smtp.model_copy(update={"host": "imap.example.org"})  # one server
        data = guess.data.model_copy(update={"smtp": smtp})
        await verify_link(guess.model_copy(update={"data": data}), deps)
    # Three free failures, as for an IMAP-only refusal: not one and a half.
    assert _outcomes(deps) == ["imap_auth_failed"] * 3 + ["too_many_attempts"]

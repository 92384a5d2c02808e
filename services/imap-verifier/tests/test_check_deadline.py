"""Each check (IMAP or SMTP), the other-port try included, ends within the verifier's one
deadline: the network is a fake whose silent ports keep quiet for as long as they are given."""

import asyncio
import ssl
import time
from collections.abc import Sequence

import pytest
from pydantic import SecretStr
from verifier_fakes import NO_RELAY, MemoryPendingStore

from imap_verifier.handlers import verify_mailbox
from imap_verifier.ports import VerifierDeps
from mailbox_link_contract.events import ServerSettings
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.credentials import MailboxCredentials
from mailbox_link_shared.crypto import SecretBox, generate_key
from mailbox_link_shared.mail_probes import Endpoint, ProbeFailed
from mailbox_link_shared.network_policy import IPNetwork
from mailbox_link_shared.publishing import RecordingPublisher

BUDGET = 3.0
# Scheduling on a busy 2-core machine; the checks themselves are bounded by BUDGET. Below
# BUDGET, so that a check which tried the other port only after the typed one's deadline
# (2 x BUDGET) still fails.
MARGIN = 2.0
CREDENTIALS = MailboxCredentials(imap_password="imap-pw", smtp_password="smtp-pw")


class Ports:
    """IMAP and SMTP servers by port: `silent` ones never answer, `slow` ones answer after
    their delay, `refused` ones fail at once, `wrong_password` ones reject the login, the rest
    log in at once."""

    def __init__(
        self,
        silent: Sequence[int] = (),
        slow: dict[int, float] | None = None,
        refused: Sequence[int] = (),
        wrong_password: Sequence[int] = (),
    ) -> None:
        self.silent, self.slow, self.refused = set(silent), slow or {}, set(refused)
        self.wrong_password = set(wrong_password)
        self.tried: list[int] = []

    async def resolve(
        self, server: ServerSettings, allowlist: Sequence[IPNetwork], timeout: float
    ) -> Endpoint:
        return Endpoint(server.host, "192.0.2.10", server.port, server.security)

    async def probe(
        self, ep: Endpoint, user: str, password: str, tls: ssl.SSLContext, timeout: float
    ) -> None:
        self.tried.append(ep.port)
        if ep.port in self.refused:
            raise ProbeFailed(FailureCode.IMAP_UNREACHABLE, "connection refused")
        if ep.port in self.wrong_password:
            raise ProbeFailed(FailureCode.IMAP_AUTH_FAILED, "login rejected")
        wait = float("inf") if ep.port in self.silent else self.slow.get(ep.port, 0.0)
        if wait > timeout:
            # What the real probes do: one deadline over the whole conversation.
            await asyncio.sleep(timeout)
            raise ProbeFailed(FailureCode.TIMEOUT, f"no answer within {timeout:g} s")
        await asyncio.sleep(wait)


def _deps(ports: Ports) -> VerifierDeps:
    return VerifierDeps(
        publisher=RecordingPublisher(),
        secret_box=SecretBox({"k1": SecretStr(generate_key())}, "k1"),
        resolve=ports.resolve,
        probe_imap=ports.probe,
        probe_smtp=ports.probe,
        tls=ssl.create_default_context(),
        allowlist=(),
        timeout=BUDGET,
        store=MemoryPendingStore(),
        proof=NO_RELAY,
    )


def _servers(imap_port: int, imap_security: str = "ssl") -> tuple[ServerSettings, ServerSettings]:
    imap = ServerSettings(
        host="imap.example.org", port=imap_port, security=imap_security, username="a"
    )
    smtp = ServerSettings(host="smtp.example.org", port=2525, security="ssl", username="a")
    return imap, smtp


async def _timed_check(ports: Ports, imap_port: int) -> tuple[FailureCode | None, float, str]:
    started = time.monotonic()
    try:
        await verify_mailbox(
            *_servers(imap_port), CREDENTIALS, _deps(ports), address="a@example.org"
        )
    except ProbeFailed as failure:
        return failure.code, time.monotonic() - started, failure.detail
    return None, time.monotonic() - started, ""


async def test_a_silent_typed_port_gets_its_other_port_suggestion_within_the_deadline() -> None:
    code, took, detail = await _timed_check(Ports(silent=[993]), 993)
    assert code is FailureCode.OTHER_PORT_WORKS
    assert "use port 143, security starttls" in detail
    assert took < BUDGET + MARGIN


async def test_a_silent_port_without_a_standard_other_times_out_at_the_deadline() -> None:
    code, took, _ = await _timed_check(Ports(silent=[2993]), 2993)
    assert code is FailureCode.TIMEOUT
    assert BUDGET * 0.9 < took < BUDGET + MARGIN


async def test_both_ways_silent_end_by_the_one_deadline_with_the_typed_ways_failure() -> None:
    code, took, _ = await _timed_check(Ports(silent=[993, 143]), 993)
    assert code is FailureCode.TIMEOUT
    assert took < BUDGET + MARGIN


async def test_a_refused_typed_port_tries_the_other_once() -> None:
    ports = Ports(refused=[993])
    code, took, _ = await _timed_check(ports, 993)
    assert code is FailureCode.OTHER_PORT_WORKS
    assert took < BUDGET + MARGIN
    assert ports.tried.count(143) == 1


async def test_a_slow_typed_server_that_answers_in_time_is_used_as_typed() -> None:
    code, took, _ = await _timed_check(Ports(slow={993: BUDGET / 2}), 993)
    assert code is None
    assert took < BUDGET + MARGIN


async def test_a_working_typed_server_is_logged_in_to_once() -> None:
    ports = Ports()
    code, _, _ = await _timed_check(ports, 993)
    assert code is None
    assert sorted(ports.tried) == [993, 2525]


@pytest.mark.parametrize("budget_share", [0.0, 0.5])
async def test_a_wrong_password_is_never_tried_on_another_port(budget_share: float) -> None:
    class WrongPassword(Ports):
        async def probe(
            self, ep: Endpoint, user: str, password: str, tls: ssl.SSLContext, timeout: float
        ) -> None:
            self.tried.append(ep.port)
            await asyncio.sleep(BUDGET * budget_share)
            raise ProbeFailed(FailureCode.IMAP_AUTH_FAILED, "no")

    ports = WrongPassword()
    code, _, _ = await _timed_check(ports, 993)
    assert code is FailureCode.IMAP_AUTH_FAILED
    if budget_share == 0.0:
        assert 143 not in ports.tried


async def test_a_password_the_other_port_rejects_is_reported_as_a_wrong_password() -> None:
    """So it counts towards the login's back-off: a closed typed port must not turn guesses
    on the standard other port into connection failures."""
    ports = Ports(refused=[993], wrong_password=[143])
    code, _, _ = await _timed_check(ports, 993)
    assert code is FailureCode.IMAP_AUTH_FAILED
    assert ports.tried.count(143) == 1

"""Links through the API to servers that misbehave on purpose (localinfra.hostile_mail): each
fails with its code within the verifier's deadline, the verifier's memory stays bounded, the
echoed secret reaches no topic, document or log, and a non-mail port is refused at the POST
before anything connects to it."""

import asyncio
import base64
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localinfra.hostile_mail import ECHO_MARK, SSH_BANNER, HostileMailServers
from localinfra.services import RunningServices
from localinfra.stack import Endpoints

from .conftest import (
    MailUser,
    imap_body,
    links_path,
    request_link,
    unique_user_id,
    wait_for_outcome,
)
from .probes import dump_databases, read_topics

# The verifier's deadline per check (MBL_VERIFIER_TIMEOUT_SECONDS, its default in this stack);
# none of the hostile ports is a standard one, so no other-port retry adds to it.
DEADLINE = 15.0
# What a link may take beyond the deadline on a busy 2-core machine: Kafka hops, polling.
SLACK = 15.0
# Ten flooding links at once may cost the verifier this much at most; before the read bounds,
# one endless-untagged link alone added about 450 MB.
MEMORY_BOUND_KIB = 100 * 1024
# `"` and `\` make the IMAP-quoted form differ from the raw one.
PASSWORD = 'Echo"Secret\\' + secrets.token_hex(6)


@pytest.fixture(scope="module")
def hostile(infra: Endpoints) -> Iterator[HostileMailServers]:
    # The stack's certificate (for infra.tls_hostname), so the verifier trusts the echo servers.
    tls = Path(infra.ca_file).parent
    servers = HostileMailServers(tls / "server.pem", tls / "server.key").start()
    yield servers
    servers.stop()


def _hostile_body(
    infra: Endpoints,
    hostile: HostileMailServers,
    imap: str | None,
    smtp: str | None,
    real_user: MailUser | None = None,
    security: str = "starttls",
) -> dict[str, Any]:
    """A body whose named servers are hostile. With only one of them hostile, the other is the
    stack's Dovecot with `real_user`'s login, which must pass (the verifier prefers IMAP's
    reason, and reports a failure without waiting long for the other check); the password
    sent to the hostile server is always PASSWORD."""
    if imap is not None and smtp is None and real_user is not None:
        # SMTP on the stack's Dovecot must log in: had it failed, the link would report that
        # FAILURE_GRACE later instead of waiting for the hostile IMAP port's own verdict.
        user = MailUser(real_user.address, PASSWORD)
        return imap_body(
            infra, user, imap_port=hostile.ports[imap], imap_security=security,
            smtp_password=real_user.password,
        )  # fmt: skip
    if imap is not None:
        user = MailUser(f"hostile-{secrets.token_hex(4)}@example.org", PASSWORD)
        smtp_port = hostile.ports[smtp] if smtp else None
        return imap_body(
            infra, user, imap_port=hostile.ports[imap], imap_security=security,
            smtp_port=smtp_port, smtp_security=security if smtp else "ssl",
        )  # fmt: skip
    assert smtp is not None
    assert real_user is not None
    return imap_body(
        infra, real_user, smtp_port=hostile.ports[smtp], smtp_security=security,
        smtp_password=PASSWORD,
    )  # fmt: skip


async def _real_users(new_mail_user: Callable[[str], MailUser], count: int) -> list[MailUser]:
    users = [new_mail_user("hostile-smtp") for _ in range(count)]
    await asyncio.sleep(1.1)  # Dovecot re-reads its users file at most once a second
    return users


def _verifier_memory_kib(services: RunningServices, field: str) -> int:
    process = next(p for p in services.processes if p.name == "imap_verifier")
    assert process.pid is not None
    status = Path(f"/proc/{process.pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB$", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1))


async def _link(api: httpx.AsyncClient, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    accepted = await request_link(api, "acme", unique_user_id(), body)
    link = await wait_for_outcome(api, accepted["status_url"], seconds=DEADLINE + SLACK + 30)
    return link, time.monotonic() - started


FLOODS = [
    ("imap_endless_untagged", None, "not_an_imap_server"),
    ("imap_endless_line", None, "not_an_imap_server"),
    ("imap_huge_literal", None, "not_an_imap_server"),
    ("pop3_endless_line", None, "not_an_imap_server"),
    (None, "smtp_endless_continuation", "not_an_smtp_server"),
]


async def test_flooding_servers_fail_at_once_and_the_verifier_memory_stays_bounded(
    api: httpx.AsyncClient,
    infra: Endpoints,
    services: RunningServices,
    hostile: HostileMailServers,
    new_mail_user: Callable[[str], MailUser],
) -> None:
    users = iter(await _real_users(new_mail_user, 2 * len(FLOODS)))
    peak_before = _verifier_memory_kib(services, "VmHWM")
    rss_before = _verifier_memory_kib(services, "VmRSS")
    bodies = [
        (_hostile_body(infra, hostile, imap, smtp, next(users)), code)
        for imap, smtp, code in FLOODS
        for _ in range(2)
    ]
    results = await asyncio.gather(*(_link(api, body) for body, _code in bodies))
    for (link, elapsed), (_body, code) in zip(results, bodies, strict=True):
        assert link["status"] == "failed"
        assert link["failure"]["code"] == code, link
        assert "more than" in link["failure"]["detail"], link
        assert elapsed < DEADLINE + SLACK
    peak_after = _verifier_memory_kib(services, "VmHWM")
    rss_after = _verifier_memory_kib(services, "VmRSS")
    print(  # figures for the report: pytest -s
        f"\n{len(bodies)} flooding links, slowest {max(e for _l, e in results):.2f} s; verifier "
        f"VmRSS {rss_before} -> {rss_after} kB, VmHWM {peak_before} -> {peak_after} kB"
    )
    assert peak_after - peak_before < MEMORY_BOUND_KIB


@pytest.mark.parametrize(
    ("imap", "smtp", "code"),
    [
        ("imap_drip", None, "timeout"),
        ("silent", None, "timeout"),
        (None, "silent", "timeout"),
        ("ssh", None, "not_an_imap_server"),
        (None, "ssh", "not_an_smtp_server"),
    ],
)
async def test_slow_silent_and_non_mail_ports_fail_within_the_deadline_and_quote_nothing(
    api: httpx.AsyncClient,
    infra: Endpoints,
    hostile: HostileMailServers,
    new_mail_user: Callable[[str], MailUser],
    imap: str | None,
    smtp: str | None,
    code: str,
) -> None:
    [user] = await _real_users(new_mail_user, 1)
    link, elapsed = await _link(api, _hostile_body(infra, hostile, imap, smtp, user))
    print(f"\n{imap or smtp}: {link['failure']['code']} after {elapsed:.2f} s")
    assert link["failure"]["code"] == code, link
    assert elapsed < DEADLINE + SLACK
    for word in ("SSH", "OpenSSH", "Debian", "zzz"):
        assert word not in str(link)
    assert SSH_BANNER.decode().strip() not in str(link)


def _secret_forms(username: str) -> list[bytes]:
    """The password in every form the probes send it."""
    escaped = PASSWORD.replace("\\", "\\\\").replace('"', '\\"')
    b64_password = base64.b64encode(PASSWORD.encode())
    return [
        PASSWORD.encode(),
        escaped.encode(),
        base64.b64encode(f"\0{username}\0{PASSWORD}".encode()),
        b64_password,
        b64_password.rstrip(b"="),
    ]


async def test_echoed_secrets_reach_no_topic_document_or_log_in_any_encoding(
    api: httpx.AsyncClient,
    infra: Endpoints,
    services: RunningServices,
    hostile: HostileMailServers,
    workdir: Path,
    new_mail_user: Callable[[str], MailUser],
) -> None:
    cases = [
        ("imap_echo_login", None, "imap_auth_failed"),  # LOGIN "user" "Echo\"Secret\\..."
        ("imap_echo_plain", None, "imap_auth_failed"),  # AUTHENTICATE PLAIN <base64>
        (None, "smtp_echo_login", "smtp_auth_failed"),  # AUTH LOGIN base64(user), base64(pw)
        (None, "smtp_echo_plain", "smtp_auth_failed"),  # AUTH PLAIN <base64>
    ]
    users = iter(await _real_users(new_mail_user, len(cases)))
    bodies = [
        _hostile_body(infra, hostile, imap, smtp, next(users), security="ssl")
        for imap, smtp, _code in cases
    ]
    results = await asyncio.gather(*(_link(api, body) for body in bodies))
    usernames = [body["email"] for body in bodies]
    for (link, elapsed), (imap, smtp, code) in zip(results, cases, strict=True):
        echo = imap or smtp
        assert echo is not None
        assert link["failure"]["code"] == code, link
        assert elapsed < DEADLINE + SLACK
        assert ECHO_MARK.decode() not in str(link)
        sent = bytes(hostile.received[echo])
        assert any(form in sent for u in usernames for form in _secret_forms(u)), echo

    records = await read_topics(infra.kafka_bootstrap, "e2e")
    documents = await dump_databases(infra.mongodb_uri, "e2e")
    log_files = [*workdir.rglob("*.log"), *Path(infra.workdir).rglob("*.log")]
    logs = [p.read_bytes() for p in log_files]
    assert records
    assert documents
    assert logs
    for form in (f for u in usernames for f in _secret_forms(u)):
        assert not [r for r in records if form in r[1] or form in r[2]], f"{form!r} in Kafka"
        assert not [d for d in documents if form in d], f"{form!r} in MongoDB"
        assert not [log for log in logs if form in log], f"{form!r} in a log"


def _listen_outside_the_allowed_ports() -> socket.socket:
    """A listener on a port neither a mail port nor in the stack's ephemeral range."""
    for port in range(20000 + secrets.randbelow(5000), 32000):
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        sock.listen()
        sock.setblocking(False)
        return sock
    raise AssertionError("no free port below the ephemeral range")


async def test_a_port_outside_the_allowed_list_is_refused_at_the_post_without_connecting(
    api: httpx.AsyncClient, infra: Endpoints
) -> None:
    listener = _listen_outside_the_allowed_ports()
    try:
        port = listener.getsockname()[1]
        body = imap_body(infra, MailUser(f"port-{secrets.token_hex(4)}@example.org", PASSWORD))
        body["imap"]["port"] = port
        body["smtp"]["port"] = 22
        response = await api.post(links_path("acme", unique_user_id()), json=body)
        assert response.status_code == 422, response.text
        fields = [problem["field"] for problem in response.json()["fields"]]
        assert fields == ["imap.port", "smtp.port"], response.text
        assert "993" in response.text  # the fix names the ports that work
        await asyncio.sleep(1.0)  # time for a connection that should never come
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()

"""The TCP forwarder that outage tests put in front of the shared Dovecot: it forwards TLS
as is, refuses connections while stopped, and listens on the same ports again."""

from __future__ import annotations

import asyncio
import imaplib
import smtplib
import socket
import ssl

import pytest

from localinfra import LocalStack
from localinfra.forwarder import TcpForwarder

USER, PASSWORD = "forwarded@example.org", "forwarded-secret"


@pytest.fixture
def stack(local_stack: LocalStack) -> LocalStack:
    local_stack.add_mail_user(USER, PASSWORD)
    return local_stack


def _imap_login(stack: LocalStack, port: int) -> None:
    endpoints = stack.endpoints
    tls = ssl.create_default_context(cafile=endpoints.ca_file)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    raw.close()  # only a reachability check; the login below uses the TLS name
    with imaplib.IMAP4_SSL(endpoints.tls_hostname, port, ssl_context=tls, timeout=5) as imap:
        assert imap.login(USER, PASSWORD)[0] == "OK"


def _smtp_login(stack: LocalStack, port: int) -> None:
    endpoints = stack.endpoints
    tls = ssl.create_default_context(cafile=endpoints.ca_file)
    with smtplib.SMTP_SSL(endpoints.tls_hostname, port, context=tls, timeout=5) as smtp:
        assert smtp.login(USER, PASSWORD)[0] == 235


def test_forwarder_stops_refusing_and_starts_again_on_the_same_ports(stack: LocalStack) -> None:
    endpoints = stack.endpoints
    targets = {"imaps": endpoints.imaps_port, "submissions": endpoints.submissions_port}
    with TcpForwarder(targets) as forwarder:
        ports = dict(forwarder.ports)
        assert set(ports) == {"imaps", "submissions"}
        assert not set(ports.values()) & set(targets.values())
        _imap_login(stack, ports["imaps"])
        _smtp_login(stack, ports["submissions"])
        # An open session is cut when the forwarder stops, as when a server dies.
        tls = ssl.create_default_context(cafile=endpoints.ca_file)
        open_session = imaplib.IMAP4_SSL(
            endpoints.tls_hostname, ports["imaps"], ssl_context=tls, timeout=5
        )

        forwarder.stop()
        assert not forwarder.running
        for port in ports.values():
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5)
        with pytest.raises((OSError, imaplib.IMAP4.abort)):
            open_session.noop()
        open_session.shutdown()

        forwarder.start()
        assert forwarder.ports == ports
        _imap_login(stack, ports["imaps"])
        _smtp_login(stack, ports["submissions"])
        forwarder.stop()
        forwarder.start()  # any number of times
        _imap_login(stack, ports["imaps"])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", ports["imaps"]), timeout=5)


async def test_forwarder_keeps_forwarding_while_the_callers_loop_is_busy(
    stack: LocalStack,
) -> None:
    # Its own thread and loop: a test's loop blocked in a synchronous call stalls nothing.
    endpoints = stack.endpoints
    with TcpForwarder({"imaps": endpoints.imaps_port}) as forwarder:
        _imap_login(stack, forwarder.ports["imaps"])  # blocking, on the test's loop
        await asyncio.to_thread(_imap_login, stack, forwarder.ports["imaps"])


def test_the_mx_relay_still_refuses_the_oauth_providers_domains(stack: LocalStack) -> None:
    # Only mail submitted through a local Dovecot reaches them; ownership proofs to them
    # (through the MX-routing relay) stay undeliverable, as on the internet.
    endpoints = stack.endpoints
    with (
        smtplib.SMTP("127.0.0.1", endpoints.relay_port, timeout=10) as smtp,
        pytest.raises(smtplib.SMTPRecipientsRefused) as refused,
    ):
        smtp.sendmail("proof@mbl.test", ["someone@gmail.com"], b"Subject: x\r\n\r\nx\r\n")
    # 451: the local DNS server answers for its own zones only (no forwarding in tests).
    assert refused.value.recipients["someone@gmail.com"][0] in (451, 550)

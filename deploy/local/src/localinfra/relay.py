"""SMTP relays (aiosmtpd) of the local stack, as child processes: ``python -m localinfra.relay``.

- The MX-routing relay, for ownership proofs: accepts mail without auth, looks up each
  recipient domain's MX at the stack's DNS server and delivers over LMTP to the Dovecot mapped
  to that MX host. Recipients whose domain has no mapped MX get 550, as undeliverable
  internet mail.
- The submission relay, where the Dovecots' submission services hand accepted mail: it
  delivers over LMTP by recipient domain (a routes file the stack writes once the Dovecots'
  LMTP ports are known, re-read on every message) and accepts and discards the rest, as the
  plain sink it replaces did. So a message sent through a local mailbox's SMTP to a local
  address arrives in that address's INBOX.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import smtplib
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localinfra.ports import free_port, wait_for_banner
from localinfra.procs import ManagedProcess, ServerFailedError

DATA_SIZE_LIMIT = 1024 * 1024


def _encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("idna")
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def _read_name(packet: bytes, offset: int) -> tuple[str, int]:
    labels: list[str] = []
    end = -1
    for _ in range(128):  # bounded: no pointer loops
        length = packet[offset]
        if length >= 0xC0:
            if end < 0:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | packet[offset + 1]
            continue
        if length == 0:
            return ".".join(labels).lower(), end if end >= 0 else offset + 1
        labels.append(packet[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    raise ValueError("DNS name too long")


def mx_lookup(domain: str, server: tuple[str, int], timeout: float = 2.0) -> list[tuple[int, str]]:
    """MX records of ``domain`` as (preference, host); [] for NXDOMAIN/no MX.

    Raises ``OSError`` when the server does not answer usefully (a temporary failure).
    """
    qid = secrets.randbits(16)
    query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + _encode_name(domain)
    query += struct.pack(">HH", 15, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(query, server)
        packet = sock.recv(4096)
    rid, flags, qd, an, _, _ = struct.unpack(">HHHHHH", packet[:12])
    if rid != qid:
        raise OSError("DNS answer id mismatch")
    rcode = flags & 0x0F
    if rcode == 3:
        return []
    if rcode != 0:
        raise OSError(f"DNS rcode {rcode}")
    offset = 12
    for _ in range(qd):
        _, offset = _read_name(packet, offset)
        offset += 4
    records: list[tuple[int, str]] = []
    for _ in range(an):
        _, offset = _read_name(packet, offset)
        rtype, _, _, rdlength = struct.unpack(">HHIH", packet[offset : offset + 10])
        offset += 10
        if rtype == 15:
            (pref,) = struct.unpack(">H", packet[offset : offset + 2])
            host, _ = _read_name(packet, offset + 2)
            records.append((pref, host))
        offset += rdlength
    return sorted(records)


class MxRelayHandler:
    """aiosmtpd handler: route by MX through a transport map host -> (ip, lmtp port)."""

    def __init__(
        self, dns: tuple[str, int], transport: dict[str, tuple[str, int]], log_file: Path
    ) -> None:
        self.dns = dns
        self.transport = {host.lower().rstrip("."): dest for host, dest in transport.items()}
        self.log_file = log_file

    def _log(self, line: str) -> None:
        with self.log_file.open("a") as log:
            log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")

    def route(self, address: str) -> tuple[str, int] | str | None:
        """Destination of ``address``; None: no mapped MX; a str: temporary failure."""
        domain = address.rpartition("@")[2].lower()
        if not domain:
            return None
        try:
            records = mx_lookup(domain, self.dns)
        except (OSError, ValueError, struct.error) as exc:
            return f"DNS lookup failed: {exc}"
        for _, host in records:
            if host in self.transport:
                return self.transport[host]
        return None

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        dest = await asyncio.to_thread(self.route, address)
        if dest is None:
            self._log(f"refused rcpt={address} reason=no-mapped-mx")
            return "550 5.1.2 No mail exchanger known for this domain"
        if isinstance(dest, str):
            self._log(f"deferred rcpt={address} reason={dest}")
            return "451 4.4.3 " + dest
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        groups: dict[tuple[str, int], list[str]] = {}
        for rcpt in envelope.rcpt_tos:
            dest = await asyncio.to_thread(self.route, rcpt)
            if isinstance(dest, tuple):
                groups.setdefault(dest, []).append(rcpt)
        failed = await _deliver_groups(groups, envelope, self._log)
        if failed:
            return "554 5.5.0 Delivery failed for " + ", ".join(failed)
        return "250 OK delivered"


class DomainRelayHandler:
    """aiosmtpd handler: route by recipient domain through a routes file
    ({"domain": ["ip", lmtp_port]}); recipients of other domains are accepted and dropped."""

    def __init__(self, routes_file: Path, log_file: Path) -> None:
        self.routes_file = routes_file
        self.log_file = log_file

    def _log(self, line: str) -> None:
        with self.log_file.open("a") as log:
            log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")

    def route(self, address: str) -> tuple[str, int] | None:
        """Destination of ``address``, or None (dropped)."""
        domain = address.rpartition("@")[2].lower().rstrip(".")
        try:
            routes = json.loads(self.routes_file.read_text())
        except (OSError, ValueError):
            return None  # not written yet: everything is dropped, as by a sink
        dest = routes.get(domain) if isinstance(routes, dict) else None
        if isinstance(dest, list) and len(dest) == 2:
            return str(dest[0]), int(dest[1])
        return None

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        groups: dict[tuple[str, int], list[str]] = {}
        for rcpt in envelope.rcpt_tos:
            dest = self.route(rcpt)
            if dest is None:
                self._log(f"dropped from={envelope.mail_from} rcpt={rcpt}")
            else:
                groups.setdefault(dest, []).append(rcpt)
        failed = await _deliver_groups(groups, envelope, self._log)
        if failed:
            return "554 5.5.0 Delivery failed for " + ", ".join(failed)
        return "250 OK"


async def _deliver_groups(
    groups: dict[tuple[str, int], list[str]], envelope: Any, log: Callable[[str], None]
) -> list[str]:
    """Delivers each LMTP server's recipients, logging every one; returns those refused."""
    failed: list[str] = []
    for dest, rcpts in groups.items():
        error = await asyncio.to_thread(
            _deliver, dest, envelope.mail_from, rcpts, envelope.original_content
        )
        for rcpt in rcpts:
            ok = rcpt not in error
            log(
                f"{'delivered' if ok else 'failed'} from={envelope.mail_from} rcpt={rcpt} "
                f"lmtp={dest[0]}:{dest[1]}" + ("" if ok else f" error={error[rcpt]}")
            )
            if not ok:
                failed.append(rcpt)
    return failed


def _deliver(dest: tuple[str, int], sender: str, rcpts: list[str], data: bytes) -> dict[str, str]:
    """LMTP delivery; returns {recipient: error} for the refused ones."""
    try:
        with smtplib.LMTP(dest[0], dest[1], timeout=10) as lmtp:
            refused = lmtp.sendmail(sender, rcpts, data)
            return {rcpt: f"{code} {msg!r}" for rcpt, (code, msg) in refused.items()}
    except smtplib.SMTPRecipientsRefused as exc:
        return {rcpt: f"{code} {msg!r}" for rcpt, (code, msg) in exc.recipients.items()}
    except (OSError, smtplib.SMTPException) as exc:
        return dict.fromkeys(rcpts, repr(exc))


class _RelayProcess:
    """A relay (``python -m localinfra.relay``) as a child process on 127.0.0.1; subclasses
    say what it is called and which arguments it runs with."""

    name = "relay"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self._proc: ManagedProcess | None = None

    def arguments(self) -> list[str]:
        """The relay's own arguments, after ``--port``."""
        raise NotImplementedError

    def launch(self) -> None:
        """Start the process without waiting for it."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        argv = [sys.executable, "-m", "localinfra.relay", "--port", str(self.port)]
        self._proc = ManagedProcess(
            self.name, argv + self.arguments(), self.workdir / f"{self.name}.log"
        )
        self._proc.start()

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Wait for the ``220`` greeting."""
        proc = self._proc
        if proc is None:
            raise RuntimeError(f"{self.name} not launched")
        try:
            wait_for_banner("127.0.0.1", self.port, b"220", timeout, is_alive=proc.is_alive)
        except (TimeoutError, RuntimeError) as exc:
            raise proc.fail(str(exc)) from exc

    def start(self, timeout: float = 15.0) -> None:
        """Launch and wait; relaunch once on another port if the first one was taken."""
        self.launch()
        try:
            self.wait_ready(timeout)
        except ServerFailedError:
            self.stop()
            self.launch()
            self.wait_ready(timeout)

    def terminate(self) -> None:
        """Send SIGTERM without waiting (``stop`` then waits)."""
        if self._proc is not None:
            self._proc.terminate()

    def stop(self) -> None:
        """Stop the relay. Idempotent."""
        if self._proc is not None:
            self._proc.stop(timeout=5.0)


class SmtpRelay(_RelayProcess):
    """The MX-routing relay (``RelayHandler``): ownership proofs go through it."""

    name = "smtp-relay"

    def __init__(
        self, workdir: Path, dns: tuple[str, int], transport: dict[str, tuple[str, int]]
    ) -> None:
        super().__init__(workdir)
        self.dns = dns
        self.transport = transport
        self.delivery_log = workdir / "relay-deliveries.log"

    def arguments(self) -> list[str]:
        argv = ["--dns", f"{self.dns[0]}:{self.dns[1]}", "--log", str(self.delivery_log)]
        for host, (ip, port) in self.transport.items():
            argv += ["--route", f"{host}={ip}:{port}"]
        return argv


class SubmissionRelay(_RelayProcess):
    """The submission relay (``DomainRelayHandler``): Dovecot's submission relays to it."""

    name = "submission-relay"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.routes_file = workdir / "submission-routes.json"
        self.delivery_log = workdir / "submission-deliveries.log"

    def set_routes(self, routes: dict[str, tuple[str, int]]) -> None:
        """Deliver mail for these domains (lower case) to these LMTP servers from now on."""
        staging = self.routes_file.with_suffix(".tmp")
        staging.write_text(json.dumps({d.lower(): list(dest) for d, dest in routes.items()}))
        staging.replace(self.routes_file)  # the relay never reads a half-written file

    def arguments(self) -> list[str]:
        return ["--routes-file", str(self.routes_file), "--log", str(self.delivery_log)]


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    """Entry point of the child process."""
    from aiosmtpd.controller import Controller

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dns")
    parser.add_argument("--routes-file")
    parser.add_argument("--log", required=True)
    parser.add_argument("--route", action="append", default=[])
    args = parser.parse_args()
    handler: MxRelayHandler | DomainRelayHandler
    if args.routes_file:
        handler = DomainRelayHandler(Path(args.routes_file), Path(args.log))
    else:
        transport = {}
        for route in args.route:
            host, _, dest = route.partition("=")
            transport[host] = _hostport(dest)
        handler = MxRelayHandler(_hostport(args.dns), transport, Path(args.log))
    controller = Controller(
        handler, hostname="127.0.0.1", port=args.port, data_size_limit=DATA_SIZE_LIMIT
    )
    controller.start()
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()

"""A real DNS server on 127.0.0.1 for detection tests: dnsmasq (Debian's dnsmasq-base),
answering only from the records a test gives it.

Names under a served zone that have no record get NXDOMAIN, as from an authoritative server;
nothing is forwarded anywhere (--no-resolv).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from localinfra.apt import install_packages
from localinfra.cache import InstallResult
from localinfra.ports import free_port
from localinfra.procs import ManagedProcess, wait_until_ready

APT_PACKAGES = ("dnsmasq-base",)
TTL = 300


def install_dnsmasq() -> InstallResult:
    """Installs dnsmasq-base (the binary only: no system service is started)."""
    return install_packages("dnsmasq", APT_PACKAGES)


@dataclass
class DnsRecords:
    """What the server answers. Hosts end without a dot."""

    zones: list[str] = field(default_factory=list)  # answered authoritatively (NXDOMAIN)
    mx: list[tuple[str, str, int]] = field(default_factory=list)  # domain, host, preference
    txt: list[tuple[str, str]] = field(default_factory=list)  # name, text
    srv: list[tuple[str, str, int, int]] = field(default_factory=list)  # name, host, port, prio
    a: list[tuple[str, str]] = field(default_factory=list)  # name, IPv4 address

    def config(self) -> list[str]:
        """Returns the records as dnsmasq configuration lines."""
        lines = [f"local=/{zone}/" for zone in self.zones]
        lines += [f"mx-host={domain},{host},{pref}" for domain, host, pref in self.mx]
        lines += [f'txt-record={name},"{text}"' for name, text in self.txt]
        lines += [f"srv-host={n},{host},{port},{prio},0" for n, host, port, prio in self.srv]
        lines += [f"host-record={name},{ip}" for name, ip in self.a]
        return lines


class DnsServer:
    """One dnsmasq process serving `records` on 127.0.0.1 (UDP and TCP) at a free port."""

    def __init__(self, workdir: Path, records: DnsRecords, forward: bool = False) -> None:
        self.workdir = workdir
        self.records = records
        # Tests never forward (no question reaches the internet); `make run` forwards names
        # outside its zones to the system's resolvers, so real domains are detected too.
        self.forward = forward
        self.port = 0
        self._proc: ManagedProcess | None = None

    def start(self, timeout: float = 10.0) -> int:
        """Starts the server and returns its port once it answers."""
        binary = install_dnsmasq().location
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = self.workdir / "dnsmasq.conf"
        conf.write_text("\n".join(self.records.config()) + "\n")
        argv = [
            str(binary),
            "--keep-in-foreground",
            *(() if self.forward else ("--no-resolv",)),
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--interface=lo",
            f"--port={self.port}",
            f"--conf-file={conf}",
            f"--local-ttl={TTL}",
            "--pid-file=",
            "--log-facility=-",
            "--user=root",
        ]
        self._proc = ManagedProcess("dnsmasq", argv, self.workdir / "dnsmasq.log")
        self._proc.start()
        wait_until_ready(self._proc, self._answers, timeout, "a DNS answer", 0.05)
        return self.port

    def _answers(self) -> bool:
        # A minimal query for "." NS: any reply (even REFUSED) proves the server is up.
        query = bytes.fromhex("abcd01000001000000000000") + b"\x00\x00\x02\x00\x01"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.2)
            sock.sendto(query, ("127.0.0.1", self.port))
            try:
                return sock.recv(512)[:2] == b"\xab\xcd"
            except OSError:
                return False

    def stop(self) -> None:
        """Stops the server (idempotent)."""
        if self._proc is not None:
            self._proc.stop(timeout=5.0)

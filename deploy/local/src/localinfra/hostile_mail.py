"""Loopback servers that misbehave as an attacker's mail server would, for tests of the
verifier's read bounds, deadlines and secret scrubbing (shared/tests, tests/e2e).

Each behaviour listens on its own port of 127.0.0.1; all run on one event loop in a daemon
thread, so sync and async tests alike can point a probe or a link at them. What a server
received is kept per behaviour, so a test can prove a secret really crossed the wire before
proving it came back nowhere.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
Behaviour = Callable[[Reader, Writer, bytearray], Awaitable[None]]

SSH_BANNER = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"
# Free text every echoing reply carries: a detail quoting the server would show it.
ECHO_MARK = b"you-sent"
_CHUNK = b"x" * 65536
_UNTAGGED = b"* 1 EXISTS " + b"y" * 1000 + b"\r\n"


async def _flood(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Writes `data` for ever, as fast as the peer reads it."""
    while True:
        writer.write(data)
        await writer.drain()


async def _line(reader: asyncio.StreamReader, received: bytearray) -> bytes:
    line = await reader.readline()
    if not line:
        raise ConnectionResetError("peer hung up")
    received += line
    return line


async def imap_endless_untagged(r: Reader, w: Writer, got: bytearray) -> None:
    w.write(b"* OK [CAPABILITY IMAP4rev1] hostile\r\n")
    await _flood(w, _UNTAGGED * 64)


async def imap_endless_line(r: Reader, w: Writer, got: bytearray) -> None:
    w.write(b"* OK hostile\r\n")
    await _line(r, got)  # CAPABILITY
    w.write(b"* CAPABILITY IMAP4rev1 ")
    await _flood(w, _CHUNK)


async def imap_huge_literal(r: Reader, w: Writer, got: bytearray) -> None:
    w.write(b"* OK hostile\r\n")
    await _line(r, got)
    w.write(b"* CAPABILITY {1073741824}\r\n")  # 1 GiB, then as much as the peer takes
    await _flood(w, _CHUNK)


async def imap_drip(r: Reader, w: Writer, got: bytearray) -> None:
    for byte in b"* OK " + b"z" * 100_000:
        w.write(bytes([byte]))
        await w.drain()
        await asyncio.sleep(0.1)


async def pop3_endless_line(r: Reader, w: Writer, got: bytearray) -> None:
    w.write(b"+OK ")
    await _flood(w, _CHUNK)


async def smtp_endless_continuation(r: Reader, w: Writer, got: bytearray) -> None:
    w.write(b"220 hostile ESMTP\r\n")
    await _line(r, got)  # EHLO
    await _flood(w, (b"250-" + b"y" * 100 + b"\r\n") * 256)


async def imap_endless_greeting(r: Reader, w: Writer, got: bytearray) -> None:
    """Over implicit TLS: a greeting line of 1 MiB, far over any line bound, for a probe that
    chose STARTTLS and asks the port over TLS. Not an endless flood: a TLS flood to a peer
    that hung up kept the other servers of this thread's loop from answering (seen in tests)."""
    w.write(b"* OK " + _CHUNK * 16)
    await w.drain()
    await silent(r, w, got)


async def silent(r: Reader, w: Writer, got: bytearray) -> None:
    while await r.read(65536):
        pass


async def ssh(r: Reader, w: Writer, got: bytearray) -> None:
    w.write(SSH_BANNER)
    await silent(r, w, got)


def _imap_echo(capabilities: bytes) -> Behaviour:
    """An IMAP server that answers every login with a NO quoting what it received."""

    async def serve(r: Reader, w: Writer, got: bytearray) -> None:
        w.write(b"* OK [CAPABILITY " + capabilities + b"] echo ready\r\n")
        while True:
            line = (await _line(r, got)).rstrip(b"\r\n")
            tag, _, rest = line.partition(b" ")
            if rest.upper() == b"CAPABILITY":
                w.write(b"* CAPABILITY " + capabilities + b"\r\n" + tag + b" OK done\r\n")
                continue
            echo = ECHO_MARK + b" " + line
            w.write(b"* OK [ALERT] " + echo + b"\r\n")
            w.write(tag + b" NO [AUTHENTICATIONFAILED " + line + b"] " + echo + b"\r\n")

    return serve


def _smtp_echo(mechanism: bytes) -> Behaviour:
    """An SMTP server that answers AUTH with a 535 quoting every line of the exchange."""

    async def serve(r: Reader, w: Writer, got: bytearray) -> None:
        w.write(b"220 echo ESMTP\r\n")
        said: list[bytes] = []
        prompts: list[bytes] = []  # AUTH LOGIN's questions still to ask
        while True:
            line = (await _line(r, got)).rstrip(b"\r\n")
            said.append(line)
            verb = line.split(b" ", 1)[0].upper()
            if verb == b"EHLO":
                w.write(b"250-echo\r\n250 AUTH " + mechanism + b"\r\n")
            elif line.upper().startswith(b"AUTH LOGIN"):
                # The username may come with the command (an initial response) or after 334.
                prompts = [b"UGFzc3dvcmQ6"] if line[11:] else [b"VXNlcm5hbWU6", b"UGFzc3dvcmQ6"]
                w.write(b"334 " + prompts.pop(0) + b"\r\n")
            elif prompts:
                w.write(b"334 " + prompts.pop(0) + b"\r\n")
            elif verb == b"QUIT":
                w.write(b"221 bye\r\n")
                return
            else:
                echo = b" ".join(said[1:])
                w.write(b"535-5.7.8 " + ECHO_MARK + b" " + echo + b"\r\n")
                w.write(b"535 5.7.8 " + echo + b"\r\n")

    return serve


PLAINTEXT: dict[str, Behaviour] = {
    "imap_endless_untagged": imap_endless_untagged,
    "imap_endless_line": imap_endless_line,
    "imap_huge_literal": imap_huge_literal,
    "imap_drip": imap_drip,
    "pop3_endless_line": pop3_endless_line,
    "smtp_endless_continuation": smtp_endless_continuation,
    "silent": silent,
    "ssh": ssh,
}
# Implicit TLS, so the echo proves scrubbing also inside an encrypted session.
TLS: dict[str, Behaviour] = {
    "imap_echo_login": _imap_echo(b"IMAP4rev1 AUTH=PLAIN"),  # LOGIN "user" "pass" (quoted)
    "imap_echo_plain": _imap_echo(b"IMAP4rev1 AUTH=PLAIN SASL-IR"),  # AUTHENTICATE PLAIN b64
    "smtp_echo_login": _smtp_echo(b"LOGIN"),  # base64(user), then base64(password)
    "smtp_echo_plain": _smtp_echo(b"PLAIN"),  # AUTH PLAIN base64(\0user\0password)
    "imap_endless_greeting": imap_endless_greeting,
}


class HostileMailServers:
    """Every behaviour above on its own loopback port, served from a daemon thread."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._tls.load_cert_chain(cert_file, key_file)
        self.ports: dict[str, int] = {}
        self.received: dict[str, bytearray] = collections.defaultdict(bytearray)
        self.connections: collections.Counter[str] = collections.Counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._servers: list[asyncio.Server] = []

    def start(self) -> HostileMailServers:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start_all(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            for server in self._servers:
                server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _start_all(self) -> None:
        for name, behaviour in PLAINTEXT.items():
            await self._start(name, behaviour, None)
        for name, behaviour in TLS.items():
            await self._start(name, behaviour, self._tls)

    async def _start(self, name: str, behaviour: Behaviour, tls: ssl.SSLContext | None) -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections[name] += 1
            try:
                await behaviour(reader, writer, self.received[name])
            except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
                pass  # the client hung up, as it should
            finally:
                writer.transport.abort()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls, limit=1 << 20)
        self._servers.append(server)
        self.ports[name] = server.sockets[0].getsockname()[1]

"""A TCP forwarder for outage tests: a mail server that "stops for a while" without stopping
the shared Dovecot every other test uses.

Usage::

    targets = {"imaps": endpoints.imaps_port, "submissions": endpoints.submissions_port}
    with TcpForwarder(targets) as fw:
        fw.ports["imaps"]   # link the mailbox with these ports (TLS name: endpoints.tls_hostname)
        fw.stop()           # every port refuses connections; open connections are cut
        fw.start()          # the same ports forward again

Bytes are copied as they are (TLS passes through), so clients verify the Dovecot's own
certificate. It runs its own event loop in a daemon thread, so a test's loop (or a blocking
call in it) never stalls the forwarding, and services in other processes can reach it.

While stopped, each port stays reserved by a socket that is bound but not listening: the
kernel answers a connection attempt with a reset ("connection refused"), and no other program
can take the port before the forwarder listens on it again (SO_REUSEPORT lets the listening
socket and the reserving one share it during the hand-over).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any

from localinfra.ports import free_port

# One chunk of a copy; mail sessions are small.
_CHUNK = 64 * 1024
_CONNECT_TIMEOUT = 5.0


class TcpForwarder:
    """Listens on 127.0.0.1 (one port per target) and copies each connection to its target.

    ``targets``: a name -> target port on ``target_host``. The listening ports are picked on
    the first ``start`` and kept for the forwarder's life, so a stop and a start look like a
    server that went away and came back.
    """

    def __init__(self, targets: Mapping[str, int], target_host: str = "127.0.0.1") -> None:
        self.targets = dict(targets)
        self.target_host = target_host
        self.ports: dict[str, int] = {}
        self.connections_accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="tcp-forwarder", daemon=True)
        self._thread.start()
        self._servers: list[asyncio.Server] = []
        self._reserved: dict[str, socket.socket] = {}
        self._streams: set[asyncio.StreamWriter] = set()
        self._closed = False

    @property
    def running(self) -> bool:
        """True while the forwarder accepts connections."""
        return bool(self._servers)

    def start(self, timeout: float = 10.0) -> None:
        """Listens again (on the same ports once picked) and forwards. Idempotent."""
        self._call(self._start(), timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Closes the listening sockets (connections are then refused) and cuts every open
        connection, like a stopped server. Idempotent."""
        self._call(self._stop(), timeout)

    def close(self) -> None:
        """Stops for good and ends the thread. Idempotent."""
        if self._closed:
            return
        with contextlib.suppress(Exception):
            self.stop()
        self._closed = True
        for sock in self._reserved.values():
            sock.close()
        self._reserved.clear()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> TcpForwarder:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coroutine: Any, timeout: float) -> None:
        if self._closed:
            coroutine.close()
            raise RuntimeError("forwarder closed")
        future: Future[None] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        future.result(timeout)

    async def _start(self) -> None:
        if self._servers:
            return
        for name, target in self.targets.items():
            port = self.ports.get(name) or free_port()

            async def handle(
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: int = target
            ) -> None:
                await self._forward(reader, writer, target)

            listening = _bound_socket(port)
            listening.listen(64)
            listening.setblocking(False)
            server = await asyncio.start_server(handle, sock=listening)
            self._servers.append(server)
            self.ports[name] = port
            reserved = self._reserved.pop(name, None)
            if reserved is not None:
                reserved.close()

    async def _stop(self) -> None:
        if not self._servers:
            return
        for name, port in self.ports.items():
            if name not in self._reserved:
                self._reserved[name] = _bound_socket(port)
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        for writer in list(self._streams):
            _abort(writer)
        for server in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

    async def _forward(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter, target: int
    ) -> None:
        self.connections_accepted += 1
        self._streams.add(client_writer)
        writers = [client_writer]
        try:
            server_reader, server_writer = await asyncio.wait_for(
                asyncio.open_connection(self.target_host, target), _CONNECT_TIMEOUT
            )
            writers.append(server_writer)
            self._streams.add(server_writer)
            await asyncio.gather(
                _copy(client_reader, server_writer), _copy(server_reader, client_writer)
            )
        except (OSError, TimeoutError):
            pass
        finally:
            for writer in writers:
                self._streams.discard(writer)
                writer.close()  # both ways ended: a normal close (stop() resets instead)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(_CHUNK):
            writer.write(chunk)
            await writer.drain()
    except OSError:
        pass
    finally:
        # Half-close: the other side sees EOF (a server's BYE, a client's QUIT) and the copy
        # the other way goes on until it ends too.
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


def _bound_socket(port: int) -> socket.socket:
    """A TCP socket bound to 127.0.0.1:port that shares the port with the forwarder's others."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # REUSEADDR: connections just cut linger in TIME_WAIT; REUSEPORT: the reserving and
        # the listening socket hold the port together during a hand-over.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


def _abort(writer: asyncio.StreamWriter) -> None:
    """Closes a connection at once (RST), as a server process that died would."""
    transport = writer.transport
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            # Linger 0: the close sends RST, so the peer sees "connection reset" at once.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()

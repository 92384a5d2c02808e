"""Loopback port helpers: pick free ports and wait for a server's greeting line."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable

_handed_out: set[int] = set()
_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free right now.

    The kernel picks it; we also remember every port handed out by this process so that two
    servers started in parallel never get the same number before either has bound it.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        with _lock:
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("could not find a free port")


def wait_for_banner(
    host: str,
    port: int,
    prefix: bytes,
    timeout: float = 10.0,
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    is_alive: Callable[[], bool] | None = None,
) -> bytes:
    """Connect repeatedly until the server's first line starts with ``prefix``; return it.

    An open port is not enough: Dovecot and Kafka-like servers accept before they are ready,
    so we wait for the real greeting. ``ssl_context`` wraps the socket first (implicit TLS).
    ``is_alive`` lets the caller fail fast when the server process has died.
    """
    deadline = time.monotonic() + timeout
    last_error: str = "no attempt"
    while True:
        if is_alive is not None and not is_alive():
            raise RuntimeError(f"server for {host}:{port} exited before greeting")
        try:
            line = _read_first_line(host, port, ssl_context, server_hostname, deadline)
            if line.startswith(prefix):
                return line
            last_error = f"unexpected greeting {line[:80]!r}"
        except (OSError, TimeoutError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"no {prefix!r} greeting from {host}:{port} within {timeout:.0f} s ({last_error})"
            )
        time.sleep(0.05)


def _read_first_line(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
    deadline: float,
) -> bytes:
    per_try = max(0.2, min(2.0, deadline - time.monotonic()))
    with socket.create_connection((host, port), timeout=per_try) as raw:
        sock: socket.socket = raw
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(raw, server_hostname=server_hostname or host)
        with sock:
            data = b""
            while b"\n" not in data:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                data += chunk
            return data.split(b"\n", 1)[0].rstrip(b"\r")


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False

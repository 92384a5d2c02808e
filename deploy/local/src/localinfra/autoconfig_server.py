"""A small HTTPS server on a loopback address that serves autoconfig documents and redirects,
by host name and path, for detection tests. It runs in a thread of the test process."""

from __future__ import annotations

import http.server
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from localinfra.certs import TlsFiles, make_self_signed_cert


@dataclass(frozen=True)
class Reply:
    """What to answer for one host and path: a document, or a redirect to `location`."""

    status: int = 200
    body: bytes = b""
    location: str | None = None


class AutoconfigServer:
    """Serves `replies[(host, path)]`; anything else is 404. TLS with a cert for `names`."""

    def __init__(self, workdir: Path, names: tuple[str, ...], host: str = "127.0.0.2") -> None:
        self.tls: TlsFiles = make_self_signed_cert(workdir, names)
        self.host = host
        self.replies: dict[tuple[str, str], Reply] = {}
        self.requests: list[tuple[str, str]] = []
        self._server: http.server.ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        """The port it listens on."""
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Starts serving in a daemon thread."""
        server_ref = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host = (self.headers.get("Host") or "").split(":")[0]
                path = self.path.split("?")[0]
                server_ref.requests.append((host, self.path))
                reply = server_ref.replies.get((host, path), Reply(404, b"not found"))
                self.send_response(reply.status)
                if reply.location:
                    self.send_header("Location", reply.location)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: object) -> None:
                return

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        self._server = http.server.ThreadingHTTPServer((self.host, 0), Handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stops serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

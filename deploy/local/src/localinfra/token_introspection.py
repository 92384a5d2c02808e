"""An RFC 7662 token introspection endpoint for the local Dovecot's XOAUTH2 logins.

Dovecot's oauth2 passdb asks it whether a bearer token is active and whose it is. Tests (and
the local OAuth server of the OAuth broker's tests) grant and revoke tokens here; it runs in a
thread of the process that owns the stack.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.parse


class TokenIntrospection:
    """Answers POST /introspect {token} with {"active": true, "username": ...} or inactive."""

    def __init__(self) -> None:
        self._tokens: dict[str, tuple[str, float | None]] = {}
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self.calls = 0

    @property
    def url(self) -> str:
        """Where Dovecot posts its questions."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/introspect"

    def grant(self, token: str, username: str, expires_at: float | None = None) -> None:
        """Makes `token` log in as `username` (until `expires_at`, a time.time(), if given)."""
        with self._lock:
            self._tokens[token] = (username, expires_at)

    def revoke(self, token: str) -> None:
        """Makes `token` inactive."""
        with self._lock:
            self._tokens.pop(token, None)

    def _answer(self, token: str) -> dict[str, object]:
        with self._lock:
            self.calls += 1
            username, expires_at = self._tokens.get(token, ("", None))
        if not username or (expires_at is not None and time.time() >= expires_at):
            return {"active": False}
        return {"active": True, "username": username}

    def start(self) -> None:
        """Starts serving on a free loopback port."""
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
                body = json.dumps(owner._answer((form.get("token") or [""])[0])).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stops serving (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

"""An independent OpenID provider for tests and `make run`: panva's `oidc-provider` from npm.

The project writes none of the provider: `deploy/local/oidc-idp/package-lock.json` pins the
package (OpenID Certified), `npm ci` installs it once into the cache (keyed by the lock's hash),
and `server.mjs` only configures it: issuer http://127.0.0.1:<port>, authorization code with
PKCE, refresh tokens for `offline_access` with `prompt=consent`, opaque access tokens whose
introspection names the mailbox in `email`, introspection for Dovecot, revocation, RFC 9207
`iss`, login and consent pages a test fills in over HTTP, and an admin API on its own loopback
port (accounts, clients, token lifetime, revoking an account's grants, a log of what was issued
and revoked without token values).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

from localinfra.apt import install_packages
from localinfra.cache import InstallResult, cache_dir, install_lock
from localinfra.ports import free_port
from localinfra.procs import ManagedProcess, ServerFailedError, wait_until_ready

# The npm project (package.json, package-lock.json, server.mjs) in the source tree.
IDP_SOURCE = Path(__file__).resolve().parents[2] / "oidc-idp"
_MARKER = ".complete"
NODE_APT_PACKAGES = ("nodejs", "npm")
READY_TIMEOUT = 30.0
# Dovecot's client at the provider: it may introspect every token (features.introspection).
INTROSPECTION_CLIENT_ID = "dovecot"
_ADMIN_TIMEOUT = 10.0
_MAX_SIGN_IN_STEPS = 12


def _lock_hash() -> str:
    return hashlib.sha256((IDP_SOURCE / "package-lock.json").read_bytes()).hexdigest()[:16]


def idp_home() -> Path:
    """Cache directory of the installed packages for the current lock file."""
    return cache_dir() / f"oidc-provider-{_lock_hash()}"


def install_oidc_idp() -> InstallResult:
    """`npm ci` the locked packages into the cache once; later calls are no-ops."""
    started = time.monotonic()
    home = idp_home()
    with install_lock(home.name):
        if (home / _MARKER).exists():
            return InstallResult("oidc-provider", str(home), "already installed", 0.0)
        if shutil.which("node") is None or shutil.which("npm") is None:
            # Debian 12's Node.js 18 is enough for oidc-provider 8 (its minimum is Node 18 LTS).
            install_packages("npm", NODE_APT_PACKAGES)
        staging = home.with_name(home.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy2(IDP_SOURCE / name, staging / name)
        result = subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--omit=dev"],
            cwd=staging,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0 or not (staging / "node_modules" / "oidc-provider").is_dir():
            raise RuntimeError(f"npm ci failed:\n{(result.stdout + result.stderr)[-3000:]}")
        # Swap in the complete directory, then mark: an interrupted install is redone.
        shutil.rmtree(home, ignore_errors=True)
        staging.rename(home)
        (home / _MARKER).write_text(_lock_hash() + "\n")
    return InstallResult("oidc-provider", str(home), "installed", time.monotonic() - started)


def awkward_secret() -> str:
    """A client secret with `+`, `%` and `:` (and an encoded-looking `%2B`): it survives only
    if the client form-encodes it for HTTP Basic authentication (RFC 6749 §2.3.1)."""
    return f"{secrets.token_urlsafe(12)}+%2B:%:{secrets.token_urlsafe(12)}"


@dataclass(frozen=True)
class IdpEvent:
    """One entry of the provider's log: a token issued, or a token or grant revoked."""

    kind: str  # access_token | refresh_token | grant
    via: str  # issued | revocation (endpoint) | token (refresh token reuse) | admin
    sub: str
    client_id: str
    grant_id: str


class OidcIdp:
    """One `node server.mjs` process: the provider on one loopback port, its admin API on
    another. Accounts and clients are added through the admin API while it runs."""

    def __init__(self, workdir: Path, access_token_ttl: int = 3600) -> None:
        self.workdir = workdir
        self.access_token_ttl = access_token_ttl
        self.port = 0
        self.admin_port = 0
        self._admin_token = secrets.token_urlsafe(32)
        self.introspection_client_id = INTROSPECTION_CLIENT_ID
        self.introspection_client_secret = secrets.token_urlsafe(32)
        self._proc: ManagedProcess | None = None

    @property
    def issuer(self) -> str:
        """The issuer, also the base of every endpoint (discovery under /.well-known/)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def discovery_url(self) -> str:
        """Where the provider's discovery document is."""
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def introspection_url(self) -> str:
        """RFC 7662 introspection (client authentication required)."""
        return f"{self.issuer}/token/introspection"

    def introspection_url_with_credentials(self) -> str:
        """The introspection URL with Dovecot's client id and secret in its userinfo part,
        which Dovecot sends as HTTP Basic authentication (the secret is URL-safe)."""
        return (
            f"http://{self.introspection_client_id}:{self.introspection_client_secret}"
            f"@127.0.0.1:{self.port}/token/introspection"
        )

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Install if needed, start, and wait until discovery and the admin API answer."""
        install_oidc_idp()
        for attempt in (1, 2):  # a free port can be taken before node binds it
            try:
                self._start_once(timeout)
                return
            except ServerFailedError as exc:
                self.stop()
                if attempt == 2 or "EADDRINUSE" not in str(exc):
                    raise

    def _start_once(self, timeout: float) -> None:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("'node' not found: run python -m localinfra install")
        run_dir = self.workdir / f"run-{secrets.token_hex(4)}"
        run_dir.mkdir(parents=True)
        # Node resolves packages next to the script: a copy of it beside the cached packages.
        shutil.copy2(IDP_SOURCE / "server.mjs", run_dir / "server.mjs")
        (run_dir / "node_modules").symlink_to(idp_home() / "node_modules")
        self.port, self.admin_port = free_port(), free_port()
        config = run_dir / "config.json"
        config.touch(mode=0o600)
        config.write_text(json.dumps(self._config()))
        self._proc = ManagedProcess(
            "oidc-provider", [node, str(run_dir / "server.mjs"), str(config)],
            run_dir / "oidc-provider.log", cwd=run_dir,
        )  # fmt: skip
        self._proc.start()
        wait_until_ready(self._proc, self._ready, timeout, f"oidc-provider at {self.issuer}")

    def _config(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "port": self.port,
            "admin_port": self.admin_port,
            "admin_token": self._admin_token,
            "cookie_key": secrets.token_urlsafe(32),
            "access_token_ttl": self.access_token_ttl,
            # Dovecot's client: no grant of its own, only introspection.
            "clients": [
                {
                    "client_id": self.introspection_client_id,
                    "client_secret": self.introspection_client_secret,
                    "grant_types": [],
                    "response_types": [],
                    "redirect_uris": [],
                }
            ],
            "introspection_clients": [self.introspection_client_id],
        }

    def _ready(self) -> bool:
        with urllib.request.urlopen(self.discovery_url, timeout=2) as response:  # noqa: S310
            issuer = json.loads(response.read())["issuer"]
        self._admin("GET", "/log")
        return bool(issuer == self.issuer)

    def stop(self) -> None:
        """SIGTERM (node exits at once), SIGKILL after 10 s. Idempotent."""
        if self._proc is not None:
            self._proc.stop(timeout=10.0)

    def terminate(self) -> None:
        """SIGTERM without waiting (`stop` then waits)."""
        if self._proc is not None:
            self._proc.terminate()

    @property
    def log_file(self) -> Path | None:
        """The provider's log (stdout and stderr)."""
        return self._proc.log_file if self._proc is not None else None

    # --- admin API ----------------------------------------------------------------------------

    def add_account(self, email: str, sub: str | None = None) -> str:
        """Creates (or updates) an account that signs in as `email`; returns its subject id
        (random unless given; stable for the account)."""
        body: dict[str, Any] = {"email_verified": True}
        if sub is not None:
            body["sub"] = sub
        answer = self._admin("PUT", f"/accounts/{_segment(email)}", body)
        return str(answer["sub"])

    def register_client(
        self, client_id: str, client_secret: str, redirect_uris: list[str], **metadata: Any
    ) -> None:
        """Registers (or replaces) a confidential client: authorization code + refresh token,
        `client_secret_basic` unless `metadata` says otherwise, PKCE always required."""
        body = {"client_secret": client_secret, "redirect_uris": redirect_uris, **metadata}
        self._admin("PUT", f"/clients/{_segment(client_id)}", body)

    def set_access_token_ttl(self, seconds: int) -> None:
        """Lifetime of access tokens issued from now on (refresh included)."""
        self._admin("PUT", "/settings", {"access_token_ttl": seconds})

    def revoke_grants(self, email: str) -> int:
        """Revokes every grant of the account with all its tokens (the user removed the app
        at the provider); returns how many grants there were."""
        answer = self._admin("POST", f"/accounts/{_segment(email)}/revoke-grants", {})
        return int(answer["revoked_grants"])

    def issued(self, sub: str | None = None) -> list[IdpEvent]:
        """Tokens issued so far (kinds and grants, never values), of one subject if given."""
        log = self._admin("GET", "/log")
        events = [_event(entry, via="issued") for entry in log["issued"]]
        return [e for e in events if sub is None or e.sub == sub]

    def revocations(self, sub: str | None = None) -> list[IdpEvent]:
        """Tokens and grants revoked so far, at the revocation endpoint or by `revoke_grants`."""
        log = self._admin("GET", "/log")
        events = [_event(entry, via=str(entry["via"])) for entry in log["revocations"]]
        return [e for e in events if sub is None or e.sub == sub]

    def _admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}{path}",
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self._admin_token}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=_ADMIN_TIMEOUT) as response:  # noqa: S310
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = f"{exc.code} {exc.read()[:500]!r}"
            raise RuntimeError(f"oidc-provider admin {method} {path}: {detail}") from None


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _event(entry: dict[str, Any], via: str) -> IdpEvent:
    return IdpEvent(
        kind=str(entry["kind"]),
        via=via,
        sub=str(entry.get("sub") or ""),
        client_id=str(entry.get("client_id") or ""),
        grant_id=str(entry.get("grant_id") or ""),
    )


@dataclass(frozen=True)
class OidcIdpSetup:
    """The provider and a Dovecot (IMAPS + submissions, XOAUTH2/OAUTHBEARER only) whose
    oauth2 passdb introspects the provider's access tokens, logging in as their `email`."""

    idp: OidcIdp
    mail_host: str  # connect here
    tls_hostname: str  # the name in the Dovecot's certificate (trust the stack's ca_file)
    imaps_port: int
    submissions_port: int
    mail_log: Path  # the Dovecot's log: its logins ("Login: user=<...>, method=XOAUTH2")


# --- a browser signing in ---------------------------------------------------------------------


class SignInError(AssertionError):
    """The sign-in did not go as a person's browser would have it go."""


async def sign_in(
    browser: httpx.AsyncClient,
    url: str,
    account: str,
    *,
    stop_at: str,
    decision: str = "allow",
) -> str:
    """Walks a sign-in as a person's browser does and returns the URL it ends on.

    Starts at `url` (the provider's authorization URL, or a page that redirects there such as
    the broker's start URL), follows redirects, signs in as `account` on the provider's login
    page and answers its consent page (`decision` "allow" or "deny"), until a redirect leads to
    a URL starting with `stop_at` (the client's redirect URI: the callback with code, state and
    iss, or the error). `browser` keeps the cookies (the broker's binding, the provider's
    session), so a second sign-in with the same browser may skip the login page.
    """
    if decision not in ("allow", "deny"):
        raise ValueError("decision is 'allow' or 'deny'")
    response = await browser.get(url)
    for _ in range(_MAX_SIGN_IN_STEPS):
        if response.status_code in (302, 303):
            target = urljoin(str(response.url), response.headers["location"])
            if target.startswith(stop_at):
                return target
            response = await browser.get(target)
            continue
        if response.status_code != 200:
            raise SignInError(f"{response.url} answered {response.status_code}: {response.text}")
        step, action = _form(response.text, "login", "consent")
        form_url = urljoin(str(response.url), action)
        if step == "login":
            response = await browser.post(form_url, data={"login": account})
        else:
            if decision == "deny":
                form_url = urljoin(str(response.url), _form(response.text, "deny")[1])
            response = await browser.post(form_url, data={})
    raise SignInError(f"no redirect to {stop_at} after {_MAX_SIGN_IN_STEPS} steps")


def _form(page: str, *steps: str) -> tuple[str, str]:
    """The first form of the page whose data-step is one of `steps`: (step, action)."""
    for step in steps:
        marker = f'data-step="{step}"'
        if marker in page:
            before = page.split(marker, 1)[0]
            action = before.rsplit('action="', 1)[1].split('"', 1)[0]
            return step, action
    error = page.split('data-error="', 1)[1].split('"', 1)[0] if "data-error=" in page else ""
    raise SignInError(f"no {'/'.join(steps)} form on the page{': ' + error if error else ''}")

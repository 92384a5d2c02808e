"""Starts the mailbox-link services as real processes wired to a running stack.

`make run`, the end-to-end tests and the benchmark all use this, so what they exercise is what
an operator runs: `python -m <service>` configured only through MBL_* environment variables.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import secrets
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from localinfra.oauth_server import LocalOAuthServer
from localinfra.oidc_idp import OidcIdpSetup
from localinfra.ports import free_port
from localinfra.procs import ManagedProcess, wait_until_ready
from mailbox_link_shared.network_policy import DEFAULT_MAIL_PORTS

# The modules started, in start order; the registry first so link-api can reach it at once.
SERVICE_MODULES = ("registry", "imap_verifier", "oauth_broker", "link_api")
OAUTH_PROVIDERS = ("google", "microsoft", "yahoo", "aol")
# Not in the providers' discovery documents: where the broker reads which mailbox signed in.
_PROFILE_PATHS = {
    "google": "google/gmail/v1/users/me/profile",
    "microsoft": "microsoft/graph/v1.0/me",
}
READY_TIMEOUT = 60.0
# Where free_port() and the stack's mail servers land (net.ipv4.ip_local_port_range).
LINUX_EPHEMERAL_PORTS = "32768-60999"
# Rate limits for shared service sets (tests, benches, `make run`): the suite links the same
# few Dovecot logins on one host many times, wrong passwords included, so the production
# defaults (docs/adr/0015) would refuse it; tests of the limits pass their own.
GENEROUS_RATE_LIMITS = {
    "MBL_RATE_LIMIT_USER_LINKS_PER_HOUR": "100000",
    "MBL_RATE_LIMIT_ACCOUNT_LINKS_PER_HOUR": "100000",
    "MBL_RATE_LIMIT_LOGIN_ATTEMPTS_PER_HOUR": "100000",
    "MBL_RATE_LIMIT_HOST_LOGINS_PER_MINUTE": "100000",
    "MBL_RATE_LIMIT_FREE_FAILURES": "100000",
}


def _random_key() -> str:
    return base64.b64encode(os.urandom(32)).decode("ascii")


@dataclass
class ServiceConfig:
    """How to configure one set of services; every value becomes an MBL_* variable."""

    kafka_bootstrap: str
    mongodb_uri: str
    ca_file: str
    namespace: str = "mailbox-link"
    allowed_networks: tuple[str, ...] = ("127.0.0.0/8",)
    # The mail ports plus Linux's ephemeral range, where the stack's servers listen.
    allowed_ports: tuple[str, ...] = (*DEFAULT_MAIL_PORTS, LINUX_EPHEMERAL_PORTS)
    log_level: str = "INFO"
    caller_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    # The product's sign-in service: the one caller granted the registry's owner lookup.
    sign_in_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    # An operator's key (scope `operator`): the registry's plans and force-unlink.
    operator_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    # A second product key bound to these accounts only (MBL_SERVICE_KEY_ACCOUNTS).
    bound_caller_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    bound_caller_accounts: tuple[str, ...] = ("acme",)
    # Issue 17, access: an internal service that sends and reads as linked mailboxes (scope
    # `mailbox_access`, any account), e.g. the example mailer of the e2e tests.
    mailer_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    # The same, bound to other accounts only: it must get 404 for every mailbox of acme.
    bound_mailer_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    bound_mailer_accounts: tuple[str, ...] = ("globex",)
    # The registry's own key to the broker's token route (scope `token_issue`).
    registry_broker_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    encryption_key: str = field(default_factory=_random_key)
    # 0 picks a free port; `make run` asks for fixed ones so the README's commands work as typed.
    api_port: int = 0
    registry_port: int = 0
    # DNS servers for link-api's provider detection; empty: the system's.
    dns_servers: tuple[str, ...] = ()
    # The local OAuth server the broker signs in at (LocalOAuthServer.base_url), and the
    # OAuth Dovecot it checks mailboxes on; empty: the broker has no provider configured.
    oauth_server_url: str = ""
    oauth_mail_host: str = "localhost"
    oauth_imaps_port: int = 0
    oauth_submissions_port: int = 0
    oauth_client_id: str = field(default_factory=lambda: f"mailbox-link-{secrets.token_hex(4)}")
    oauth_client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    broker_port: int = 0
    # The stack's MX-routing relay (Endpoints.relay_port) the imap-verifier mails ownership
    # proofs through; 0: not set.
    ownership_relay_port: int = 0
    # Further MBL_* settings, e.g. a short reservation expiry for a test.
    extra_env: dict[str, str] = field(default_factory=dict)
    # MBL_RATE_LIMIT_* settings; {} runs with the services' (production) defaults.
    rate_limits: dict[str, str] = field(default_factory=lambda: dict(GENEROUS_RATE_LIMITS))


@dataclass
class RunningServices:
    """Where the started services answer, and their log files."""

    api_url: str
    registry_url: str
    broker_url: str
    caller_token: str
    sign_in_token: str
    logs: dict[str, Path]
    processes: list[ManagedProcess]
    operator_token: str = ""
    registry_token: str = ""  # link-api's own key to the registry (scope `registry`)
    bound_caller_token: str = ""  # a product key bound to ServiceConfig.bound_caller_accounts
    mailer_token: str = ""  # an internal service's key to the registry's mailbox access
    bound_mailer_token: str = ""  # the same, bound to ServiceConfig.bound_mailer_accounts

    def stop(self) -> None:
        """Stops every service (idempotent)."""
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.stop()

    def kill(self, name: str) -> None:
        """SIGKILLs one service process (by its name in `logs`, e.g. "link_api"), as a crash
        would, and reaps it."""
        self._process(name).kill()

    def restart(
        self, name: str, env: Mapping[str, str | None] | None = None, wait_for: str = "/readyz"
    ) -> None:
        """Starts one service process again (after `kill`) with the same command, port and log,
        its environment changed by `env` (None removes a variable), and waits until `wait_for`
        answers 200 (/readyz: it can do its job; /livez: it runs, e.g. during an outage)."""
        old = self._process(name)
        old.stop()
        changed = {**(old.env or {}), **{k: v for k, v in (env or {}).items() if v is not None}}
        for removed in [k for k, v in (env or {}).items() if v is None]:
            changed.pop(removed, None)
        process = ManagedProcess(name, old.argv, old.log_file, cwd=old.cwd, env=changed)
        process.start()
        self.processes[self.processes.index(old)] = process
        url = f"http://127.0.0.1:{changed['MBL_HTTP_PORT']}{wait_for}"
        wait_until_ready(process, functools.partial(_answers, url), READY_TIMEOUT, url)

    def _process(self, name: str) -> ManagedProcess:
        return next(process for process in self.processes if process.name == name)


def start_services(
    config: ServiceConfig,
    workdir: Path,
    modules: tuple[str, ...] = SERVICE_MODULES,
    replicas: Mapping[str, int] | None = None,
) -> RunningServices:
    """Starts the services (by default all, one process each; `replicas` asks for more of
    some, in the same consumer group) and waits until each is ready (/readyz: Kafka and
    MongoDB answer, its consumer joined, its start-up finished)."""
    fixed = {
        "link_api": config.api_port,
        "registry": config.registry_port,
        "oauth_broker": config.broker_port,
    }
    ports = {module: fixed.get(module) or free_port() for module in SERVICE_MODULES}
    internal_token = secrets.token_urlsafe(32)
    base_env = {
        **_environment(config, internal_token, registry_port=ports["registry"]),
        **_broker_environment(config, ports["oauth_broker"]),
        **_access_environment(config, internal_token, broker_port=ports["oauth_broker"]),
        **config.rate_limits,
        **config.extra_env,
    }
    processes: list[ManagedProcess] = []
    logs: dict[str, Path] = {}
    urls: list[str] = []
    try:
        for module in modules:
            for replica in range(1, (replicas or {}).get(module, 1) + 1):
                name = module if replica == 1 else f"{module}-{replica}"
                port = ports[module] if replica == 1 else free_port()
                env = {**base_env, "MBL_HTTP_PORT": str(port)}
                if module == "imap_verifier" and config.ownership_relay_port:
                    env["MBL_OWNERSHIP_RELAY_HOST"] = "127.0.0.1"
                    env["MBL_OWNERSHIP_RELAY_PORT"] = str(config.ownership_relay_port)
                logs[name] = workdir / f"{name}.log"
                process = ManagedProcess(name, [sys.executable, "-m", module], logs[name], env=env)
                process.start()
                processes.append(process)
                urls.append(f"http://127.0.0.1:{port}/readyz")
        for process, url in zip(processes, urls, strict=True):
            wait_until_ready(process, functools.partial(_answers, url), READY_TIMEOUT, url)
    except BaseException:
        for process in processes:
            process.stop()
        raise
    return RunningServices(
        api_url=f"http://127.0.0.1:{ports['link_api']}",
        registry_url=f"http://127.0.0.1:{ports['registry']}",
        broker_url=f"http://127.0.0.1:{ports['oauth_broker']}",
        caller_token=config.caller_token,
        sign_in_token=config.sign_in_token,
        logs=logs,
        processes=processes,
        operator_token=config.operator_token,
        registry_token=internal_token,
        bound_caller_token=config.bound_caller_token,
        mailer_token=config.mailer_token,
        bound_mailer_token=config.bound_mailer_token,
    )


def _environment(config: ServiceConfig, internal_token: str, registry_port: int) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MBL_")}
    return {
        **inherited,
        "MBL_KAFKA_BOOTSTRAP_SERVERS": config.kafka_bootstrap,
        "MBL_MONGODB_URI": config.mongodb_uri,
        "MBL_NAMESPACE": config.namespace,
        "MBL_ENCRYPTION_KEYS": json.dumps({"k1": config.encryption_key}),
        "MBL_ENCRYPTION_KEY_ID": "k1",
        # The product's backend calls with caller_token; link-api calls the registry with its own.
        "MBL_SERVICE_KEYS": json.dumps(
            {
                "product": config.caller_token,
                "link-api": internal_token,
                "sign-in": config.sign_in_token,
                "operator": config.operator_token,
                "product-bound": config.bound_caller_token,
            }
        ),
        # Each key only what its caller does (docs/adr/0017); one map for every service.
        "MBL_SERVICE_KEY_SCOPES": json.dumps(
            {
                "product": ["links", "sign_in_confirm"],
                "link-api": ["registry"],
                "sign-in": ["owner_lookup"],
                "operator": ["operator"],
                "product-bound": ["links"],
            }
        ),
        "MBL_SERVICE_KEY_ACCOUNTS": json.dumps(
            {"product-bound": list(config.bound_caller_accounts)}
        ),
        "MBL_REGISTRY_URL": f"http://127.0.0.1:{registry_port}",
        "MBL_REGISTRY_TOKEN": internal_token,
        "MBL_VERIFIER_CA_FILE": config.ca_file,
        "MBL_VERIFIER_ALLOWED_NETWORKS": json.dumps(list(config.allowed_networks)),
        "MBL_VERIFIER_ALLOWED_PORTS": json.dumps(list(config.allowed_ports)),
        "MBL_LOG_LEVEL": config.log_level,
        **({"MBL_DNS_SERVERS": json.dumps(list(config.dns_servers))} if config.dns_servers else {}),
        "PYTHONUNBUFFERED": "1",
    }


def _access_environment(
    config: ServiceConfig, internal_token: str, broker_port: int
) -> dict[str, str]:
    """Issue 17, access (docs/adr/0023): the registry asks the broker for OAuth tokens with a
    key of its own (scope `token_issue`); `mailer` (scope `mailbox_access`) may ask the
    registry for any account's mailbox, `mailer-bound` only for bound_mailer_accounts'. Adds
    the keys to the one key map every service reads."""
    base = _environment(config, internal_token, registry_port=0)
    registry_token = config.registry_broker_token
    keys = {**json.loads(base["MBL_SERVICE_KEYS"]), "registry": registry_token,
            "mailer": config.mailer_token, "mailer-bound": config.bound_mailer_token}  # fmt: skip
    scopes = {**json.loads(base["MBL_SERVICE_KEY_SCOPES"]), "registry": ["token_issue"],
              "mailer": ["mailbox_access"], "mailer-bound": ["mailbox_access"]}  # fmt: skip
    accounts = {**json.loads(base["MBL_SERVICE_KEY_ACCOUNTS"]),
                "mailer-bound": list(config.bound_mailer_accounts)}  # fmt: skip
    return {
        "MBL_SERVICE_KEYS": json.dumps(keys),
        "MBL_SERVICE_KEY_SCOPES": json.dumps(scopes),
        "MBL_SERVICE_KEY_ACCOUNTS": json.dumps(accounts),
        "MBL_BROKER_URL": f"http://127.0.0.1:{broker_port}",
        "MBL_BROKER_TOKEN": registry_token,
    }


def oauth_redirect_uri(broker_port: int) -> str:
    """Returns the broker's callback URL, to register with the OAuth server."""
    return f"http://127.0.0.1:{broker_port}/v1/oauth/callback"


def register_broker_app(
    server: LocalOAuthServer, config: ServiceConfig, running: RunningServices
) -> None:
    """Registers the broker's app (client id, secret, callback) at the local OAuth server, as
    an operator registers it with Google or Microsoft; do it once the services run."""
    callback = f"{running.broker_url}/v1/oauth/callback"
    server.register_client(config.oauth_client_id, config.oauth_client_secret, [callback])


def oidc_provider_environment(
    name: str,
    setup: OidcIdpSetup,
    client_id: str,
    client_secret: str,
    domains: Sequence[str],
    display_name: str = "Corp sign-in",
) -> dict[str, str]:
    """MBL_OIDC_PROVIDERS naming the local OpenID provider as the generic OIDC provider `name`
    (deploy/local/README.md), its mailboxes on the Dovecot that accepts its tokens; the secret
    goes alone in MBL_OIDC_PROVIDERS__<NAME>__CLIENT_SECRET, as operators are advised to."""
    server = {"host": setup.tls_hostname, "security": "ssl"}
    settings = {
        "display_name": display_name,
        "issuer": setup.idp.issuer,
        "client_id": client_id,
        "scopes": ["openid", "email", "offline_access"],
        "domains": list(domains),
        "imap": {**server, "port": setup.imaps_port},
        "smtp": {**server, "port": setup.submissions_port},
        "sasl_mechanism": "xoauth2",
    }
    return {
        "MBL_OIDC_PROVIDERS": json.dumps({name: settings}),
        f"MBL_OIDC_PROVIDERS__{name.upper()}__CLIENT_SECRET": client_secret,
    }


def _broker_environment(config: ServiceConfig, broker_port: int) -> dict[str, str]:
    """The broker's app at each provider of the local OAuth server, and the OAuth Dovecot."""
    env = {
        "MBL_OAUTH_REDIRECT_URI": oauth_redirect_uri(broker_port),
        # Only the product's backend confirms sign-ins (ADR 0014): MBL_SERVICE_KEY_SCOPES
        # grants `sign_in_confirm` to its key alone.
    }
    if not config.oauth_server_url:
        return env
    env["MBL_OAUTH_CA_FILE"] = config.ca_file
    for provider in OAUTH_PROVIDERS:
        prefix = f"MBL_OAUTH_{provider.upper()}__"
        base = f"{config.oauth_server_url}/{provider}"
        env[f"{prefix}CLIENT_ID"] = config.oauth_client_id
        env[f"{prefix}CLIENT_SECRET"] = config.oauth_client_secret
        env[f"{prefix}DISCOVERY_URL"] = f"{base}/.well-known/openid-configuration"
        if provider in _PROFILE_PATHS:
            env[f"{prefix}PROFILE_URL"] = f"{config.oauth_server_url}/{_PROFILE_PATHS[provider]}"
        if config.oauth_imaps_port:
            env[f"{prefix}IMAP"] = json.dumps(
                {"host": config.oauth_mail_host, "port": config.oauth_imaps_port, "security": "ssl"}
            )
            env[f"{prefix}SMTP"] = json.dumps(
                {"host": config.oauth_mail_host, "port": config.oauth_submissions_port,
                 "security": "ssl"}
            )  # fmt: skip
    return env


def _answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own loopback URL
        return bool(200 <= response.status < 300)

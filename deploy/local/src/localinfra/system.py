"""`make run`: the whole system on this machine, with a demo mailbox ready to link."""

from __future__ import annotations

import json
import secrets
import threading
from pathlib import Path

from localinfra.oidc_idp import awkward_secret
from localinfra.ports import port_is_open
from localinfra.services import (
    ServiceConfig,
    oidc_provider_environment,
    register_broker_app,
    start_services,
)
from localinfra.stack import DISCOVERABLE_DOMAIN, LocalStack

DEMO_ADDRESS = "alice@example.org"
DISCOVERABLE_DEMO = f"erin@{DISCOVERABLE_DOMAIN}"
# Accounts at the local OAuth server's Google and Microsoft, linked by signing in.
OAUTH_DEMOS = {"google": "dana@gmail.com", "microsoft": "omar@outlook.com"}
# The generic OpenID Connect provider "corp": the independent local provider (oidc_idp.py).
OIDC_PROVIDER = "corp"
OIDC_CLIENT_ID = "mailbox-link"
OIDC_DEMO = "carol@corp.test"


def run_system(state_dir: Path, ports: tuple[int, int, int], stopping: threading.Event) -> None:
    """Starts infrastructure and services, writes the demo files, and runs until `stopping`.

    `ports` are link-api's, the registry's and the OAuth broker's (another is picked if taken).
    """
    api_port, registry_port, broker_port = ports
    state_dir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(dns_forwarding=True)
    demo_password = secrets.token_urlsafe(12)
    stack.add_mail_user(DEMO_ADDRESS, demo_password)
    # A second demo mailbox whose servers link-api finds by itself (SRV records).
    stack.add_mail_user(DISCOVERABLE_DEMO, demo_password)
    try:
        endpoints = stack.start()
        corp = stack.oidc_idp()
        corp.idp.add_account(OIDC_DEMO)
        corp_secret = awkward_secret()
        config = ServiceConfig(
            kafka_bootstrap=endpoints.kafka_bootstrap,
            mongodb_uri=endpoints.mongodb_uri,
            ca_file=endpoints.ca_file,
            dns_servers=(endpoints.dns_server,),
            api_port=_port_if_free(api_port),
            registry_port=_port_if_free(registry_port),
            broker_port=_port_if_free(broker_port),
            oauth_server_url=endpoints.oauth_server_url,
            oauth_mail_host=endpoints.tls_hostname,
            oauth_imaps_port=endpoints.oauth_imaps_port,
            oauth_submissions_port=endpoints.oauth_submissions_port,
            ownership_relay_port=endpoints.relay_port,
            # A person trying the system meets the production limits (docs/adr/0015).
            rate_limits={},
            extra_env=oidc_provider_environment(
                OIDC_PROVIDER, corp, OIDC_CLIENT_ID, corp_secret, [OIDC_DEMO.split("@")[1]]
            ),
        )
        services = start_services(config, state_dir / "logs")
        try:
            register_broker_app(stack.oauth_server, config, services)
            callback = f"{services.broker_url}/v1/oauth/callback"
            corp.idp.register_client(OIDC_CLIENT_ID, corp_secret, [callback])
            (state_dir / "demo-oidc-link.json").write_text(
                json.dumps({"email": OIDC_DEMO, "terms_accepted": True}, indent=2)
            )
            for provider, address in OAUTH_DEMOS.items():
                stack.oauth_server.add_user(provider, address)
            (state_dir / "demo-oauth-link.json").write_text(
                json.dumps({"email": OAUTH_DEMOS["google"], "terms_accepted": True}, indent=2)
            )
            (state_dir / "token").write_text(services.caller_token)
            (state_dir / "operator-token").write_text(services.operator_token)
            # Issue 17: an internal service's key to the registry's mailbox access.
            (state_dir / "mailer-token").write_text(services.mailer_token)
            (state_dir / "endpoints.json").write_text(endpoints.to_json())
            demo = _demo_request(
                endpoints.tls_hostname,
                endpoints.imaps_port,
                endpoints.submissions_port,
                demo_password,
            )
            (state_dir / "demo-link.json").write_text(json.dumps(demo, indent=2))
            discoverable = {"email": DISCOVERABLE_DEMO, "terms_accepted": True}
            discoverable["password"] = demo_password
            (state_dir / "demo-detected-link.json").write_text(json.dumps(discoverable, indent=2))
            print(
                _instructions(
                    services.api_url, services.registry_url, state_dir, endpoints.started_in_seconds
                )
                + _oauth_instructions(services.api_url, state_dir, endpoints.ca_file)
                + _oidc_instructions(services.api_url, state_dir, corp.idp.issuer),
                flush=True,
            )
            stopping.wait()
        finally:
            services.stop()
    finally:
        stack.stop()


def _port_if_free(port: int) -> int:
    return 0 if port_is_open("127.0.0.1", port) else port


def _demo_request(
    host: str, imaps_port: int, submissions_port: int, password: str
) -> dict[str, object]:
    return {
        "email": DEMO_ADDRESS,
        "terms_accepted": True,
        "imap": {"host": host, "port": imaps_port, "security": "ssl", "password": password},
        "smtp": {"host": host, "port": submissions_port, "security": "ssl"},
    }


def _instructions(api_url: str, registry_url: str, state_dir: Path, infra_seconds: float) -> str:
    return f"""
mailbox-link is up (infrastructure started in {infra_seconds:.1f} s).
  link-api:  {api_url}
  registry:  {registry_url}
  token:     {state_dir}/token   (send as 'Authorization: Bearer ...'; link-api's routes)
  operator:  {state_dir}/operator-token   (the registry's plans and force-unlink)
  mailer:    {state_dir}/mailer-token   (scope mailbox_access: the registry's .../access)
  demo body: {state_dir}/demo-link.json   (links the local Dovecot mailbox {DEMO_ADDRESS})
  detected:  {state_dir}/demo-detected-link.json   ({DISCOVERABLE_DEMO}: address and password only)
  logs:      {state_dir}/logs/

Try it:
  TOKEN=$(cat {state_dir}/token)
  curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
       -d @{state_dir}/demo-link.json {api_url}/v1/accounts/acme/users/u1/links
  curl -s -H "Authorization: Bearer $TOKEN" {api_url}/v1/accounts/acme/users/u1/mailboxes
"""


def _oauth_instructions(api_url: str, state_dir: Path, ca_file: str) -> str:
    google, microsoft = OAUTH_DEMOS["google"], OAUTH_DEMOS["microsoft"]
    return f"""
Link by signing in (the local OAuth server plays Google for {google}, Microsoft for {microsoft}):
  curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
       -d @{state_dir}/demo-oauth-link.json {api_url}/v1/accounts/acme/users/u2/links
  then GET the returned status_url: "authorization".url is the sign-in page. Open it in a
  browser (its certificate is signed by {ca_file}), press Allow, and the status turns linked.
"""


def _oidc_instructions(api_url: str, state_dir: Path, issuer: str) -> str:
    return f"""
Link through the generic OpenID Connect provider "{OIDC_PROVIDER}" (panva's oidc-provider at
{issuer}; its mailboxes on a Dovecot that accepts its tokens over XOAUTH2):
  curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
       -d @{state_dir}/demo-oidc-link.json {api_url}/v1/accounts/acme/users/u3/links
  then open the "authorization".url, sign in as {OIDC_DEMO} (no password) and press Allow.

Ctrl-C stops everything.
"""

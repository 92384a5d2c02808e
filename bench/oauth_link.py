"""`make bench`: where the time of an OAuth link goes, against the local authorization server.

Starts the real stack and services, then for each of Google and Microsoft links mailboxes one
after another through the whole flow (POST, start URL, consent, callback, confirm, linked) and times
three stretches: the POST until link-api shows the sign-in URL (registry reservation, broker
offer), the callback request (code exchange, id token, identity, XOAUTH2 IMAP+SMTP checks,
publish), and the callback's end until link-api records `linked`. The broker's XOAUTH2 check is
also timed bare (the shared probes called directly, IMAP and SMTP concurrently) for the ratio.
Figures go to bench/results/oauth-link.json.
"""

import argparse
import asyncio
import json
import secrets
import ssl
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from localinfra.oauth_server import consent_form
from localinfra.services import ServiceConfig, register_broker_app, start_services
from localinfra.stack import Endpoints, LocalStack
from mailbox_link_contract.values import ConnectionSecurity
from mailbox_link_shared.mail_probes import Endpoint, probe_imap_xoauth2, probe_smtp_xoauth2

RESULTS = Path(__file__).resolve().parent / "results"
DOMAINS = {"google": "gmail.com", "microsoft": "outlook.com"}
TIMEOUT = 10.0


async def _wait_for(api: httpx.AsyncClient, status_url: str, wanted: str) -> dict[str, Any]:
    while True:
        link: dict[str, Any] = (await api.get(status_url)).json()
        if link["status"] == wanted:
            return link
        if link["status"] == "failed":
            raise RuntimeError(f"bench link failed: {link['failure']}")
        await asyncio.sleep(0.02)


def _stored_at(link: dict[str, Any]) -> float:
    # link-api's own timestamp of the status, so polling does not blur the figure.
    return datetime.fromisoformat(link["updated_at"]).timestamp()


async def one_link(
    api: httpx.AsyncClient, browser: httpx.AsyncClient, address: str
) -> dict[str, float]:
    """Links one mailbox through the sign-in; returns the three stretches in seconds."""
    started = time.time()
    body = {"email": address, "terms_accepted": True}
    accepted = (await api.post(f"/v1/accounts/bench/users/u-{address}/links", json=body)).json()
    offered = await _wait_for(api, accepted["status_url"], "authorization_required")
    # The broker's start URL binds this browser (cookie), then redirects to the provider.
    started_sign_in = await browser.get(offered["authorization"]["url"])
    if started_sign_in.status_code != 303:
        raise RuntimeError(f"start URL answered {started_sign_in.status_code}")
    url = started_sign_in.headers["location"]
    page = await browser.get(url)
    answer = await browser.post(url, data=consent_form(page.text, address))
    callback_began = time.time()
    callback = await browser.get(answer.headers["location"])
    callback_ended = time.time()
    if callback.status_code != 200:
        raise RuntimeError(f"callback answered {callback.status_code}")
    # The product's backend confirms the one-time code for its signed-in user (ADR 0014).
    code = callback.text.split('data-confirmation="')[1].split('"')[0]
    broker = f"{callback.url.scheme}://{callback.url.netloc.decode()}"
    confirmed = await api.post(
        f"{broker}/v1/accounts/bench/users/u-{address}/sign-ins/confirm", json={"code": code}
    )
    if confirmed.status_code != 200:
        raise RuntimeError(f"confirm answered {confirmed.status_code}: {confirmed.text}")
    linked = await _wait_for(api, accepted["status_url"], "linked")
    return {
        "to_sign_in_url": _stored_at(offered) - started,
        "callback": callback_ended - callback_began,
        "callback_to_linked": _stored_at(linked) - callback_ended,
    }


async def bare_xoauth2(infra: Endpoints, address: str, token: str) -> float:
    """The broker's mailbox check alone: XOAUTH2 IMAP and SMTP logins, concurrently."""
    tls = ssl.create_default_context(cafile=infra.ca_file)
    ssl_mode = ConnectionSecurity.SSL
    imap = Endpoint(infra.tls_hostname, "127.0.0.1", infra.oauth_imaps_port, ssl_mode)
    smtp = Endpoint(infra.tls_hostname, "127.0.0.1", infra.oauth_submissions_port, ssl_mode)
    began = time.perf_counter()
    await asyncio.gather(
        probe_imap_xoauth2(imap, address, token, tls, TIMEOUT),
        probe_smtp_xoauth2(smtp, address, token, tls, TIMEOUT),
    )
    return time.perf_counter() - began


async def measure(
    stack: LocalStack, infra: Endpoints, api_url: str, token: str, links: int, warmup: int
) -> dict[str, dict[str, list[float]]]:
    headers = {"Authorization": f"Bearer {token}"}
    tls = ssl.create_default_context(cafile=infra.ca_file)
    figures: dict[str, dict[str, list[float]]] = {}
    async with (
        httpx.AsyncClient(base_url=api_url, headers=headers, timeout=TIMEOUT) as api,
        httpx.AsyncClient(verify=tls, timeout=TIMEOUT) as browser,
    ):
        for provider, domain in DOMAINS.items():
            samples: dict[str, list[float]] = {}
            for i in range(links + warmup):
                address = f"bench-{i}-{secrets.token_hex(3)}@{domain}"
                stack.oauth_server.add_user(provider, address)
                stretches = await one_link(api, browser, address)
                bare_token = secrets.token_urlsafe(24)
                stack.grant_oauth_token(bare_token, address)
                stretches["bare_xoauth2_check"] = await bare_xoauth2(infra, address, bare_token)
                if i >= warmup:
                    for name, seconds in stretches.items():
                        samples.setdefault(name, []).append(seconds)
            figures[provider] = samples
    return figures


def summary(figures: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for provider, samples in figures.items():
        med = {name: statistics.median(values) for name, values in samples.items()}
        result[provider] = {
            "links": len(samples["callback"]),
            **{f"median_{name}_ms": round(seconds * 1000, 1) for name, seconds in med.items()},
            "ratio_callback_to_bare_check": round(med["callback"] / med["bare_xoauth2_check"], 2),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--links", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    stack = LocalStack()
    try:
        infra = stack.start()
        config = ServiceConfig(
            kafka_bootstrap=infra.kafka_bootstrap,
            mongodb_uri=infra.mongodb_uri,
            ca_file=infra.ca_file,
            namespace="bench-oauth",
            log_level="WARNING",
            oauth_server_url=infra.oauth_server_url,
            oauth_mail_host=infra.tls_hostname,
            oauth_imaps_port=infra.oauth_imaps_port,
            oauth_submissions_port=infra.oauth_submissions_port,
        )
        with tempfile.TemporaryDirectory(prefix="mbl-bench-") as logs:
            services = start_services(config, Path(logs))
            register_broker_app(stack.oauth_server, config, services)
            try:
                run = measure(
                    stack, infra, services.api_url, services.caller_token, args.links, args.warmup
                )
                figures = asyncio.run(run)
            finally:
                services.stop()
    finally:
        stack.stop()
    result = summary(figures)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "oauth-link.json").write_text(
        json.dumps({"summary": result, "samples_s": figures}, indent=2)
    )
    print(json.dumps(result, indent=2))
    print(f"written to {RESULTS / 'oauth-link.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()

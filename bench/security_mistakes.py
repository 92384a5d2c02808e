"""`make bench`: how long a user's security-setting mistake takes to be reported, end to end.

Starts the real stack and services, then links mailboxes of the stack's Dovecot through the
whole path (HTTP -> Kafka -> imap-verifier -> registry -> link-api) with one mistake each:
STARTTLS chosen on an implicit-TLS port (IMAP, SMTP), SSL/TLS chosen on a STARTTLS port (IMAP,
SMTP), a wrong IMAP password together with SMTP STARTTLS on the implicit-TLS port, and, for
scale, every setting right. Each link is timed from just before the POST to the `updated_at`
link-api stored with the link's final status; the final code(s) are recorded beside the
expected ones (a wrong outcome is counted in the figures, never dropped). The cases take turns
(one link of each per round), so machine noise does not favour any of them, and every link is
a fresh Dovecot user and a fresh product user, so no rate limit or back-off takes part.

The imap-verifier's CPU (utime+stime from /proc/<pid>/stat) is read around each link and
summed per case, with its idle rate measured beforehand. Figures go to
bench/results/security-mistakes.json.
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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from os import sysconf
from pathlib import Path
from typing import Any

import httpx
from link_throughput import read_proc  # bench/, beside this file

from localinfra.services import RunningServices, ServiceConfig, start_services
from localinfra.stack import Endpoints, LocalStack
from mailbox_link_contract.values import ConnectionSecurity
from mailbox_link_shared.mail_probes import (
    PLAINTEXT_GREETING_WAIT,
    Endpoint,
    probe_imap,
    probe_smtp,
)

RESULTS = Path(__file__).resolve().parent / "results"
FIRST_LOOK_S = 0.15  # polls start after the usual link time and stay gentle: 2 shared cores
POLL_S = 0.05
LINK_TIMEOUT_S = 40.0  # beyond the verifier's 15 s deadline: a link that never ends is counted
PROBE_TIMEOUT = 10.0
IDLE_S = 5.0
HZ = sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class MailUser:
    address: str
    password: str


# How a case changes the correct body (IMAP and SMTP over implicit TLS) to make its mistake.
Mistake = Callable[[dict[str, Any], Endpoints], None]


def imap_starttls_on_implicit_tls(body: dict[str, Any], infra: Endpoints) -> None:
    body["imap"].update(port=infra.imaps_port, security="starttls")


def smtp_starttls_on_implicit_tls(body: dict[str, Any], infra: Endpoints) -> None:
    body["smtp"].update(port=infra.submissions_port, security="starttls")


def imap_ssl_on_starttls(body: dict[str, Any], infra: Endpoints) -> None:
    body["imap"].update(port=infra.imap_starttls_port, security="ssl")


def smtp_ssl_on_starttls(body: dict[str, Any], infra: Endpoints) -> None:
    body["smtp"].update(port=infra.submission_starttls_port, security="ssl")


def wrong_imap_password_and_smtp_starttls_on_implicit_tls(
    body: dict[str, Any], infra: Endpoints
) -> None:
    body["imap"]["password"] = f"not-the-password-{secrets.token_hex(4)}"
    smtp_starttls_on_implicit_tls(body, infra)


def nothing_wrong(body: dict[str, Any], infra: Endpoints) -> None:
    pass


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    mistake: Mistake
    expected: str  # as `outcome_text` writes an outcome


CASES = (
    Case(
        "imap_starttls_on_implicit_tls_port",
        "IMAP STARTTLS on the implicit-TLS port (993-like)",
        imap_starttls_on_implicit_tls,
        "failed security_mismatch",
    ),
    Case(
        "smtp_starttls_on_implicit_tls_port",
        "SMTP STARTTLS on the implicit-TLS port (465-like)",
        smtp_starttls_on_implicit_tls,
        "failed security_mismatch",
    ),
    Case(
        "imap_ssl_on_starttls_port",
        "IMAP SSL/TLS on the STARTTLS port (143-like)",
        imap_ssl_on_starttls,
        "failed security_mismatch",
    ),
    Case(
        "smtp_ssl_on_starttls_port",
        "SMTP SSL/TLS on the STARTTLS port (587-like)",
        smtp_ssl_on_starttls,
        "failed security_mismatch",
    ),
    Case(
        "wrong_imap_password_and_smtp_starttls_on_implicit_tls_port",
        "wrong IMAP password + SMTP STARTTLS on the implicit-TLS port",
        wrong_imap_password_and_smtp_starttls_on_implicit_tls,
        "failed imap_auth_failed + security_mismatch",
    ),
    Case("all_settings_right", "every setting right (for scale)", nothing_wrong, "linked"),
)


def correct_body(infra: Endpoints, user: MailUser) -> dict[str, Any]:
    """IMAP and SMTP of the stack's Dovecot over implicit TLS: nothing wrong."""
    return {
        "email": user.address,
        "terms_accepted": True,
        "imap": {
            "host": infra.tls_hostname,
            "port": infra.imaps_port,
            "security": "ssl",
            "password": user.password,
        },
        "smtp": {"host": infra.tls_hostname, "port": infra.submissions_port, "security": "ssl"},
    }


def outcome_text(link: dict[str, Any]) -> str:
    """`linked`, or `failed <code>` with ` + <code>` for each of the other failures."""
    if link["status"] != "failed":
        return str(link["status"])
    failure = link["failure"]
    codes = [failure["code"], *(other["code"] for other in failure.get("other_failures", []))]
    return "failed " + " + ".join(codes)


@dataclass
class Sample:
    seconds: float
    outcome: str
    verifier_cpu_s: float
    detail: str = ""  # the failure's detail when the outcome was not the expected one


@dataclass
class CaseRun:
    case: Case
    samples: list[Sample] = field(default_factory=list)


def verifier_cpu_s(pid: int) -> float:
    proc = read_proc(pid)
    if proc is None:
        raise RuntimeError("the imap-verifier process is gone")
    return (proc.own + proc.reaped) / HZ


async def one_link(
    api: httpx.AsyncClient, body: dict[str, Any], verifier: int
) -> tuple[float, dict[str, Any], float]:
    """Posts one link and polls it to its end; returns seconds from just before the POST to
    link-api's `updated_at` (or to the bench's give-up), the link, and the verifier's CPU
    seconds meanwhile."""
    user = f"sec-{secrets.token_hex(6)}"
    cpu_before = verifier_cpu_s(verifier)
    started = time.time()
    response = await api.post(f"/v1/accounts/bench/users/{user}/links", json=body)
    if response.status_code != 202:
        refused = {"status": f"http_{response.status_code}", "body": response.text[:500]}
        return time.time() - started, refused, verifier_cpu_s(verifier) - cpu_before
    status_url = response.json()["status_url"]
    await asyncio.sleep(FIRST_LOOK_S)
    while time.time() - started < LINK_TIMEOUT_S:
        link: dict[str, Any] = (await api.get(status_url)).json()
        if link["status"] in ("linked", "failed"):
            ended = datetime.fromisoformat(link["updated_at"]).timestamp()
            return ended - started, link, verifier_cpu_s(verifier) - cpu_before
        await asyncio.sleep(POLL_S)
    unfinished = {"status": "no_outcome_within_bench_timeout"}
    return time.time() - started, unfinished, verifier_cpu_s(verifier) - cpu_before


async def log_in_once(infra: Endpoints, users: list[MailUser]) -> None:
    """Dovecot creates a mailbox on first login, which real mailboxes never pay: log in to each
    once (IMAP and SMTP, right settings) before measuring."""
    tls = ssl.create_default_context(cafile=infra.ca_file)
    imap = Endpoint(infra.tls_hostname, infra.mail_host, infra.imaps_port, ConnectionSecurity.SSL)
    smtp = Endpoint(
        infra.tls_hostname, infra.mail_host, infra.submissions_port, ConnectionSecurity.SSL
    )
    for user in users:
        await asyncio.gather(
            probe_imap(imap, user.address, user.password, tls, PROBE_TIMEOUT),
            probe_smtp(smtp, user.address, user.password, tls, PROBE_TIMEOUT),
        )


async def measure(
    infra: Endpoints,
    services: RunningServices,
    users: dict[str, list[MailUser]],
    warmup: int,
) -> tuple[list[CaseRun], float]:
    """Returns each case's samples (round-robin, warm-ups dropped) and the verifier's idle CPU
    in seconds per second."""
    verifier = next(p.pid for p in services.processes if p.name == "imap_verifier")
    if verifier is None:
        raise RuntimeError("the imap-verifier did not start")
    await log_in_once(infra, [user for pool in users.values() for user in pool])
    cpu_before, idle_started = verifier_cpu_s(verifier), time.monotonic()
    await asyncio.sleep(IDLE_S)
    idle_rate = (verifier_cpu_s(verifier) - cpu_before) / (time.monotonic() - idle_started)
    runs = [CaseRun(case) for case in CASES]
    headers = {"Authorization": f"Bearer {services.caller_token}"}
    rounds = len(users[CASES[0].name])
    async with httpx.AsyncClient(base_url=services.api_url, headers=headers, timeout=10) as api:
        for index in range(rounds):
            for run in runs:
                user = users[run.case.name][index]
                body = correct_body(infra, user)
                run.case.mistake(body, infra)
                seconds, link, cpu = await one_link(api, body, verifier)
                outcome = outcome_text(link)
                sample = Sample(seconds, outcome, cpu)
                if outcome != run.case.expected:
                    sample.detail = json.dumps(link.get("failure") or link)[:1000]
                label = "warm-up" if index < warmup else f"{index - warmup + 1}"
                print(
                    f"{run.case.name} [{label}]: {outcome} in {seconds * 1000:.0f} ms",
                    file=sys.stderr,
                )
                if index >= warmup:
                    run.samples.append(sample)
    return runs, idle_rate


def case_figures(run: CaseRun, idle_rate: float) -> dict[str, Any]:
    seconds = [s.seconds for s in run.samples]
    cpu = [s.verifier_cpu_s for s in run.samples]
    # The verifier's CPU while each link ran, less what it burns idle (its consumers' polling)
    # over the same time: an estimate of what the check itself cost.
    net = [s.verifier_cpu_s - idle_rate * s.seconds for s in run.samples]
    return {
        "what": run.case.what,
        "expected_outcome": run.case.expected,
        "outcomes": dict(Counter(s.outcome for s in run.samples)),
        "all_as_expected": all(s.outcome == run.case.expected for s in run.samples),
        "links": len(seconds),
        "median_ms": round(statistics.median(seconds) * 1000, 1),
        "min_ms": round(min(seconds) * 1000, 1),
        "max_ms": round(max(seconds) * 1000, 1),
        "samples_ms": [round(v * 1000, 1) for v in seconds],
        "verifier_cpu_ms_per_link": round(statistics.mean(cpu) * 1000, 1),
        "verifier_cpu_ms_per_link_above_idle": round(statistics.mean(net) * 1000, 1),
        "unexpected": [{"outcome": s.outcome, "detail": s.detail} for s in run.samples if s.detail],
    }


def summary(runs: list[CaseRun], idle_rate: float, started_in: float) -> dict[str, Any]:
    cases = {run.case.name: case_figures(run, idle_rate) for run in runs}
    scale = cases["all_settings_right"]["median_ms"]
    for figures in cases.values():
        figures["median_to_all_settings_right"] = round(figures["median_ms"] / scale, 2)
    return {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "infrastructure_start_s": round(started_in, 2),
        "plaintext_greeting_wait_s": PLAINTEXT_GREETING_WAIT,
        "verifier_idle_cpu_ms_per_s": round(idle_rate * 1000, 2),
        "all_as_expected": all(figures["all_as_expected"] for figures in cases.values()),
        "cases": cases,
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"{'case':62} {'outcome':44} {'median':>7} {'min':>7} {'max':>7} {'x ok':>5} {'cpu':>6}")
    for name, figures in result["cases"].items():
        outcomes = ", ".join(f"{k} x{v}" for k, v in figures["outcomes"].items())
        print(
            f"{name:62} {outcomes:44} {figures['median_ms']:7.0f} {figures['min_ms']:7.0f} "
            f"{figures['max_ms']:7.0f} {figures['median_to_all_settings_right']:5.1f} "
            f"{figures['verifier_cpu_ms_per_link_above_idle']:6.1f}"
        )
    print("(ms; x ok: median / all settings right's; cpu: verifier ms per link above idle)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--links", type=int, default=7, help="measured links per case")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up links per case")
    args = parser.parse_args()
    rounds = args.links + args.warmup
    users = {
        case.name: [
            MailUser(f"sec-{i}-{secrets.token_hex(3)}@example.org", secrets.token_urlsafe(12))
            for i in range(rounds)
        ]
        for case in CASES
    }
    stack = LocalStack()
    for pool in users.values():
        for user in pool:  # before start: no reload wait during the run
            stack.add_mail_user(user.address, user.password)
    try:
        infra = stack.start()
        config = ServiceConfig(
            kafka_bootstrap=infra.kafka_bootstrap,
            mongodb_uri=infra.mongodb_uri,
            ca_file=infra.ca_file,
            dns_servers=(infra.dns_server,),
            ownership_relay_port=infra.relay_port,
            namespace="bench-security",
            log_level="WARNING",
        )  # the generous rate limits by default, as every bench
        with tempfile.TemporaryDirectory(prefix="mbl-bench-") as logs:
            services = start_services(config, Path(logs))
            try:
                runs, idle_rate = asyncio.run(measure(infra, services, users, args.warmup))
            finally:
                services.stop()
    finally:
        stack.stop()
    result = summary(runs, idle_rate, infra.started_in_seconds)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "security-mistakes.json").write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"written to {RESULTS / 'security-mistakes.json'}", file=sys.stderr)
    if not result["all_as_expected"]:
        print("some links did not end as expected: see `unexpected`", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

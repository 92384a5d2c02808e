"""`make bench`: end-to-end link throughput and CPU per link, beside the bare probes' rate.

For each configuration (A: one replica of every service; B: two of imap-verifier and of the
registry), on a freshly started stack and services:

1. end to end: 10 clients, each POSTs a link (a distinct user and mailbox), polls its status
   gently until `linked` or `failed`, then starts the next; links/s, latency (from just before
   the POST to link-api's own `updated_at`), failures by code;
2. CPU seconds per link of every process (services, FerretDB, PostgreSQL, Kafka, Dovecot, this
   client), from /proc/<pid>/stat before and after the measured window;
3. bare probes: the same 10 clients call the verifier's probes (IMAP and SMTP concurrently)
   directly against the same Dovecot for as long; checks/s, p50/p90, CPU per check.

A link or a check counts when it ended inside the measured window (link-api's `updated_at` for
a link); the clients keep the load on from the warm-up until the window closes.
Figures go to bench/results/link-throughput.json.
"""

import argparse
import asyncio
import itertools
import json
import math
import operator
import os
import secrets
import ssl
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from localinfra.mongo import mongo_backend
from localinfra.services import RunningServices, ServiceConfig, start_services
from localinfra.stack import Endpoints, LocalStack
from mailbox_link_contract.values import ConnectionSecurity
from mailbox_link_shared.mail_probes import Endpoint, ProbeFailed, probe_imap, probe_smtp

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGURATIONS: Mapping[str, Mapping[str, int]] = {
    "A": {},
    "B": {"registry": 2, "imap_verifier": 2},
}
FIRST_LOOK_S = 0.15  # about the usual link time: polls do not compete with the path measured
POLL_S = 0.05
LINK_TIMEOUT_S = 30.0
TIMEOUT = 10.0
STORE = ("ferretdb", "postgresql", "mongod")
STORE_OF_BACKEND = {
    "ferretdb-postgresql": {"ferretdb", "postgresql"},
    "ferretdb-sqlite": {"ferretdb"},
    "mongod": {"mongod"},
    "external": set(),  # not on this machine: its CPU is not measured
}
APART = ("kafka", "dovecot", "smtp_sink")
# The targets, reported as met or not met, never asserted.
TARGETS: Mapping[str, tuple[str, Callable[[float, float], bool], float]] = {
    "e2e_rate_to_bare_rate": (">=", operator.ge, 0.40),
    "cpu_ms_per_link_ours_and_store": ("<", operator.lt, 60.0),
    "e2e_p50_to_bare_p50": ("<=", operator.le, 2.0),
    "e2e_p90_to_bare_p90": ("<=", operator.le, 3.0),
}


# ---- CPU from /proc ----------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    own: int  # utime + stime, clock ticks
    reaped: int  # cutime + cstime: children it waited for


def read_proc(pid: int) -> Proc | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone meanwhile
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return Proc(pid, int(fields[1]), utime + stime, cutime + cstime)


def read_all_procs() -> dict[int, Proc]:
    procs = (read_proc(int(name)) for name in os.listdir("/proc") if name.isdigit())
    return {proc.pid: proc for proc in procs if proc is not None}


def tree_ticks(root: int, procs: Mapping[int, Proc]) -> int:
    """CPU of a process and all its descendants, live ones and reaped ones.

    By parent, not by session: PostgreSQL's backends each call setsid(). A process that ended
    is in its reaper's `reaped`, so before/after differences stay exact as long as the reaper
    is in the tree (every server here waits for its own workers).
    """
    children: dict[int, list[int]] = {}
    for proc in procs.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if pid in procs:
            total += procs[pid].own + procs[pid].reaped
            todo.extend(children.get(pid, ()))
    return total


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def server_kind(argv: str, workdir: str) -> str | None:
    """Names a server the stack started (a child of this process) from its command line."""
    program = argv.split(" ", 1)[0]
    if program.endswith("/ferretdb"):
        return "ferretdb"
    if program.endswith("/postgres") and workdir in argv:
        return "postgresql"
    if program.endswith("mongod") and workdir in argv:
        return "mongod"
    if " kafka.Kafka " in argv and workdir in argv:
        return "kafka"
    if "dovecot" in argv and "/dovecot-mail/" in argv:
        return "dovecot"  # only the trusted mail server; the other three stay idle here
    if "-m aiosmtpd" in argv or ("-m localinfra.relay" in argv and "--routes-file" in argv):
        return "smtp_sink"  # Dovecot's submission relay
    return None


def find_roots(services: RunningServices, workdir: str) -> dict[str, int]:
    """The root process of each thing measured: service replicas and the stack's servers."""
    roots = {p.name: p.pid for p in services.processes if p.pid is not None}
    for proc in read_all_procs().values():
        if proc.ppid == os.getpid():
            kind = server_kind(cmdline(proc.pid), workdir)
            if kind is not None:
                roots[kind] = proc.pid
    missing = {"kafka", "dovecot", *STORE_OF_BACKEND[mongo_backend()]} - roots.keys()
    if missing:
        raise RuntimeError(f"cannot find the processes of {sorted(missing)}")
    return roots


def machine_ticks() -> tuple[int, int]:
    """Busy ticks of all CPUs (user, nice, system, irq, softirq: every process on the
    machine, other users' included), and ticks stolen by the hypervisor."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split()[1:9]
    )
    return user + nice + system + irq + softirq, steal


def cpu_snapshot(roots: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each root's tree, this client alone, and the machine."""
    hz = os.sysconf("SC_CLK_TCK")
    procs = read_all_procs()
    seconds = {name: tree_ticks(pid, procs) / hz for name, pid in roots.items()}
    seconds["bench_client"] = procs[os.getpid()].own / hz  # its children are the servers
    busy, steal = machine_ticks()
    seconds["machine_busy"], seconds["machine_steal"] = busy / hz, steal / hz
    return seconds


def cpu_used(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    used = {name: after[name] - before[name] for name in before}
    machine = ("bench_client", "machine_busy", "machine_steal")
    services = [n for n in used if n not in (*STORE, *APART, *machine)]
    used["services"] = sum(used[n] for n in services)
    used["store"] = sum(used.get(n, 0.0) for n in STORE)
    used["ours_and_store"] = used["services"] + used["store"]
    used["grand_total"] = used["ours_and_store"] + sum(used.get(n, 0.0) for n in APART)
    # Other users' work on this shared machine, and the idle servers not measured apart.
    used["other_processes"] = used["machine_busy"] - used["grand_total"] - used["bench_client"]
    return used


# ---- the load ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    ended_at: float  # epoch seconds: link-api's updated_at for a link
    seconds: float
    failure: str | None = None
    polls: int = 0
    status_url: str = ""


@dataclass
class Window:
    """The measured stretch: clients start at `started`, the window is [opens, closes]."""

    started: float
    opens: float
    closes: float
    cpu_before: dict[str, float] = field(default_factory=dict)
    cpu_after: dict[str, float] = field(default_factory=dict)

    def counted(self, outcomes: list[Outcome]) -> list[Outcome]:
        return [o for o in outcomes if self.opens <= o.ended_at <= self.closes]


def link_body(infra: Endpoints, address: str, password: str) -> dict[str, Any]:
    """A POST /links body for a mailbox of the stack's Dovecot, over implicit TLS."""
    return {
        "email": address,
        "terms_accepted": True,
        "imap": {
            "host": infra.tls_hostname,
            "port": infra.imaps_port,
            "security": "ssl",
            "password": password,
        },
        "smtp": {"host": infra.tls_hostname, "port": infra.submissions_port, "security": "ssl"},
    }


async def one_link(api: httpx.AsyncClient, body: dict[str, Any]) -> Outcome:
    """Posts one link and polls it to its end; failures are outcomes, not exceptions."""
    user = f"tp-{secrets.token_hex(6)}"
    started = time.time()
    response = await api.post(f"/v1/accounts/bench/users/{user}/links", json=body)
    if response.status_code != 202:
        return Outcome(time.time(), time.time() - started, f"http_{response.status_code}")
    status_url = response.json()["status_url"]
    await asyncio.sleep(FIRST_LOOK_S)
    polls = 0
    while time.time() - started < LINK_TIMEOUT_S:
        polls += 1
        link = (await api.get(status_url)).json()
        if link["status"] in ("linked", "failed"):
            ended = datetime.fromisoformat(link["updated_at"]).timestamp()
            failure = link["failure"]["code"] if link["status"] == "failed" else None
            return Outcome(ended, ended - started, failure, polls, status_url)
        await asyncio.sleep(POLL_S)
    return Outcome(time.time(), time.time() - started, "bench_timeout", polls)


async def link_client(
    api: httpx.AsyncClient, bodies: Iterator[dict[str, Any]], until: float, out: list[Outcome]
) -> None:
    """Links one mailbox after another until the window closes (each mailbox only once)."""
    for body in bodies:
        if time.time() >= until:
            return
        out.append(await one_link(api, body))


@dataclass(frozen=True)
class Mail:
    imap: Endpoint
    smtp: Endpoint
    tls: ssl.SSLContext

    @classmethod
    def of(cls, infra: Endpoints) -> "Mail":
        def endpoint(port: int) -> Endpoint:
            return Endpoint(infra.tls_hostname, infra.mail_host, port, ConnectionSecurity.SSL)

        tls = ssl.create_default_context(cafile=infra.ca_file)
        return cls(endpoint(infra.imaps_port), endpoint(infra.submissions_port), tls)


async def bare_check(mail: Mail, address: str, password: str) -> Outcome:
    """The verifier's check done directly: IMAP and SMTP probes concurrently."""
    started = time.perf_counter()
    results = await asyncio.gather(
        probe_imap(mail.imap, address, password, mail.tls, TIMEOUT),
        probe_smtp(mail.smtp, address, password, mail.tls, TIMEOUT),
        return_exceptions=True,
    )
    seconds = time.perf_counter() - started
    for error in results:
        if isinstance(error, BaseException) and not isinstance(error, ProbeFailed):
            raise error
    failed = [r.code for r in results if isinstance(r, ProbeFailed)]
    return Outcome(time.time(), seconds, str(failed[0]) if failed else None)


async def bare_client(
    mail: Mail, users: Iterator[tuple[str, str]], until: float, out: list[Outcome]
) -> None:
    while time.time() < until:
        out.append(await bare_check(mail, *next(users)))


async def log_in_once(mail: Mail, users: list[tuple[str, str]], clients: int) -> None:
    """Dovecot creates a mailbox on first login, which real mailboxes never pay."""
    todo = iter(users)

    async def client() -> None:
        for address, password in todo:
            outcome = await bare_check(mail, address, password)
            if outcome.failure:
                raise RuntimeError(f"{address} cannot log in: {outcome.failure}")

    await asyncio.gather(*(client() for _ in range(clients)))


# ---- phases ---------------------------------------------------------------------------------


async def run_window(
    clients: list[Coroutine[Any, Any, None]], roots: Mapping[str, int], window: Window
) -> None:
    """Runs the clients; reads CPU at the window's edges; waits for the last ones to end."""
    tasks = [asyncio.create_task(client) for client in clients]
    await asyncio.sleep(max(0.0, window.opens - time.time()))
    window.opens, window.cpu_before = time.time(), cpu_snapshot(roots)
    await asyncio.sleep(max(0.0, window.closes - time.time()))
    window.closes, window.cpu_after = time.time(), cpu_snapshot(roots)
    await asyncio.gather(*tasks)  # links in flight end (not counted): no mailbox left half-done


def new_window(warmup: float, seconds: float) -> Window:
    now = time.time()
    return Window(now, now + warmup, now + warmup + seconds)


def percentiles_ms(values: list[float], which: tuple[int, ...]) -> dict[str, float | None]:
    if len(values) < 2:
        return dict.fromkeys([*(f"p{p}" for p in which), "max"])
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    figures: dict[str, float | None] = {f"p{p}": round(cuts[p - 1] * 1000, 1) for p in which}
    figures["max"] = round(max(values) * 1000, 1)
    return figures


def window_figures(window: Window, outcomes: list[Outcome], unit: str) -> dict[str, Any]:
    counted = window.counted(outcomes)
    done = [o for o in counted if o.failure is None]
    length = window.closes - window.opens
    used = cpu_used(window.cpu_before, window.cpu_after)
    per = {k: round(v * 1000 / len(done), 2) if done else None for k, v in used.items()}
    return {
        "window_s": round(length, 2),
        f"{unit}s": len(done),
        f"{unit}s_per_s": round(len(done) / length, 2),
        "latency_ms": percentiles_ms([o.seconds for o in done], (50, 90, 99)),
        "failures": dict(Counter(o.failure for o in counted if o.failure)),
        "cpu_s": {k: round(v, 3) for k, v in used.items()},
        f"cpu_ms_per_{unit}": per,
        "cpu_note": (
            "machine_busy: every process on the machine, other users' too; "
            "other_processes: machine_busy less grand_total and bench_client"
        ),
    }


async def end_to_end(
    infra: Endpoints,
    services: RunningServices,
    users: list[tuple[str, str]],
    args: argparse.Namespace,
    roots: Mapping[str, int],
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {services.caller_token}"}
    bodies = (link_body(infra, address, password) for address, password in users)
    outcomes: list[Outcome] = []
    window = new_window(args.warmup, args.seconds)
    async with httpx.AsyncClient(
        base_url=services.api_url, headers=headers, timeout=TIMEOUT
    ) as api:
        clients = [link_client(api, bodies, window.closes, outcomes) for _ in range(args.clients)]
        await run_window(clients, roots, window)
        urls = [o.status_url for o in outcomes if o.status_url]
        polling = await poll_cost(api, urls, roots, args.clients, min(5.0, args.seconds))
    if len(outcomes) >= len(users):
        raise RuntimeError("ran out of mailboxes: run again with a higher --max-rate")
    figures = window_figures(window, outcomes, "link")
    figures["one_poll"] = polling
    counted = window.counted(outcomes) or [Outcome(0, 0)]  # keeps an empty window printable
    figures["polls_per_link"] = round(statistics.fmean(o.polls for o in counted), 2)
    figures["linked_at_first_look"] = round(sum(o.polls == 1 for o in counted) / len(counted), 2)
    return figures


async def poll_cost(
    api: httpx.AsyncClient, urls: list[str], roots: Mapping[str, int], clients: int, seconds: float
) -> dict[str, Any]:
    """CPU of one status poll (a GET of a finished link), right after the window with no other
    load: how much of a link's CPU is the bench's own polling."""
    names = ("link_api", *STORE, "bench_client")
    if not urls:
        return {"gets_per_s": None, "cpu_ms_per_get": dict.fromkeys(names, 0.0)}
    cycle, window = itertools.cycle(urls), new_window(0.5, seconds)
    ended: list[Outcome] = []

    async def client() -> None:
        while time.time() < window.closes:
            started = time.perf_counter()
            (await api.get(next(cycle))).raise_for_status()
            ended.append(Outcome(time.time(), time.perf_counter() - started))

    await run_window([client() for _ in range(clients)], roots, window)
    gets = len(window.counted(ended))
    used = cpu_used(window.cpu_before, window.cpu_after)
    return {
        "gets_per_s": round(gets / (window.closes - window.opens), 1),
        "cpu_ms_per_get": {n: round(used.get(n, 0.0) * 1000 / gets, 2) for n in names},
    }


async def idle_cpu(roots: Mapping[str, int], seconds: float) -> dict[str, float]:
    """CPU milliseconds per second of each process with no load at all."""
    await asyncio.sleep(1.0)  # the first logins' workers exit
    before, started = cpu_snapshot(roots), time.time()
    await asyncio.sleep(seconds)
    used = cpu_used(before, cpu_snapshot(roots))
    return {name: round(v * 1000 / (time.time() - started), 1) for name, v in used.items()}


def above_idle(phase: dict[str, Any], idle: Mapping[str, float], unit: str) -> dict[str, Any]:
    """An estimate: CPU per unit once each process's idle rate over the window is taken off
    (idle consumers poll less when busy, so this slightly understates the fixed part)."""
    count = phase[f"{unit}s"]
    return {
        name: round((used * 1000 - idle[name] * phase["window_s"]) / count, 2) if count else None
        for name, used in phase["cpu_s"].items()
        if name not in ("machine_busy", "machine_steal", "other_processes")
    }


async def bare(
    infra: Endpoints,
    users: list[tuple[str, str]],
    args: argparse.Namespace,
    roots: Mapping[str, int],
) -> dict[str, Any]:
    mail = Mail.of(infra)
    cycle = itertools.cycle(users)  # already logged in once; a check changes nothing
    outcomes: list[Outcome] = []
    window = new_window(args.warmup, args.seconds)
    clients = [bare_client(mail, cycle, window.closes, outcomes) for _ in range(args.clients)]
    await run_window(clients, roots, window)
    figures = window_figures(window, outcomes, "check")
    figures["latency_ms"].pop("p99")
    return figures


async def measure(
    infra: Endpoints,
    services: RunningServices,
    users: list[tuple[str, str]],
    args: argparse.Namespace,
    bare_first: bool,
) -> dict[str, Any]:
    roots = find_roots(services, infra.workdir)
    began = time.monotonic()
    await log_in_once(Mail.of(infra), users, args.clients)
    figures: dict[str, Any] = {"first_logins_s": round(time.monotonic() - began, 1)}
    figures["idle_cpu_ms_per_s"] = idle = await idle_cpu(roots, args.idle)
    for phase in ("bare", "end_to_end") if bare_first else ("end_to_end", "bare"):
        if phase == "bare":
            figures["bare"] = await bare(infra, users, args, roots)
        else:
            figures["end_to_end"] = await end_to_end(infra, services, users, args, roots)
    figures["order"] = ["bare", "end_to_end"] if bare_first else ["end_to_end", "bare"]
    e2e = figures["end_to_end"]
    e2e["cpu_ms_per_link_above_idle"] = above_idle(e2e, idle, "link")
    poll = sum(e2e["one_poll"]["cpu_ms_per_get"][n] for n in ("link_api", *STORE))
    share = ratio(e2e["polls_per_link"] * poll, e2e["cpu_ms_per_link"]["ours_and_store"])
    e2e["polling_share_of_ours_and_store"] = share
    figures["processes"] = sorted(roots)
    return figures


# ---- configurations, ratios, output --------------------------------------------------------


def mailbox_pool(args: argparse.Namespace) -> list[tuple[str, str]]:
    """A mailbox per link at up to --max-rate links/s (each is logged in to once first)."""
    count = math.ceil(args.max_rate * (args.warmup + args.seconds)) + 2 * args.clients
    return [
        (f"tp-{i}-{secrets.token_hex(3)}@example.org", secrets.token_urlsafe(12))
        for i in range(count)
    ]


def run_configuration(name: str, args: argparse.Namespace, bare_first: bool) -> dict[str, Any]:
    """One configuration on its own fresh stack and services."""
    replicas = CONFIGURATIONS[name]
    users = mailbox_pool(args)
    load = os.getloadavg()
    stack = LocalStack()
    for address, password in users:
        stack.add_mail_user(address, password)  # before start: no reload wait during the run
    try:
        infra = stack.start()
        config = ServiceConfig(
            kafka_bootstrap=infra.kafka_bootstrap,
            mongodb_uri=infra.mongodb_uri,
            ca_file=infra.ca_file,
            # The stack's DNS (example.org's SRV: published settings) and relay, as `make run`.
            dns_servers=(infra.dns_server,),
            ownership_relay_port=infra.relay_port,
            namespace=f"bench-throughput-{name.lower()}",
            log_level="WARNING",
            extra_env={k: v for k, v in os.environ.items() if k.startswith("MBL_")},
        )
        with tempfile.TemporaryDirectory(prefix="mbl-bench-") as logs:
            began = time.monotonic()
            services = start_services(config, Path(logs), replicas=replicas)
            services_in = time.monotonic() - began
            try:
                figures = asyncio.run(measure(infra, services, users, args, bare_first))
            finally:
                services.stop()
    finally:
        stack.stop()
    started = {"infrastructure_start_s": infra.started_in_seconds, "services_start_s": services_in}
    return {
        "replicas": {**dict.fromkeys(("registry", "imap_verifier"), 1), **replicas},
        "load_average_at_start": [round(v, 2) for v in load],
        "mailboxes": len(users),
        **{k: round(v, 1) for k, v in started.items()},
        **figures,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def ratios_and_targets(figures: dict[str, Any]) -> None:
    e2e, bare_ = figures["end_to_end"], figures["bare"]
    figures["ratios"] = {
        "e2e_rate_to_bare_rate": ratio(e2e["links_per_s"], bare_["checks_per_s"]),
        "e2e_p50_to_bare_p50": ratio(e2e["latency_ms"]["p50"], bare_["latency_ms"]["p50"]),
        "e2e_p90_to_bare_p90": ratio(e2e["latency_ms"]["p90"], bare_["latency_ms"]["p90"]),
    }
    values = {
        **figures["ratios"],
        "cpu_ms_per_link_ours_and_store": e2e["cpu_ms_per_link"]["ours_and_store"],
    }
    figures["targets"] = {}
    for name, (sign, compare, limit) in TARGETS.items():
        value = values[name]
        met = None if value is None else compare(value, limit)
        figures["targets"][name] = {"value": value, "target": f"{sign} {limit}", "met": met}


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def met(figures: dict[str, Any], target: str) -> str:
    entry = figures["targets"][target]
    verdict = {True: "met", False: "not met", None: "n/a"}[entry["met"]]
    return f"{fmt(entry['value'])} ({verdict})"


Cell = Callable[[dict[str, Any]], str]


def table_rows(configs: dict[str, dict[str, Any]]) -> list[tuple[str, list[str], str]]:
    cols = list(configs.values())

    def row(label: str, get: Cell, target: str = "") -> tuple[str, list[str], str]:
        return (label, [get(c) for c in cols], target)

    def e2e(key: str) -> Cell:
        return lambda c: fmt(c["end_to_end"]["latency_ms"][key])

    def replicas(c: dict[str, Any]) -> str:
        return "{registry}/{imap_verifier}".format(**c["replicas"])

    rows = [
        row("replicas registry/imap_verifier", replicas),
        row("load average at start (1 min)", lambda c: fmt(c["load_average_at_start"][0])),
        row("e2e links/s", lambda c: fmt(c["end_to_end"]["links_per_s"])),
        row("bare checks/s", lambda c: fmt(c["bare"]["checks_per_s"])),
        row("e2e / bare rate", lambda c: met(c, "e2e_rate_to_bare_rate"), ">= 0.40"),
        *(row(f"e2e {k} ms", e2e(k)) for k in ("p50", "p90", "p99", "max")),
        row("bare p50 ms", lambda c: fmt(c["bare"]["latency_ms"]["p50"])),
        row("bare p90 ms", lambda c: fmt(c["bare"]["latency_ms"]["p90"])),
        row("e2e p50 / bare p50", lambda c: met(c, "e2e_p50_to_bare_p50"), "<= 2"),
        row("e2e p90 / bare p90", lambda c: met(c, "e2e_p90_to_bare_p90"), "<= 3"),
        row("e2e failures", lambda c: fmt(c["end_to_end"]["failures"])),
        row("bare failures", lambda c: fmt(c["bare"]["failures"])),
        row("polls per link", lambda c: fmt(c["end_to_end"]["polls_per_link"])),
        row("linked at first look", lambda c: fmt(c["end_to_end"]["linked_at_first_look"])),
    ]
    return rows + cpu_rows(configs)


def cpu_rows(configs: dict[str, dict[str, Any]]) -> list[tuple[str, list[str], str]]:
    cols = list(configs.values())
    names = sorted({n for c in cols for n in c["processes"]} - {*STORE, *APART})
    per_link = [*names, "services", *STORE, "ours_and_store", *APART, "grand_total"]
    rows = []
    for name in [*per_link, "bench_client", "other_processes", "machine_busy", "machine_steal"]:
        values = [fmt(c["end_to_end"]["cpu_ms_per_link"].get(name)) for c in cols]
        if name == "ours_and_store":
            values = [met(c, "cpu_ms_per_link_ours_and_store") for c in cols]
        rows.append((f"CPU ms/link {name}", values, "< 60" if name == "ours_and_store" else ""))
    for name in ("ours_and_store", "grand_total"):
        values = [fmt(c["end_to_end"]["cpu_ms_per_link_above_idle"][name]) for c in cols]
        rows.append((f"CPU ms/link {name}, above idle", values, "estimate"))
    values = [fmt(c["end_to_end"]["polling_share_of_ours_and_store"]) for c in cols]
    rows.append(("polling share of ours_and_store", values, "estimate"))
    values = [fmt(c["idle_cpu_ms_per_s"]["grand_total"]) for c in cols]
    rows.append(("idle CPU ms/s grand_total", values, ""))
    for name in ("bench_client", "dovecot", "machine_busy"):
        values = [fmt(c["bare"]["cpu_ms_per_check"].get(name)) for c in cols]
        rows.append((f"CPU ms/bare check {name}", values, ""))
    return rows


def print_table(result: dict[str, Any]) -> None:
    configs = result["configurations"]
    rows = table_rows(configs)
    width = max(len(label) for label, _, _ in rows)
    cell = max(12, *(len(v) for _, values, _ in rows for v in values))
    print(f"{'':{width}}  " + "  ".join(f"{n:>{cell}}" for n in configs) + "  target")
    for label, values, target in rows:
        print(f"{label:{width}}  " + "  ".join(f"{v:>{cell}}" for v in values) + f"  {target}")
    if "B_to_A_throughput" in result["ratios"]:
        print(f"B / A end-to-end throughput: {fmt(result['ratios']['B_to_A_throughput'])}")
    print(f"store: {result['machine']['store_backend']}, nproc {result['machine']['nproc']}")
    sys.stdout.flush()


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=5.0, help="load before the window")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--idle", type=float, default=5.0, help="idle CPU baseline, seconds")
    parser.add_argument(
        "--max-rate", type=float, default=30.0, help="links/s the mailbox pool is sized for"
    )
    parser.add_argument(
        "--configurations", nargs="+", choices=list(CONFIGURATIONS), default=list(CONFIGURATIONS)
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "link-throughput.json")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    result: dict[str, Any] = {
        "machine": {
            "nproc": os.cpu_count(),
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
            "store_backend": mongo_backend(),
        },
        "settings": {
            "clients": args.clients,
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "first_look_s": FIRST_LOOK_S,
            "poll_interval_s": POLL_S,
            "counted": "links and checks that ended inside the window; load runs throughout",
        },
        "configurations": {},
        "ratios": {},
    }
    for index, name in enumerate(args.configurations):
        # Alternate which side runs first, so a drift of the machine favours neither.
        figures = run_configuration(name, args, bare_first=index % 2 == 1)
        ratios_and_targets(figures)
        result["configurations"][name] = figures
    configs = result["configurations"]
    if {"A", "B"} <= configs.keys():
        rates = [configs[n]["end_to_end"]["links_per_s"] for n in ("B", "A")]
        result["ratios"]["B_to_A_throughput"] = ratio(*rates)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"written to {args.output}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()

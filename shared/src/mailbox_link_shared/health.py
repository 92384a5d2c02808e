"""Liveness apart from readiness, and a start-up that does not die when Kafka or MongoDB is away.

`/livez` says the process and its event loop work. `/readyz` says the service can do its job:
each named check (Kafka, MongoDB, the consumer, start-up finished) answers within
CHECK_TIMEOUT_SECONDS, and the results are cached for CACHE_SECONDS so that probes, however
many, cannot load Kafka or MongoDB. A failing answer names the checks only: no address, no
error text (it may hold a URI with credentials).

`BackgroundStart` runs the infrastructure hooks (topics, broker, consumer, indexes...) in a
task, in order, each retried with back-off until it succeeds, so the HTTP server is up at once
and the reads that need no Kafka keep working; readiness is false until the last hook ran.
Stop cancels it at any point.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 1.5
CACHE_SECONDS = 1.0
# Back-off of a start-up hook that failed: doubled from the first to the last, then kept.
RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 5.0

Hook = Callable[[], Awaitable[None]]
Check = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class ReadinessReport:
    """One evaluation of every check: which passed, which failed."""

    checks: Mapping[str, bool]

    @property
    def ready(self) -> bool:
        """True when every check passed."""
        return all(self.checks.values())

    def body(self) -> dict[str, Any]:
        """The JSON answer of /readyz: the status, each check's result, the failing ones."""
        failing = sorted(name for name, ok in self.checks.items() if not ok)
        return {
            "status": "ready" if not failing else "not_ready",
            "checks": {name: "ok" if ok else "failing" for name, ok in sorted(self.checks.items())},
            "failing": failing,
        }


class Readiness:
    """Named checks, each bounded by a timeout, their result cached for a moment."""

    def __init__(
        self,
        checks: Mapping[str, Check] | None = None,
        *,
        timeout: float = CHECK_TIMEOUT_SECONDS,
        cache_seconds: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._checks: dict[str, Check] = dict(checks or {})
        self._timeout = timeout
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cached: dict[str, tuple[float, bool]] = {}
        self._lock = asyncio.Lock()

    def add(self, name: str, check: Check) -> None:
        """Adds a check; its name is what a failing /readyz shows."""
        self._checks[name] = check

    async def check(self, name: str) -> bool:
        """Returns one check's result, from the cache when fresh."""
        now = self._clock()
        cached = self._cached.get(name)
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        ok = await self._run(self._checks[name])
        self._cached[name] = (self._clock(), ok)
        return ok

    async def report(self) -> ReadinessReport:
        """Evaluates every check (concurrently, each within the timeout)."""
        # One evaluation at a time: a burst of probes shares it instead of each asking Kafka.
        async with self._lock:
            names = list(self._checks)
            results = await asyncio.gather(*(self.check(name) for name in names))
        return ReadinessReport(dict(zip(names, results, strict=True)))

    async def _run(self, check: Check) -> bool:
        try:
            return bool(await asyncio.wait_for(check(), self._timeout))
        except asyncio.CancelledError:
            raise
        except Exception:  # a check that raises or times out is failing, and says no more
            return False


class Pingable(Protocol):
    """What a Kafka broker offers for a check: FastStream's KafkaBroker.ping."""

    async def ping(self, timeout: float | None) -> bool: ...


class MongoPingable(Protocol):
    """What a MongoDB client offers for a check: its admin database."""

    @property
    def admin(self) -> Any: ...


def kafka_check(broker: Pingable, timeout: float = CHECK_TIMEOUT_SECONDS) -> Check:
    """Kafka answers a cluster description (false before the broker started)."""

    async def check() -> bool:
        return await broker.ping(timeout)

    return check


def mongo_check(client: MongoPingable) -> Check:
    """MongoDB answers a ping."""

    async def check() -> bool:
        await client.admin.command("ping")
        return True

    return check


class Running(Protocol):
    """A consumer that says whether it is in its group and fetching."""

    @property
    def running(self) -> bool: ...


def running_check(consumer: Running) -> Check:
    """The consumer joined its group and fetches."""

    async def check() -> bool:
        return consumer.running

    return check


class BackgroundStart:
    """Runs start-up hooks in order in a background task, each retried until it succeeds.

    `started` (a readiness check) is true once every hook ran. `stop()` cancels what is left;
    the service's stop hooks then close what was opened (each of them copes with "never
    started").
    """

    def __init__(
        self,
        name: str,
        hooks: Sequence[Hook],
        *,
        first_delay: float = RETRY_FIRST_SECONDS,
        max_delay: float = RETRY_MAX_SECONDS,
    ) -> None:
        self._name = name
        self._hooks = list(hooks)
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        """True once every hook succeeded."""
        return self._done.is_set()

    async def started(self) -> bool:
        """A readiness check: start-up finished."""
        return self.done

    async def wait(self) -> None:
        """Waits until every hook succeeded."""
        await self._done.wait()

    async def start(self) -> None:
        """Starts running the hooks; returns at once."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self._name}-start")

    async def stop(self) -> None:
        """Cancels the hooks not yet run (the one running included)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        for hook in self._hooks:
            delay = self._first_delay
            attempt = 1
            while True:
                try:
                    await hook()
                    break
                except Exception as exc:
                    # The type only: an error's text may hold an address or a URI.
                    logger.warning(
                        "%s: start-up step %s failed (%s, attempt %d); retrying in %.1f s",
                        self._name, _hook_name(hook), type(exc).__name__, attempt, delay,
                    )  # fmt: skip
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._max_delay)
                    attempt += 1
        self._done.set()
        logger.info("%s: start-up finished", self._name)


def _hook_name(hook: Hook) -> str:
    func = getattr(hook, "func", hook)  # functools.partial
    return str(getattr(func, "__qualname__", None) or getattr(func, "__name__", "hook"))


def livez_asgi() -> ASGIApp:
    """/livez as a bare ASGI app, for a service without FastAPI (the imap-verifier)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"status": "ok"})(scope, receive, send)

    return app


def readyz_asgi(readiness: Readiness) -> ASGIApp:
    """/readyz as a bare ASGI app: 200 when every check passes, else 503 naming the failing."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        report = await readiness.report()
        status = 200 if report.ready else 503
        await JSONResponse(report.body(), status_code=status)(scope, receive, send)

    return app

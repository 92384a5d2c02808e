"""Readiness checks (bounded, cached, named) and the background start-up, with fakes."""

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import APIRouter

from mailbox_link_shared.health import BackgroundStart, Readiness, kafka_check, mongo_check
from mailbox_link_shared.http import CallerKeys, build_http_app


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CountingCheck:
    def __init__(self, result: bool = True) -> None:
        self.result = result
        self.calls = 0

    async def __call__(self) -> bool:
        self.calls += 1
        return self.result


async def test_every_check_passing_is_ready() -> None:
    readiness = Readiness({"kafka": CountingCheck(), "mongodb": CountingCheck()})
    report = await readiness.report()
    assert report.ready
    assert report.body() == {
        "status": "ready",
        "checks": {"kafka": "ok", "mongodb": "ok"},
        "failing": [],
    }


async def test_a_failing_raising_or_slow_check_is_named_and_says_no_more() -> None:
    async def raises() -> bool:
        raise ConnectionError("mongodb://user:secret@db.internal:27017")

    async def hangs() -> bool:
        await asyncio.sleep(60)
        return True

    readiness = Readiness(
        {
            "kafka": CountingCheck(False),
            "mongodb": raises,
            "consumer": hangs,
            "ok": CountingCheck(),
        },
        timeout=0.05,
    )
    report = await readiness.report()
    assert not report.ready
    body = report.body()
    assert body["status"] == "not_ready"
    assert body["failing"] == ["consumer", "kafka", "mongodb"]
    assert "secret" not in str(body)
    assert "internal" not in str(body)


async def test_results_are_cached_for_a_moment() -> None:
    clock = Clock()
    check = CountingCheck()
    readiness = Readiness({"kafka": check}, cache_seconds=1.0, clock=clock)
    for _ in range(5):
        await readiness.report()
    assert check.calls == 1
    clock.now = 1.5
    check.result = False
    assert not (await readiness.report()).ready
    assert check.calls == 2


async def test_kafka_and_mongo_checks_ask_their_client() -> None:
    class Broker:
        async def ping(self, timeout: float | None) -> bool:
            return timeout is not None

    class Admin:
        async def command(self, name: str) -> dict[str, Any]:
            assert name == "ping"
            return {"ok": 1}

    class Mongo:
        admin = Admin()

    assert await kafka_check(Broker())()
    assert await mongo_check(Mongo())()


async def test_background_start_retries_each_step_until_it_succeeds() -> None:
    done: list[str] = []
    failures = {"broker": 2}

    def step(name: str) -> Any:
        async def run() -> None:
            if failures.get(name, 0) > 0:
                failures[name] -= 1
                raise ConnectionError("away")
            done.append(name)

        return run

    start = BackgroundStart("svc", [step("indexes"), step("broker"), step("consumer")],
                            first_delay=0.01, max_delay=0.02)  # fmt: skip
    assert not await start.started()
    await start.start()
    await asyncio.wait_for(start.wait(), 5)
    assert done == ["indexes", "broker", "consumer"]
    assert await start.started()
    await start.stop()


async def test_background_start_stops_at_any_point() -> None:
    async def never() -> None:
        raise ConnectionError("away")

    start = BackgroundStart("svc", [never], first_delay=0.01, max_delay=0.01)
    await start.start()
    await asyncio.sleep(0.05)
    await asyncio.wait_for(start.stop(), 1)
    assert not start.done


async def test_the_app_answers_while_start_up_retries_and_turns_ready() -> None:
    kafka = CountingCheck(False)
    readiness = Readiness({"kafka": kafka}, cache_seconds=0)
    gate = asyncio.Event()

    async def broker_start() -> None:
        if not gate.is_set():
            raise ConnectionError("away")

    app = build_http_app(
        title="t",
        router=APIRouter(),
        keys=CallerKeys([]),
        on_start=[broker_start],
        on_stop=[],
        api_docs=False,
        readiness=readiness,
    )
    transport = httpx.ASGITransport(app=app)
    client = httpx.AsyncClient(transport=transport, base_url="http://t")
    async with app.router.lifespan_context(app), client:  # the start-up returns at once
        assert (await client.get("/livez")).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
        answer = await client.get("/readyz")
        assert answer.status_code == 503
        assert answer.json()["failing"] == ["kafka", "started"]
        gate.set()
        kafka.result = True
        for _ in range(200):
            answer = await client.get("/readyz")
            if answer.status_code == 200:
                break
            await asyncio.sleep(0.02)
        assert answer.status_code == 200, answer.json()


@pytest.mark.parametrize("path", ["/livez", "/readyz"])
async def test_without_readiness_both_answer_200(path: str) -> None:
    app = build_http_app(
        title="t", router=APIRouter(), keys=CallerKeys([]), on_start=[], on_stop=[],
        api_docs=False,
    )  # fmt: skip
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get(path)).status_code == 200

"""The admission queue and the GET alias without a server: throughput, limit, Retry-After, FIFO gate, settings."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from cosa_sdk.cli import build_parser
from cosa_sdk.errors import CosaInputError
from cosa_sdk.serving.cli import settings_from_args
from cosa_sdk.serving.settings import DEFAULT_MAX_LATENCY_MS, ServeSettings, read_settings
from cosa_sdk.serving.traffic import AdmissionQueue, GetAlias, QueueFull, ThroughputMeter


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- throughput -----------------------------------------------------------------------------------
def test_meter_counts_busy_time_only() -> None:
    clock = FakeClock()
    meter = ThroughputMeter(clock=clock, min_samples=4)
    meter.prior_rps = 2.0
    for _ in range(4):
        assert meter.rps == 2.0  # the prior until min_samples completions
        meter.started()
        clock.now += 0.25
        meter.finished(served=True)
        clock.now += 10.0  # idle: no request in the model
    assert meter.measured_rps == pytest.approx(4.0)


def test_meter_under_batching_and_failures() -> None:
    clock = FakeClock()
    meter = ThroughputMeter(clock=clock, min_samples=8)
    for _ in range(3):  # three batches of 8 taking 0.5 s each, back to back
        for _ in range(8):
            meter.started()
        clock.now += 0.5
        for _ in range(8):
            meter.finished(served=True)
    assert meter.measured_rps == pytest.approx(16.0)
    meter.started()
    clock.now += 5.0
    meter.finished(served=False)  # a failed call adds busy time but no completion
    meter.started()
    clock.now += 0.5
    meter.finished(served=True)
    assert meter.measured_rps == pytest.approx(25 / 7.0)


def test_meter_window_forgets_old_speed() -> None:
    clock = FakeClock()
    meter = ThroughputMeter(clock=clock, window=10, min_samples=4)
    for step in [1.0] * 10 + [0.1] * 10:
        meter.started()
        clock.now += step
        meter.finished(served=True)
    assert meter.measured_rps == pytest.approx(10.0)


# -- limit and refusal ----------------------------------------------------------------------------
def test_limit_is_throughput_times_budget() -> None:
    queue = AdmissionQueue(budget_s=20.0, model_slots=16)
    assert queue.limit == 16, "no estimate yet: only the model slots"
    queue.meter.prior_rps = 7.3
    assert queue.limit == 146  # ceil(7.3 x 20)
    short = AdmissionQueue(budget_s=0.001, model_slots=16)
    short.meter.prior_rps = 100.0
    assert short.limit == 16, "never below the model slots"
    fixed = AdmissionQueue(budget_s=20.0, model_slots=16, max_queue=2)
    fixed.meter.prior_rps = 7.3
    assert fixed.limit == 2


def test_full_queue_refuses_with_retry_after() -> None:
    async def scenario() -> tuple[QueueFull, dict]:
        queue = AdmissionQueue(budget_s=2.0, model_slots=2)
        queue.meter.prior_rps = 3.0  # limit: max(2, ceil(3 x 2)) = 6
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(6):
                await stack.enter_async_context(queue.admit())
            with pytest.raises(QueueFull) as refused:
                await stack.enter_async_context(queue.admit())
            status = queue.status()
        assert queue.admitted == 0, "leaving the block frees the places"
        return refused.value, status

    refused, status = asyncio.run(scenario())
    assert refused.status == 503 and refused.retry_after == 2  # ceil(6 queued / 3 per s)
    assert "6 requests are queued" in refused.message and "COSA_MAX_LATENCY_MS=2000" in refused.message
    assert "Retry-After" in refused.message
    assert status["limit"] == 6 and status["admitted"] == 6 and status["throughput_measured"] is False


def test_fifo_gate_serves_in_arrival_order_and_survives_cancellation() -> None:
    async def scenario() -> tuple[list[int], int]:
        queue = AdmissionQueue(budget_s=10.0, model_slots=2)
        order: list[int] = []
        release = asyncio.Event()

        async def one(index: int) -> None:
            async with queue.model_slot():
                order.append(index)
                await release.wait()

        tasks = [asyncio.create_task(one(i)) for i in range(6)]
        await asyncio.sleep(0.01)
        assert order == [0, 1], "two slots: the others wait"
        tasks[3].cancel()  # a waiting client goes away (e.g. BentoML's timeout)
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        return order, queue._free

    order, free = asyncio.run(scenario())
    assert order == [0, 1, 2, 4, 5]
    assert free == 2, "every slot came back"


# -- GET /info ------------------------------------------------------------------------------------
def test_get_alias_serves_get_as_a_bodyless_post() -> None:
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"method": request.method, "body": len(await request.body())})

    app = Starlette(routes=[Route("/info", echo, methods=["POST"]), Route("/segment", echo, methods=["POST"])])
    client = TestClient(GetAlias(app, routes={"/info"}))
    assert client.get("/info").json() == {"method": "POST", "body": 0}
    assert client.post("/info", content=b"{}").json() == {"method": "POST", "body": 2}
    assert client.get("/segment").status_code == 405, "only the named read-only routes"


# -- settings -------------------------------------------------------------------------------------
def test_one_latency_default_for_cli_and_environment() -> None:
    args = build_parser().parse_args(["serve", "--model", "bundle"])
    assert args.max_latency_ms == DEFAULT_MAX_LATENCY_MS == ServeSettings().max_latency_ms == 20_000
    assert read_settings({}).max_latency_ms == DEFAULT_MAX_LATENCY_MS
    assert 1000 * ServeSettings().timeout_s > DEFAULT_MAX_LATENCY_MS, "queued requests must not time out"


def test_max_queue_from_environment_and_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    assert read_settings({"COSA_MAX_QUEUE": "5"}).max_queue == 5
    assert read_settings(ServeSettings(max_queue=3).to_env()).max_queue == 3
    with pytest.raises(CosaInputError, match="COSA_MAX_QUEUE"):
        read_settings({"COSA_MAX_QUEUE": "-1"})
    monkeypatch.setenv("COSA_MAX_QUEUE", "7")
    parse = build_parser().parse_args
    assert settings_from_args(parse(["serve", "--model", "bundle"])).max_queue == 7
    assert settings_from_args(parse(["serve", "--model", "bundle", "--max-queue", "0"])).max_queue == 0
    with pytest.raises(CosaInputError, match="--max-queue"):
        settings_from_args(parse(["serve", "--model", "bundle", "--max-queue", "-2"]))
    old_style = argparse.Namespace(model="b", host="127.0.0.1", port=3000, backend="auto", max_batch_size=8,
                                   max_latency_ms=200, workers=1)  # fmt: skip
    assert settings_from_args(old_style).max_queue == 7, "callers without max_queue keep the environment's"
    assert ServeSettings(max_batch_size=8).model_slots == 16 and ServeSettings(max_batch_size=1).model_slots == 2

"""The BentoML service under load: concurrent requests share model calls, and a burst is queued, not dropped."""

from __future__ import annotations

import concurrent.futures
import threading
from pathlib import Path

from toy_bundle import cached_toy_bundle

from cosa_sdk.serving.launcher import start_server

from .helpers import LIMITS_ENV, Reply, batch_histogram, encode, post_image, request, scene


def test_concurrent_requests_reach_the_model_in_batches(tmp_path: Path) -> None:
    # A model that takes tens of milliseconds per call: requests that arrive while it runs must queue
    # and leave together, whatever the machine's load (the plain toy model can finish each request
    # before the next one arrives, which made this a race).
    bundle = cached_toy_bundle(busy=True, input_size=(160, 160))
    handle = start_server(bundle, max_batch_size=8, max_latency_ms=20000, env=LIMITS_ENV, log_path=tmp_path / "s.log")
    try:
        calls_before, images_before = batch_histogram(handle)
        data = encode(scene(120, 160), "JPEG", quality=90)
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda _: post_image(handle.url, "/segment", data).status, range(64)))
        calls, images = batch_histogram(handle)
    finally:
        handle.stop()
    assert statuses == [200] * 64
    assert images - images_before == 64, "every request must pass through the batchable API once"
    assert calls - calls_before < 64, "concurrent requests must share model calls"
    assert calls - calls_before <= 32, (
        f"{calls - calls_before} model calls for 64 queued requests: batching barely works"
    )


def test_a_burst_is_queued_and_served_not_dropped(tmp_path: Path) -> None:
    # Default settings (no --max-latency-ms) and a model that takes ~50 ms per image on 2 cores: 50
    # uploads sent at once take seconds, longer than BentoML's batcher alone let a request wait under
    # the old defaults (it answered 503); they must all be served, waiting in the admission queue.
    bundle = cached_toy_bundle(busy=True, input_size=(224, 224))
    handle = start_server(bundle, env=LIMITS_ENV, log_path=tmp_path / "s.log")
    data = encode(scene(120, 160), "JPEG", quality=90)
    go = threading.Barrier(50)

    def one(_: int) -> Reply:
        go.wait(timeout=60)
        return post_image(handle.url, "/segment", data)

    try:
        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            replies = list(pool.map(one, range(50)))
        queue = request(handle.url, "/info").json()["queue"]
    finally:
        handle.stop()
    assert [reply.status for reply in replies] == [200] * 50, {r.status: r.body[:200] for r in replies}
    assert queue["admitted"] == 0 and queue["in_model"] == 0, "every place in the queue was given back"
    assert queue["budget_ms"] == 20000 and queue["throughput_measured"] is True

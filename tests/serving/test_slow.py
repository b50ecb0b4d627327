"""Longer serving checks (each starts its own server): the BentoML-native entry points, a built Bento,
batching off, several workers, load shedding."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from toy_bundle import cached_toy_bundle

import cosa_sdk
from cosa_sdk.serving.launcher import LocalServer, free_port, start_server

from .helpers import LIMITS_ENV, batch_histogram, encode, png_values, post_image, request, scene

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BENTOML = str(Path(sys.executable).parent / "bentoml")


def bentoml_serve(args: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> LocalServer:
    """`bentoml serve ARGS --port FREE` as a LocalServer (readiness wait, SIGTERM stop); COSA_MODEL only from env."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [BENTOML, "serve", *args, "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
            env={**{k: v for k, v in os.environ.items() if k != "COSA_MODEL"}, "BENTOML_DO_NOT_TRACK": "true", **env},
        )  # fmt: skip
    server = LocalServer(process, f"http://127.0.0.1:{port}", log)
    try:
        return server.wait_ready(120)
    except BaseException:
        server.stop(timeout=5)
        raise


def assert_serves_the_sdk_mask(server: LocalServer, bundle: Path) -> None:
    data = encode(scene(45, 61, seed=8), "PNG")
    reply = post_image(server.url, "/segment", data)
    assert reply.status == 200, reply.body[:300]
    with cosa_sdk.load(bundle) as segmenter:
        np.testing.assert_array_equal(png_values(reply.body), segmenter.segment(data).mask)


def test_bentoml_serve_with_cosa_model_env(tmp_path: Path) -> None:
    bundle = cached_toy_bundle()
    server = bentoml_serve(
        ["cosa_sdk.serving.service:CosaSegmentation"], {"COSA_MODEL": str(bundle)}, tmp_path / "log", cwd=tmp_path
    )
    try:
        assert_serves_the_sdk_mask(server, bundle)
        assert request(server.url, "/info").json()["name"] == "toy"
    finally:
        assert server.stop() == 0


def test_bentoml_serve_without_a_model_fails_fast(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "COSA_MODEL"}
    out = subprocess.run(
        [BENTOML, "serve", "cosa_sdk.serving.service:CosaSegmentation", "--port", str(free_port())],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert out.returncode != 0
    assert "set COSA_MODEL" in out.stdout + out.stderr


def test_built_bento_serves_its_bundle(tmp_path: Path) -> None:
    context = tmp_path / "context"
    (context / "serving").mkdir(parents=True)
    shutil.copy(REPO / "serving" / "bentofile.yaml", context / "serving")
    shutil.copytree(cached_toy_bundle(), context / "bundle")
    wheel = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(context / "dist"), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert wheel.returncode == 0, wheel.stderr[-2000:]
    env = {"BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "true"}
    build = subprocess.run(
        [BENTOML, "build", "-f", "serving/bentofile.yaml", "."],
        capture_output=True, text=True, timeout=300, cwd=context, env={**os.environ, **env},
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    server = bentoml_serve(["cosa-segmentation:latest"], env, tmp_path / "log", cwd=tmp_path)
    try:
        assert_serves_the_sdk_mask(server, cached_toy_bundle())
    finally:
        assert server.stop() == 0


def test_batching_off_gives_the_same_masks(tmp_path: Path) -> None:
    bundle = cached_toy_bundle()
    with start_server(bundle, max_batch_size=1, env=LIMITS_ENV, log_path=tmp_path / "log") as server:
        assert request(server.url, "/info").json()["service"]["batching"] is False
        assert_serves_the_sdk_mask(server, bundle)
        data = encode(scene(30, 30), "PNG")
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert set(pool.map(lambda _: post_image(server.url, "/segment", data).status, range(16))) == {200}
        assert batch_histogram(server) == (0.0, 0.0), "no adaptive batching without batching"


def test_two_workers_each_load_the_model(tmp_path: Path) -> None:
    with start_server(cached_toy_bundle(), workers=2, env=LIMITS_ENV, log_path=tmp_path / "log") as server:
        assert len(server.workers) == 4, "two API workers and two model workers"
        data = encode(scene(30, 30), "PNG")
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert set(pool.map(lambda _: post_image(server.url, "/segment", data).status, range(32))) == {200}
    log = (tmp_path / "log").read_text()
    assert log.count("Service cosa_model initialized") == 2


def test_overload_is_shed_with_a_json_503(tmp_path: Path) -> None:
    # a 1 ms latency budget: the queue admits only the model slots, BentoML's batcher sheds at once
    with start_server(cached_toy_bundle(), max_latency_ms=1, env=LIMITS_ENV, log_path=tmp_path / "log") as server:
        data = encode(scene(200, 300), "PNG")
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            replies = list(pool.map(lambda _: post_image(server.url, "/segment", data), range(96)))
        statuses = {reply.status for reply in replies}
        assert statuses <= {200, 503} and 503 in statuses
        for shed in (reply for reply in replies if reply.status == 503):
            assert "COSA_MAX_LATENCY_MS=1" in shed.json()["error"]
            assert int(shed.headers["retry-after"]) >= 1
        assert post_image(server.url, "/segment", data).status == 200
        assert server.leftovers() == server.workers


def test_past_a_tiny_queue_limit_requests_get_503_with_retry_after(tmp_path: Path) -> None:
    # COSA_MAX_QUEUE=2 and a model that takes tens of milliseconds: of 30 clients sending at once
    # (twice each), the ones past the two queued requests are refused at once and told when to retry.
    bundle = cached_toy_bundle(busy=True, input_size=(160, 160))
    env = {**LIMITS_ENV, "COSA_MAX_QUEUE": "2"}
    with start_server(bundle, env=env, log_path=tmp_path / "log") as server:
        data = encode(scene(120, 160), "JPEG", quality=90)
        go = threading.Barrier(30)

        def two(_: int) -> list:
            go.wait(timeout=60)
            return [post_image(server.url, "/segment", data) for _ in range(2)]

        with concurrent.futures.ThreadPoolExecutor(30) as pool:
            replies = [reply for pair in pool.map(two, range(30)) for reply in pair]
        assert {reply.status for reply in replies} == {200, 503}
        for refused in (reply for reply in replies if reply.status == 503):
            message = refused.json()["error"]
            assert "COSA_MAX_QUEUE=2" in message and "retry after" in message
            assert int(refused.headers["retry-after"]) >= 1
        info = request(server.url, "/info").json()
        assert info["queue"]["limit"] == 2 and info["service"]["max_queue"] == 2
        assert post_image(server.url, "/segment", data).status == 200

"""The BentoML service stops cleanly: SIGTERM ends the server and its workers with exit code 0."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from toy_bundle import cached_toy_bundle

from cosa_sdk.serving.launcher import start_server

from .helpers import LIMITS_ENV, encode, post_image, scene


def test_sigterm_stops_server_and_workers_with_exit_code_0(tmp_path: Path) -> None:
    handle = start_server(cached_toy_bundle(), env=LIMITS_ENV, log_path=tmp_path / "server.log")
    try:
        workers = list(handle.workers)
        assert len(workers) >= 2, "expected the API worker and the model worker"
        assert post_image(handle.url, "/segment", encode(scene(20, 30), "PNG")).status == 200
        handle.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = handle.process.wait(timeout=30)
        elapsed = time.monotonic() - started
    finally:
        handle.stop()
    assert code == 0, handle.log_tail()
    assert elapsed < 15
    assert handle.leftovers() == [], "worker processes outlived the server"
    assert not handle.is_ready(timeout=1)

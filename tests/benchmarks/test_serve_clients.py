"""benchmarks/serve_clients.py: the load test counts only PNG replies as served; refusals with Retry-After and
every other reply are told apart, so a broken server never reads as a fast one."""

from __future__ import annotations

import http.server
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # the repository's benchmarks/

from serve_clients import Burst, LoadPoint, merge, photo_bodies

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    """Replies in turn: PNG, 503 with Retry-After, 503 without it, 200 that is not a PNG, 500."""

    protocol_version = "HTTP/1.1"
    replies: ClassVar[list[tuple[int, bytes, dict[str, str]]]] = [
        (200, PNG, {}),
        (503, b"busy", {"Retry-After": "2"}),
        (503, b"busy", {}),
        (200, b"{}", {}),
        (500, b"x", {}),
    ]
    counter = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            status, body, headers = self.replies[type(self).counter % len(self.replies)]
            type(self).counter += 1
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def scripted_server() -> Iterator[str]:
    _ScriptedHandler.counter = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ScriptedHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_photo_bodies_are_distinct_multipart_jpegs() -> None:
    bodies = photo_bodies(3)
    assert len({body for body, _ in bodies}) == 3
    for body, content_type in bodies:
        boundary = content_type.split("boundary=")[1]
        assert body.startswith(f"--{boundary}\r\n".encode()) and body.endswith(f"--{boundary}--\r\n".encode())
        assert b"\xff\xd8" in body  # the JPEG start-of-image marker


def test_burst_tells_served_refused_and_errors_apart(scripted_server: str) -> None:
    summary = Burst(scripted_server, photo_bodies(2), clients=10).run().summary()
    assert summary["clients"] == 10
    assert (summary["served"], summary["refused_503_retry_after"], summary["errors"]) == (2, 2, 6)
    assert summary["served_share"] == 0.2
    assert summary["retry_after_s"] == [2, 2]
    assert summary["p50_ms"] is not None and summary["p50_ms"] <= summary["max_ms"]


def test_load_point_stops_at_its_count_and_merge_pools_slices(scripted_server: str) -> None:
    first = LoadPoint(scripted_server, photo_bodies(2), clients=2, seconds=30, max_requests=10).run()
    second = LoadPoint(scripted_server, photo_bodies(2), clients=1, seconds=30, max_requests=5).run()
    assert len(first.latencies) + len(first.errors) == 10
    assert len(first.latencies) == 2  # one PNG in every five replies
    point = merge([first, second], "on", clients=2)
    assert point["requests"] == len(first.latencies) + len(second.latencies) == 3
    assert point["errors"] == 12
    assert point["requests_per_s"] > 0 and len(point["requests_per_s_by_slice"]) == 2

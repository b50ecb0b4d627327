"""The BentoML service over real HTTP, health and description: /livez, /readyz, /info (GET and POST)."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import cosa_sdk
from cosa_sdk.serving.launcher import LocalServer

from .helpers import get, request


def test_ready_means_model_loaded(server: LocalServer, segmenter: cosa_sdk.Segmenter) -> None:
    assert get(server.url, "/livez") == 200
    assert get(server.url, "/readyz") == 200
    info = request(server.url, "/info").json()
    assert info["classes"] == segmenter.classes
    assert info["input_size"] == list(segmenter.input_size)
    assert info["backend"] == segmenter.backend == "onnxruntime"
    assert info["palette"] == [list(c) for c in segmenter.palette]
    assert info["service"]["max_batch_size"] == 8 and info["service"]["batching"] is True
    assert info["service"]["max_upload_mb"] == 1.0 and info["service"]["max_side"] == 8192
    assert "model" not in info["service"], "the bundle path must not leak through /info"


def test_info_ignores_a_body(server: LocalServer) -> None:
    assert request(server.url, "/info", b"{}", "application/json").status == 200


def test_info_answers_get_and_post(server: LocalServer) -> None:
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", "/info")  # what a browser or a first curl sends
        response = connection.getresponse()
        got = json.loads(response.read())
        assert response.status == 200 and response.getheader("Content-Type") == "application/json"
    finally:
        connection.close()
    posted = request(server.url, "/info").json()
    assert got["classes"] == posted["classes"] and got["service"] == posted["service"]
    queue = got["queue"]
    assert queue["limit"] >= queue["model_slots"] == 16 and queue["budget_ms"] == 5000
    assert queue["throughput_rps"] > 0, "the model worker's timed warm-up gives the first estimate"

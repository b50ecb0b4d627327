"""The ecosystem's formats over real HTTP: /segment_hf (Hugging Face), /metrics (Prometheus), /docs.json (OpenAPI).

One `cosa serve` process of its own on a free loopback port with the toy bundle (4 images a batch); `segmenter`
is the SDK on the same bundle (tests/serving/conftest.py).
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image
from toy_bundle import cached_toy_bundle

import cosa_sdk
from cosa_sdk.result import decode_hf
from cosa_sdk.serving.launcher import LocalServer, start_server

from .helpers import GOOD_IMAGES, encode, post_image, scene

SEGMENT_ROUTES = ("/segment", "/segment_json", "/segment_hf", "/overlay")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    log = tmp_path_factory.mktemp("serve") / "server.log"
    env = {"COSA_MAX_UPLOAD_MB": "1"}
    handle = start_server(cached_toy_bundle(), max_batch_size=4, max_latency_ms=5000, env=env, log_path=log)
    try:
        yield handle
    finally:
        handle.stop()


def http_get(url: str, path: str) -> tuple[int, str, bytes]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


# -- Hugging Face image-segmentation format -------------------------------------------------------
def test_segment_hf_is_the_sdk_to_hf_as_json(server: LocalServer, segmenter: cosa_sdk.Segmenter) -> None:
    data = GOOD_IMAGES["jpeg_odd_size"]()
    reply = post_image(server.url, "/segment_hf", data, filename="photo.jpg")
    assert reply.status == 200, reply.body[:300]
    assert reply.content_type.startswith("application/json")
    segments = reply.json()
    expected = segmenter.segment(data).to_hf()
    assert [list(s) for s in segments] == [["score", "label", "mask"]] * len(expected)
    assert [s["label"] for s in segments] == [s["label"] for s in expected] == ["background", "red", "green"]
    assert all(s["score"] is None for s in segments)
    for served, want in zip(decode_hf(segments), expected):
        mask = served["mask"]
        assert isinstance(mask, Image.Image) and mask.mode == "L" and mask.size == (333, 221)
        np.testing.assert_array_equal(np.asarray(mask), np.asarray(want["mask"]))
    with Image.open(io.BytesIO(base64.b64decode(segments[1]["mask"]))) as png:
        assert png.format == "PNG" and png.mode == "L", "masks travel as base64 black-and-white PNGs"


def test_segment_hf_lists_only_the_classes_present(server: LocalServer) -> None:
    red = encode(np.full((24, 32, 3), (230, 30, 30), dtype=np.uint8), "PNG")
    (segment,) = post_image(server.url, "/segment_hf", red).json()
    assert segment["label"] == "red"
    with Image.open(io.BytesIO(base64.b64decode(segment["mask"]))) as mask:
        assert mask.size == (32, 24) and np.asarray(mask).min() == 255


def test_segment_hf_refuses_bad_uploads_like_the_other_routes(server: LocalServer) -> None:
    reply = post_image(server.url, "/segment_hf", b"these are not pixels")
    assert reply.status == 415 and "not an image" in reply.json()["error"]
    reply = post_image(server.url, "/segment_hf", b"\xff\xd8" + b"\0" * (1024 * 1024 + 100))
    assert reply.status == 413, "the upload guard must cover /segment_hf"


def test_python_client_calls_segment_hf(server: LocalServer, tmp_path: Path) -> None:
    import bentoml

    path = tmp_path / "scene.png"
    path.write_bytes(encode(scene(40, 60), "PNG"))
    with bentoml.SyncHTTPClient(server.url, timeout=60) as client:
        segments = client.segment_hf(image=path)
    assert [s["label"] for s in segments] == ["background", "red", "green"]
    assert decode_hf(segments)[0]["mask"].size == (60, 40)


# -- Prometheus metrics ---------------------------------------------------------------------------
def request_count(text: str, endpoint: str, status: str = "200") -> float:
    """bentoml_service_request_total for one endpoint of the API service (not the model worker)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith("bentoml_service_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if (
            labels.get("endpoint") == endpoint
            and labels.get("http_response_code") == status
            and labels.get("service_name") == "cosa_segmentation"
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_requests_per_endpoint(server: LocalServer) -> None:
    status, content_type, body = http_get(server.url, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    before = {route: request_count(body.decode(), route) for route in ("/segment", "/segment_hf")}
    data = encode(scene(30, 40), "PNG")
    for _ in range(2):
        assert post_image(server.url, "/segment_hf", data).status == 200
    assert post_image(server.url, "/segment", data).status == 200
    text = http_get(server.url, "/metrics")[2].decode()
    assert "# TYPE bentoml_service_request_total counter" in text
    assert request_count(text, "/segment_hf") - before["/segment_hf"] == 2
    assert request_count(text, "/segment") - before["/segment"] == 1
    assert "bentoml_service_request_duration_seconds_bucket" in text


# -- OpenAPI --------------------------------------------------------------------------------------
def test_openapi_spec_lists_every_endpoint(server: LocalServer) -> None:
    status, content_type, body = http_get(server.url, "/docs.json")
    assert status == 200 and content_type.startswith("application/json")
    spec = json.loads(body)
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    for route in SEGMENT_ROUTES:
        operation = paths[route]["post"]
        form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert form["required"] == ["image"] and form["properties"]["image"]["format"] == "binary", route
        assert operation["description"].strip(), f"{route} needs a description"
    assert "/info" in paths and "/metrics" in paths
    hf = paths["/segment_hf"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert hf["type"] == "array"
    item = spec["components"]["schemas"][hf["items"]["$ref"].rsplit("/", 1)[1]]
    assert set(item["properties"]) == {"score", "label", "mask"}
    assert "base64" in item["properties"]["mask"]["description"]


def test_docs_page_shows_the_spec_with_local_swagger_ui(server: LocalServer) -> None:
    status, content_type, body = http_get(server.url, "/docs")
    assert status == 200 and content_type.startswith("text/html")
    page = body.decode()
    assert '"/docs.json"' in page
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets and all(asset.startswith("/static_content/") for asset in assets), "no assets from the internet"
    for asset in assets:
        assert http_get(server.url, asset)[0] == 200, asset

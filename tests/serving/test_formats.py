"""The ecosystem's formats over real HTTP: /segment_hf (Hugging Face), /metrics (Prometheus), /docs.json (OpenAPI).

One `cosa serve` process of its own on a free loopback port with the toy bundle that has class scores (4 images
a batch; its masks are those of the plain toy bundle); `segmenter` is the SDK on the plain toy bundle
(tests/serving/conftest.py), `scored` on this server's.
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

from .helpers import GOOD_IMAGES, encode, multipart, png_values, post_image, request, scene

SEGMENT_ROUTES = ("/segment", "/segment_json", "/segment_hf", "/overlay")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    log = tmp_path_factory.mktemp("serve") / "server.log"
    env = {"COSA_MAX_UPLOAD_MB": "1"}
    handle = start_server(
        cached_toy_bundle(class_scores=True), max_batch_size=4, max_latency_ms=5000, env=env, log_path=log
    )
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def scored() -> Iterator[cosa_sdk.Segmenter]:
    with cosa_sdk.load(cached_toy_bundle(class_scores=True)) as seg:
        yield seg


def faint_red() -> bytes:
    """Gray with a faint red square: red pixels, but the classifier calls red absent."""
    image = np.full((48, 64, 3), 128, dtype=np.uint8)
    image[8:40, 8:40] = (170, 100, 100)
    return encode(image, "PNG")


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


# -- class scores and drop_absent -----------------------------------------------------------------
def test_segment_json_carries_the_sdk_class_scores(server: LocalServer, scored: cosa_sdk.Segmenter) -> None:
    data = GOOD_IMAGES["jpeg_odd_size"]()
    reply = post_image(server.url, "/segment_json", data)
    assert reply.status == 200, reply.body[:300]
    assert reply.json()["class_scores"] == scored.segment(data).to_dict()["class_scores"]
    status, _, body = http_get(server.url, "/info")
    info = json.loads(body)
    assert status == 200 and info["has_class_scores"] is True
    assert info["postprocess"] == {"drop_absent": False, "class_threshold": 0.5, "edge_aware": False}


def test_drop_absent_option_per_request(server: LocalServer, scored: cosa_sdk.Segmenter) -> None:
    data = faint_red()
    kept, dropped = (scored.segment(data, drop_absent=d).to_dict() for d in (False, True))
    assert "red" in kept["present"] and list(dropped["present"]) == ["background"]
    served = post_image(server.url, "/segment_json", data).json()
    assert served["present"] == kept["present"]  # left out: the bundle's default (keep)
    assert post_image(server.url, "/segment_json", data, drop_absent="true").json()["present"] == dropped["present"]
    body, content_type = multipart({"image": ("a.png", data, "image/png")})
    reply = request(server.url, "/segment?drop_absent=1", body, content_type)
    assert reply.status == 200 and (png_values(reply.body) == 0).all()
    reply = post_image(server.url, "/overlay", data, drop_absent="perhaps")
    assert reply.status == 400 and "drop_absent" in reply.json()["error"]


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

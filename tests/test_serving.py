"""The BentoML service over real HTTP: one `cosa serve` process on a free loopback port, toy bundle.

Masks must equal the SDK's masks for the same bytes; hostile uploads must get a 4xx JSON error and
leave the server healthy (same worker processes, bounded memory).
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import io
import json
import signal
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image
from toy_bundle import cached_toy_bundle

import cosa_sdk
from cosa_sdk.result import decode_mask
from cosa_sdk.serving.launcher import LocalServer, start_server

LIMITS_ENV = {"COSA_MAX_UPLOAD_MB": "1", "COSA_MAX_PIXELS": "4000000", "COSA_MAX_SIDE": "8192"}


# -- plain HTTP (what curl does) ------------------------------------------------------------------
@dataclass
class Reply:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case

    def json(self) -> Any:
        return json.loads(self.body)


def multipart(
    files: dict[str, tuple[str, bytes, str]] | Iterable[tuple[str, tuple[str, bytes, str]]],
    fields: dict[str, str] | None = None,
) -> tuple[bytes, str]:
    """A multipart/form-data body: files as (filename, bytes, content type), plain text fields."""
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for name, value in (fields or {}).items():
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data, content_type) in files.items() if isinstance(files, dict) else files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        )
        chunks.append(head.encode() + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def request(
    url: str, path: str, body: bytes | Iterator[bytes] | None = None, content_type: str | None = None, **kw: Any
) -> Reply:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    headers = {"Content-Type": content_type} if content_type else {}
    try:
        connection.request("POST", path, body=body, headers=headers, **kw)
        response = connection.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return Reply(response.status, response.getheader("Content-Type", ""), response.read(), headers)
    finally:
        connection.close()


def post_image(url: str, path: str, data: bytes, *, filename: str = "upload.png", **fields: str) -> Reply:
    body, content_type = multipart({"image": (filename, data, "application/octet-stream")}, fields)
    return request(url, path, body, content_type)


def get(url: str, path: str) -> int:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


# -- images ---------------------------------------------------------------------------------------
def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Noise with a red and a green block, so the toy model's masks have all three classes."""
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 140, size=(height, width, 3), dtype=np.uint8)
    image[: height // 2, : width // 2] = (230, 30, 30)
    image[height // 2 :, width // 3 :] = (30, 220, 40)
    return image


def encode(image: Image.Image | np.ndarray, fmt: str, **options: Any) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers rotate it 90 degrees clockwise: the mask must come at 40x90
    return encode(scene(40, 90, seed=3), "JPEG", quality=92, exif=exif.tobytes())


GOOD_IMAGES = {
    "png_rgb": lambda: encode(scene(50, 70), "PNG"),
    "jpeg_odd_size": lambda: encode(scene(221, 333, seed=1), "JPEG", quality=90),
    "png_rgba": lambda: encode(Image.fromarray(scene(64, 48, seed=2)).convert("RGBA"), "PNG"),
    "png_gray": lambda: encode(Image.fromarray(scene(33, 65, seed=4)).convert("L"), "PNG"),
    "jpeg_exif_rotated": exif_rotated_jpeg,
    "webp": lambda: encode(scene(80, 120, seed=5), "WEBP", quality=90),
    "one_pixel": lambda: encode(np.full((1, 1, 3), (230, 30, 30), dtype=np.uint8), "PNG"),
}


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height: a decompression bomb for a naive decoder."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


# -- the server -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    log = tmp_path_factory.mktemp("serve") / "server.log"
    handle = start_server(cached_toy_bundle(), max_batch_size=8, max_latency_ms=5000, env=LIMITS_ENV, log_path=log)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def segmenter() -> Iterator[cosa_sdk.Segmenter]:
    with cosa_sdk.load(cached_toy_bundle()) as seg:
        yield seg


@pytest.fixture(scope="module")
def client(server: LocalServer) -> Iterator[Any]:
    import bentoml

    with bentoml.SyncHTTPClient(server.url, timeout=60) as http_client:
        yield http_client


def sdk_mask(segmenter: cosa_sdk.Segmenter, data: bytes) -> np.ndarray:
    return segmenter.segment(data).mask


def png_values(body: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(body)) as image:
        assert image.mode == "P", "the mask must be a palette PNG whose values are class indices"
        return np.asarray(image).copy()


# -- health and description -----------------------------------------------------------------------
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


# -- results equal the SDK's ----------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(GOOD_IMAGES))
def test_segment_png_equals_sdk_mask(server: LocalServer, segmenter: cosa_sdk.Segmenter, name: str) -> None:
    data = GOOD_IMAGES[name]()
    reply = post_image(server.url, "/segment", data)
    assert reply.status == 200, reply.body[:300]
    assert reply.content_type == "image/png"
    served = png_values(reply.body)
    expected = sdk_mask(segmenter, data)
    assert served.shape == expected.shape
    np.testing.assert_array_equal(served, expected)


def test_exif_rotation_gives_displayed_size(server: LocalServer) -> None:
    reply = post_image(server.url, "/segment", exif_rotated_jpeg(), filename="rotated.jpg")
    assert png_values(reply.body).shape == (90, 40)


@pytest.mark.parametrize("how", ["form", "query"])
def test_segment_json_with_rle_and_png_masks(server: LocalServer, segmenter: cosa_sdk.Segmenter, how: str) -> None:
    data = GOOD_IMAGES["jpeg_odd_size"]()
    expected = segmenter.segment(data)
    for encoding in ("rle", "png"):
        if how == "form":
            reply = post_image(server.url, "/segment_json", data, mask=encoding)
        else:
            body, content_type = multipart({"image": ("a.jpg", data, "image/jpeg")})
            reply = request(server.url, f"/segment_json?mask={encoding}", body, content_type)
        assert reply.status == 200, reply.body[:300]
        summary = reply.json()
        assert summary["mask"]["encoding"] == ("rle" if encoding == "rle" else "png-base64")
        np.testing.assert_array_equal(decode_mask(summary["mask"]), expected.mask)
        assert (summary["width"], summary["height"]) == (333, 221)
        assert summary["model"] == "toy" and summary["backend"] == "onnxruntime"
        assert summary["present"].keys() == expected.present.keys()
        for cls, fraction in expected.present.items():
            assert summary["present"][cls] == pytest.approx(fraction, abs=1e-6)
        assert {"decode", "preprocess", "model", "postprocess", "total"} <= summary["timings"].keys()


def test_segment_json_without_mask_is_a_summary(server: LocalServer) -> None:
    summary = post_image(server.url, "/segment_json", GOOD_IMAGES["png_rgb"]()).json()
    assert "mask" not in summary
    assert sum(summary["present"].values()) == pytest.approx(1.0, abs=1e-5)
    assert set(summary["present"]) == {"background", "red", "green"}


def test_overlay_is_the_sdk_overlay_as_jpeg(server: LocalServer, segmenter: cosa_sdk.Segmenter) -> None:
    data = GOOD_IMAGES["jpeg_odd_size"]()
    reply = post_image(server.url, "/overlay", data, alpha="0.6")
    assert reply.status == 200 and reply.content_type == "image/jpeg"
    with Image.open(io.BytesIO(reply.body)) as served:
        assert served.format == "JPEG" and served.size == (333, 221)
        served_pixels = np.asarray(served.convert("RGB"), dtype=np.float32)
    expected = np.asarray(segmenter.segment(data).overlay(alpha=0.6), dtype=np.float32)
    assert np.abs(served_pixels - expected).mean() < 4.0  # JPEG loss only
    plain = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)
    assert np.abs(served_pixels - plain).mean() > 10.0, "the overlay must differ from the plain upload"


def test_sync_http_client_calls_every_endpoint(client: Any, segmenter: cosa_sdk.Segmenter, tmp_path: Path) -> None:
    path = tmp_path / "scene.png"
    path.write_bytes(GOOD_IMAGES["png_rgb"]())
    expected = segmenter.segment(path)
    info = client.info()
    assert info["classes"] == segmenter.classes
    mask_image = client.segment(image=path)
    np.testing.assert_array_equal(np.asarray(mask_image), expected.mask)
    summary = client.segment_json(image=path, mask="rle")
    np.testing.assert_array_equal(decode_mask(summary["mask"]), expected.mask)
    overlay = client.overlay(image=path, alpha=0.5)
    assert overlay.size == (70, 50)
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"these are not pixels")
    import bentoml

    with pytest.raises(bentoml.exceptions.BentoMLException) as err:
        client.segment(image=bad)
    assert "not an image" in str(err.value)


def test_concurrent_requests_all_answer_their_own_image(server: LocalServer, segmenter: cosa_sdk.Segmenter) -> None:
    images = [encode(scene(40 + 7 * i, 90 - 5 * i, seed=10 + i), "PNG") for i in range(12)]

    def one(data: bytes) -> np.ndarray:
        reply = post_image(server.url, "/segment", data)
        assert reply.status == 200, reply.body[:300]
        return png_values(reply.body)

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        served = list(pool.map(one, images))
    for data, mask in zip(images, served):
        expected = sdk_mask(segmenter, data)
        assert mask.shape == expected.shape  # each answer is for its own upload
        assert (mask == expected).mean() > 0.999


# -- hostile input --------------------------------------------------------------------------------
def _truncated_jpeg() -> bytes:
    data = encode(scene(300, 400, seed=7), "JPEG", quality=95)
    return data[: len(data) // 2]


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, total, size):
        yield b"x" * min(size, total - start)


def _over_limit_chunked() -> tuple[Iterator[bytes], str]:
    boundary = uuid.uuid4().hex
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n\r\n'.encode()

    def body() -> Iterator[bytes]:
        yield head
        yield from _chunks(3 * 1024 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    return body(), f"multipart/form-data; boundary={boundary}"


def hostile_requests() -> dict[str, tuple[str, Any, str | None, int, dict[str, Any]]]:
    """name -> (path, body, content type, expected status, extra request options)."""
    cases: dict[str, tuple[str, Any, str | None, int, dict[str, Any]]] = {}

    def upload(name: str, data: bytes, status: int, path: str = "/segment", **fields: str) -> None:
        body, content_type = multipart({"image": (f"{name}.jpg", data, "image/jpeg")}, fields)
        cases[name] = (path, body, content_type, status, {})

    upload("non_image_bytes", b"GIF? no: just some text that is not an image\n" * 20, 415)
    upload("html_as_jpeg", b"<html><body>hello</body></html>", 415)
    upload("truncated_jpeg", _truncated_jpeg(), 400)
    upload("zero_bytes", b"", 400)
    upload("png_bomb_50000x50000", png_header_only(50000, 50000), 413)
    upload("side_20000_pixels", encode(np.zeros((4, 20000, 3), dtype=np.uint8), "PNG"), 413)
    upload("over_pixel_limit", png_header_only(3000, 2000), 413)
    upload("over_upload_limit", b"\xff\xd8" + b"\0" * (1024 * 1024 + 100), 413)
    upload("bad_mask_option", encode(scene(20, 20), "PNG"), 400, path="/segment_json", mask="jpeg")
    upload("alpha_out_of_range", encode(scene(20, 20), "PNG"), 400, path="/overlay", alpha="7")
    upload("alpha_not_a_number", encode(scene(20, 20), "PNG"), 400, path="/overlay", alpha="lots")
    cases["json_body"] = ("/segment", json.dumps({"image": "/etc/passwd"}).encode(), "application/json", 415, {})
    cases["text_plain"] = ("/segment", b"hello", "text/plain", 415, {})
    cases["no_content_type"] = ("/segment_json", encode(scene(20, 20), "PNG"), None, 415, {})
    cases["urlencoded_url"] = (
        "/overlay",
        b"image=http://127.0.0.1:1/x.jpg",
        "application/x-www-form-urlencoded",
        415,
        {},
    )
    body, content_type = multipart({"photo": ("a.png", encode(scene(20, 20), "PNG"), "image/png")})
    cases["missing_field"] = ("/segment", body, content_type, 400, {})
    body, content_type = multipart({}, {"image": "http://127.0.0.1:1/steal.jpg"})
    cases["text_value_for_file"] = ("/segment", body, content_type, 400, {})
    png = encode(scene(20, 20), "PNG")
    body, content_type = multipart([("image", ("a.png", png, "image/png")), ("image", ("b.png", png, "image/png"))])
    cases["two_images"] = ("/segment", body, content_type, 400, {})
    body, content_type = multipart({"image": ("a.png", png, "image/png")}, {f"field{i}": "x" for i in range(3000)})
    cases["thousands_of_fields"] = ("/segment", body, content_type, 400, {})
    body, _ = multipart({"image": ("a.png", png, "image/png")})
    cases["wrong_boundary"] = ("/segment", body, "multipart/form-data; boundary=nothere", 400, {})
    cases["cut_multipart"] = (
        "/segment",
        body[: len(body) // 2],
        "multipart/form-data; boundary=" + body[2:34].decode(),
        400,
        {},
    )
    chunked, content_type = _over_limit_chunked()
    cases["over_limit_chunked"] = ("/segment", chunked, content_type, 413, {"encode_chunked": True})
    return cases


def server_rss_mb(server: LocalServer) -> float:
    total = 0
    for pid in server.workers:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def test_hostile_uploads_get_json_4xx_and_server_stays_healthy(server: LocalServer) -> None:
    workers_before = list(server.workers)
    assert workers_before, "the harness must have seen the worker processes"
    rss_before = server_rss_mb(server)
    good = encode(scene(30, 40), "PNG")
    failures = []
    for name, (path, body, content_type, status, options) in hostile_requests().items():
        reply = request(server.url, path, body, content_type, **options)
        try:
            payload = reply.json()
        except ValueError:
            payload = None
        if reply.status != status or not isinstance(payload, dict) or not payload.get("error"):
            failures.append(f"{name}: {reply.status} {reply.body[:200]!r} (expected {status} with a JSON error)")
        elif "Traceback" in payload["error"]:
            failures.append(f"{name}: traceback in the error: {payload['error'][:200]}")
        after = post_image(server.url, "/segment", good)
        if after.status != 200:
            failures.append(f"{name}: the next good request failed with {after.status}")
    assert not failures, "\n".join(failures)
    assert get(server.url, "/readyz") == 200
    assert server.leftovers() == workers_before, "a worker process died (and was respawned)"
    assert server_rss_mb(server) - rss_before < 150, "memory grew while refusing bombs"


def test_error_messages_say_what_to_fix(server: LocalServer) -> None:
    reply = post_image(server.url, "/segment", png_header_only(50000, 50000))
    assert reply.status == 413 and "limit is 4,000,000 pixels" in reply.json()["error"]
    reply = post_image(server.url, "/segment", png_header_only(3000, 2000))
    assert "3000x2000" in reply.json()["error"] and "4.0 MP" in reply.json()["error"]
    body, content_type = multipart({"file": ("a.png", b"x", "image/png")})
    message = request(server.url, "/segment", body, content_type).json()["error"]
    assert "image" in message and "curl -F image=@" in message


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


def test_serving_mask_matches_base64_png_exactly(server: LocalServer, segmenter: cosa_sdk.Segmenter) -> None:
    data = GOOD_IMAGES["png_gray"]()
    summary = post_image(server.url, "/segment_json", data, mask="png").json()
    png = base64.b64decode(summary["mask"]["data"])
    np.testing.assert_array_equal(png_values(png), sdk_mask(segmenter, data))


# -- batching and shutdown ------------------------------------------------------------------------
def batch_histogram(server: LocalServer) -> tuple[float, float]:
    """(number of model calls, number of images) from BentoML's adaptive batch size histogram."""
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    values = {"count": 0.0, "sum": 0.0}
    for line in text.splitlines():
        if line.startswith("bentoml_service_adaptive_batch_size_") and 'method_name="infer"' in line:
            kind = line.split("{")[0].rsplit("_", 1)[1]
            if kind in values:
                values[kind] += float(line.rsplit(" ", 1)[1])
    return values["count"], values["sum"]


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

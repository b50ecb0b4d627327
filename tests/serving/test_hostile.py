"""The BentoML service over real HTTP, hostile input: every bad upload gets a 4xx JSON error that says what to
fix, and leaves the server healthy (same worker processes, bounded memory)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cosa_sdk.serving.launcher import LocalServer

from .helpers import encode, get, multipart, png_header_only, post_image, request, scene


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

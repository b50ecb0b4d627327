"""HTTP and image helpers of the serving tests: plain HTTP requests (what curl does) and test images."""

from __future__ import annotations

import http.client
import io
import json
import struct
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

import cosa_sdk
from cosa_sdk.serving.launcher import LocalServer

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


def sdk_mask(segmenter: cosa_sdk.Segmenter, data: bytes) -> np.ndarray:
    return segmenter.segment(data).mask


def png_values(body: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(body)) as image:
        assert image.mode == "P", "the mask must be a palette PNG whose values are class indices"
        return np.asarray(image).copy()


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

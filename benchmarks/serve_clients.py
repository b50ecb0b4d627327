"""Client side of the serving load test: distinct JPEG uploads, a keep-alive load point and a burst.

`LoadPoint` keeps `clients` connections posting back to back for a bounded time and count; `Burst` opens one
new connection per client and sends every upload at the same moment. Both count any reply that is not a PNG
as an error, so a broken server never reads as a fast one.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import io
import os
import statistics
import threading
import time
import uuid
from typing import Any

import numpy as np
from PIL import Image


def photo_bodies(count: int, seed: int = 0) -> list[tuple[bytes, str]]:
    """Multipart bodies of distinct 500x375 JPEG 'photos' (smooth colour fields plus noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    bodies = []
    for _ in range(count):
        phase = rng.uniform(0, 6.3, size=3)
        image = np.stack([128 + 90 * np.sin(xx / 60 + yy / 90 + p) for p in phase], axis=-1)
        image += rng.normal(0, 12, size=image.shape)
        buffer = io.BytesIO()
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        boundary = uuid.uuid4().hex
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo.jpg"\r\n'
        head += "Content-Type: image/jpeg\r\n\r\n"
        body = head.encode() + buffer.getvalue() + f"\r\n--{boundary}--\r\n".encode()
        bodies.append((body, f"multipart/form-data; boundary={boundary}"))
    return bodies


class LoadPoint:
    """`clients` threads, each posting back to back on its own keep-alive connection until time or count run out."""

    def __init__(self, url: str, bodies: list[tuple[bytes, str]], clients: int, seconds: float, max_requests: int):
        host, port = url.removeprefix("http://").split(":")
        self.address = (host, int(port))
        self.bodies = bodies
        self.clients = clients
        self.seconds = seconds
        self.max_requests = max_requests
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._issued = 0
        self._lock = threading.Lock()
        self.wall = 0.0
        self.load = 0.0

    def _take(self) -> int | None:
        with self._lock:
            if self._issued >= self.max_requests or time.perf_counter() >= self._deadline:
                return None
            self._issued += 1
            return self._issued

    def _client(self, index: int) -> None:
        connection = http.client.HTTPConnection(*self.address, timeout=120)
        try:
            while (ticket := self._take()) is not None:
                body, content_type = self.bodies[(index + ticket) % len(self.bodies)]
                start = time.perf_counter()
                try:
                    connection.request("POST", "/segment", body=body, headers={"Content-Type": content_type})
                    response = connection.getresponse()
                    payload = response.read()
                except (OSError, http.client.HTTPException) as err:
                    with self._lock:
                        self.errors.append(f"{type(err).__name__}: {err}")
                    connection.close()
                    connection = http.client.HTTPConnection(*self.address, timeout=120)
                    continue
                elapsed = time.perf_counter() - start
                with self._lock:
                    if response.status == 200 and payload.startswith(b"\x89PNG"):
                        self.latencies.append(elapsed)
                    else:
                        self.errors.append(f"HTTP {response.status}: {payload[:160]!r}")
        finally:
            connection.close()

    def run(self) -> LoadPoint:
        self.load = round(os.getloadavg()[0], 2)
        self._deadline = time.perf_counter() + self.seconds
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(self.clients) as pool:
            list(pool.map(self._client, range(self.clients)))
        self.wall = time.perf_counter() - start
        return self


class Burst:
    """`clients` threads, each with its own new connection, posting one upload the moment all are ready."""

    def __init__(self, url: str, bodies: list[tuple[bytes, str]], clients: int) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.address = (host, int(port))
        self.bodies = bodies
        self.clients = clients
        self.barrier = threading.Barrier(clients)
        self.replies: list[tuple[int | None, float, str | None, str]] = []  # status, seconds, Retry-After, error
        self._lock = threading.Lock()
        self.wall = 0.0
        self.load = 0.0

    def _client(self, index: int) -> None:
        body, content_type = self.bodies[index % len(self.bodies)]
        connection = http.client.HTTPConnection(*self.address, timeout=120)
        self.barrier.wait(timeout=60)
        start = time.perf_counter()
        status, retry_after, error = None, None, ""
        try:
            connection.request("POST", "/segment", body=body, headers={"Content-Type": content_type})
            response = connection.getresponse()
            payload = response.read()
            status, retry_after = response.status, response.getheader("Retry-After")
            if status == 200 and not payload.startswith(b"\x89PNG"):
                error = f"HTTP 200 without a PNG: {payload[:80]!r}"
            elif status != 200:
                error = f"HTTP {status}: {payload[:160]!r}"
        except (OSError, http.client.HTTPException) as err:
            error = f"{type(err).__name__}: {err}"
        finally:
            connection.close()
        with self._lock:
            self.replies.append((status, time.perf_counter() - start, retry_after, error))

    def run(self) -> Burst:
        self.load = round(os.getloadavg()[0], 2)
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(self.clients) as pool:
            list(pool.map(self._client, range(self.clients)))
        self.wall = time.perf_counter() - start
        return self

    def summary(self) -> dict[str, Any]:
        served: list[float] = []
        retry_after: list[int] = []  # one per refusal: 503 with a Retry-After of whole seconds
        errors: list[str] = []  # anything else, a 503 without Retry-After included
        for status, seconds, retry, error in self.replies:
            if status == 200 and not error:
                served.append(seconds)
            elif status == 503 and retry is not None and retry.isdigit():
                retry_after.append(int(retry))
            else:
                errors.append(error)
        served.sort()
        retry_after.sort()

        def quantile(q: float) -> float | None:
            return round(served[min(len(served) - 1, round(q * (len(served) - 1)))] * 1000, 1) if served else None

        return {
            "clients": self.clients,
            "served": len(served),
            "refused_503_retry_after": len(retry_after),
            "errors": len(errors),
            "error_samples": errors[:3],
            "served_share": round(len(served) / self.clients, 4),
            "p50_ms": quantile(0.50),
            "p99_ms": quantile(0.99),
            "max_ms": quantile(1.0),
            "seconds": round(self.wall, 2),
            "retry_after_s": [retry_after[0], retry_after[-1]] if retry_after else None,
            "loadavg_1min": self.load,
        }


def merge(slices: list[LoadPoint], label: str, clients: int) -> dict[str, Any]:
    """One point from interleaved slices: total requests over total time, pooled latency quantiles."""
    ordered = sorted(latency for part in slices for latency in part.latencies)
    wall = sum(part.wall for part in slices)
    errors = [error for part in slices for error in part.errors]

    def quantile(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000, 1) if ordered else None

    return {
        "batching": label,
        "clients": clients,
        "requests": len(ordered),
        "errors": len(errors),
        "error_samples": errors[:3],
        "seconds": round(wall, 2),
        "requests_per_s": round(len(ordered) / wall, 3) if wall else 0.0,
        "requests_per_s_by_slice": [round(len(part.latencies) / part.wall, 2) for part in slices],
        "p50_ms": quantile(0.50),
        "p99_ms": quantile(0.99),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 1) if ordered else None,
        "loadavg_1min": [part.load for part in slices],
    }

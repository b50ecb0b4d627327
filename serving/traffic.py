"""Traffic control in the API worker: the admission queue in front of the model worker, and GET aliases.

A burst of uploads is queued and served, not dropped. Each API worker keeps one `AdmissionQueue`:

- It admits a request while the requests already admitted can be served within the latency budget
  (COSA_MAX_LATENCY_MS) at the measured throughput:

      limit = COSA_MAX_QUEUE                                   when set (> 0)
      limit = max(model_slots, ceil(throughput x budget_s))    otherwise

  A request past the limit gets `503` at once, with `Retry-After: ceil(admitted / throughput)`
  seconds: by then the requests ahead of it have been served.
- Admitted requests wait in FIFO order for one of `model_slots` (2 x COSA_MAX_BATCH_SIZE): one batch
  running in the model worker and the next one forming in BentoML's batcher. BentoML's batcher so
  never holds more than about two batches, far less than its `max_latency_ms` (the same budget)
  allows, and does not shed admitted requests; should it still refuse one, the service retries it
  while the request's budget lasts (`service.CosaSegmentation._call_model`).
- Throughput is requests completed per second of model-busy time (time with at least one request
  past the gate), over the last `WINDOW` completions. Until `MIN_SAMPLES` requests have completed it
  is the prior: 1 / the model worker's timed warm-up of one image (no batching gain: conservative).

Everything here runs on the API worker's one event loop, so plain counters need no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

from .uploads import UploadError

WINDOW = 64  # completions the throughput is measured over
MIN_SAMPLES = 8  # completions before the measurement replaces the prior


class QueueFull(UploadError):
    """A 503 refusal that tells the client when to come back (`Retry-After`, whole seconds)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(503, message)
        self.retry_after = max(1, int(retry_after))


class ThroughputMeter:
    """Requests completed per second of busy time; idle gaps between requests do not count."""

    def __init__(
        self, *, window: int = WINDOW, min_samples: int = MIN_SAMPLES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        self.min_samples = min_samples
        self.prior_rps: float | None = None
        self._busy = 0.0  # busy seconds up to self._mark
        self._mark = clock()
        self._active = 0
        self._done: deque[float] = deque([0.0], maxlen=window + 1)  # busy clock at each completion

    def _advance(self) -> None:
        now = self.clock()
        if self._active:
            self._busy += now - self._mark
        self._mark = now

    def started(self) -> None:
        self._advance()
        self._active += 1

    def finished(self, served: bool) -> None:
        self._advance()
        self._active -= 1
        if served:
            self._done.append(self._busy)

    @property
    def measured_rps(self) -> float | None:
        count = len(self._done) - 1
        span = self._done[-1] - self._done[0]
        if count < self.min_samples or span <= 0:
            return None
        return count / span

    @property
    def rps(self) -> float | None:
        """The measured throughput, else the prior; None before either exists."""
        return self.measured_rps or self.prior_rps


class AdmissionQueue:
    """Admission limit + FIFO gate to the model for one API worker (see the module docstring)."""

    def __init__(
        self, *, budget_s: float, model_slots: int, max_queue: int = 0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.budget_s = float(budget_s)
        self.model_slots = max(1, int(model_slots))
        self.max_queue = int(max_queue)
        self.meter = ThroughputMeter(clock=clock)
        self.admitted = 0  # admitted and not finished: waiting, being decoded, or in the model
        self._free = self.model_slots
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        """Most requests admitted at once; the formula is in the module docstring."""
        if self.max_queue > 0:
            return self.max_queue
        rate = self.meter.rps
        if rate is None:
            return self.model_slots
        return max(self.model_slots, math.ceil(rate * self.budget_s))

    def retry_after(self) -> int:
        """Seconds until the requests admitted now have been served, at least 1."""
        rate = self.meter.rps
        return max(1, math.ceil(self.admitted / rate)) if rate else 1

    def status(self) -> dict[str, Any]:
        """The queue's state for /info."""
        measured = self.meter.measured_rps
        rate = self.meter.rps
        return {
            "limit": self.limit,
            "admitted": self.admitted,
            "in_model": self.model_slots - self._free,
            "model_slots": self.model_slots,
            "budget_ms": round(self.budget_s * 1000),
            "throughput_rps": round(rate, 3) if rate else None,
            "throughput_measured": measured is not None,
        }

    def full(self, reason: str) -> QueueFull:
        """The 503 for a refused request: `reason`, then when to retry."""
        retry = self.retry_after()
        return QueueFull(f"{reason}; retry after {retry} s (the Retry-After header)", retry)

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[float]:
        """Hold a place in the queue; QueueFull at once when it is full. Yields the admission time."""
        limit = self.limit
        if self.admitted >= limit:
            if self.max_queue > 0:
                why = f"COSA_MAX_QUEUE={self.max_queue}"
            else:
                rate = self.meter.rps or 0.0
                why = f"{rate:.1f} requests/s x the latency budget COSA_MAX_LATENCY_MS={self.budget_s * 1000:.0f} ms"
            raise self.full(f"the service is busy: {self.admitted} requests are queued, its limit ({why})")
        self.admitted += 1
        try:
            yield self.meter.clock()
        finally:
            self.admitted -= 1

    @contextlib.asynccontextmanager
    async def model_slot(self) -> AsyncIterator[None]:
        """Wait (FIFO) for a slot in the model worker; a block that ends without error counts as served."""
        await self._acquire()
        self.meter.started()
        served = False
        try:
            yield
            served = True
        finally:
            self.meter.finished(served)
            self._release()

    async def _acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the slot was handed over just as this request was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes straight to the longest waiter
                return
        self._free += 1


class GetAlias:
    """Pure ASGI middleware: `GET path` is served as `POST path` without a body, for read-only APIs.

    BentoML routes every API as POST only; a GET (what a browser or a first `curl` sends) would get a
    plain-text 405.
    """

    def __init__(self, app: Any, *, routes: Collection[str]) -> None:
        self.app = app
        self.routes = frozenset(routes)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") == "GET" and scope.get("path") in self.routes:
            headers = [(k, v) for k, v in scope.get("headers", []) if k not in (b"content-type", b"content-length")]
            scope = {**scope, "method": "POST", "headers": headers}
        await self.app(scope, receive, send)

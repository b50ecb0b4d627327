"""Service settings, read from environment variables so every BentoML worker process sees the same values.

`cosa serve` writes these variables before starting BentoML; `bentoml serve` users set them
themselves. Batching parameters are read when the service module is imported, because BentoML
fixes them when the API is declared.

COSA_MAX_LATENCY_MS is the one latency budget: the longest a request should wait in line for the
model. The admission queue (`traffic.AdmissionQueue`) admits as many requests as the measured
throughput serves within it, and BentoML's batcher gets the same value as its `max_latency_ms`.
`DEFAULT_MAX_LATENCY_MS` is the default of both `cosa serve --max-latency-ms` and the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from cosa_sdk.constants import DEFAULT_MAX_LATENCY_MS
from cosa_sdk.errors import CosaInputError

ENV_MODEL = "COSA_MODEL"
ENV_BACKEND = "COSA_BACKEND"
ENV_MAX_BATCH_SIZE = "COSA_MAX_BATCH_SIZE"
ENV_MAX_LATENCY_MS = "COSA_MAX_LATENCY_MS"
ENV_WORKERS = "COSA_WORKERS"
ENV_MAX_UPLOAD_MB = "COSA_MAX_UPLOAD_MB"
ENV_MAX_PIXELS = "COSA_MAX_PIXELS"
ENV_MAX_SIDE = "COSA_MAX_SIDE"
ENV_TIMEOUT_S = "COSA_TIMEOUT_S"
ENV_THREADS = "COSA_THREADS"
ENV_MAX_QUEUE = "COSA_MAX_QUEUE"

DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_MAX_QUEUE = 0  # 0: sized from throughput x COSA_MAX_LATENCY_MS (see serving/traffic.py)
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_PIXELS = 16_000_000  # the SDK's full-size logits: ~12 bytes x classes x pixels at peak
DEFAULT_MAX_SIDE = 16_384
DEFAULT_TIMEOUT_S = 60


@dataclass(frozen=True)
class ServeSettings:
    """Everything the service reads from its environment; `max_batch_size == 1` turns batching off."""

    model: str = ""
    backend: str = "auto"
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_latency_ms: int = DEFAULT_MAX_LATENCY_MS
    workers: int = 1
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_side: int = DEFAULT_MAX_SIDE
    timeout_s: int = DEFAULT_TIMEOUT_S
    threads: int = 0  # ONNX Runtime intra-op threads per model worker; 0: ONNX Runtime's default (all cores)
    max_queue: int = DEFAULT_MAX_QUEUE  # requests admitted per API worker; 0: throughput x latency budget

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1

    @property
    def model_slots(self) -> int:
        """Admitted requests that may be in the model worker at once (per API worker): one batch running,
        the next one forming in BentoML's batcher; the rest wait in the admission queue."""
        return 2 * self.max_batch_size

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def to_env(self) -> dict[str, str]:
        """The environment variables that reproduce these settings in another process."""
        values = {
            ENV_MODEL: self.model,
            ENV_BACKEND: self.backend,
            ENV_MAX_BATCH_SIZE: self.max_batch_size,
            ENV_MAX_LATENCY_MS: self.max_latency_ms,
            ENV_WORKERS: self.workers,
            ENV_MAX_UPLOAD_MB: self.max_upload_mb,
            ENV_MAX_PIXELS: self.max_pixels,
            ENV_MAX_SIDE: self.max_side,
            ENV_TIMEOUT_S: self.timeout_s,
            ENV_THREADS: self.threads,
            ENV_MAX_QUEUE: self.max_queue,
        }
        return {key: str(value) for key, value in values.items()}

    def public(self) -> dict[str, Any]:
        """JSON-able limits for /info (the model path stays private)."""
        out = asdict(self)
        out.pop("model")
        out["batching"] = self.batching
        return out


def _int(env: Mapping[str, str], key: str, default: int, low: int) -> int:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise CosaInputError(f"{key}={raw!r} must be an integer >= {low}") from None
    if value < low:
        raise CosaInputError(f"{key}={value} must be >= {low}")
    return value


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise CosaInputError(f"{key}={raw!r} must be a number of megabytes > 0") from None
    if not value > 0 or value == float("inf"):
        raise CosaInputError(f"{key}={raw!r} must be a number of megabytes > 0")
    return value


def read_settings(env: Mapping[str, str] | None = None) -> ServeSettings:
    """Settings from `env` (default: os.environ); CosaInputError naming the variable for bad values."""
    env = os.environ if env is None else env
    return ServeSettings(
        model=env.get(ENV_MODEL, "").strip(),
        backend=env.get(ENV_BACKEND, "").strip() or "auto",
        max_batch_size=_int(env, ENV_MAX_BATCH_SIZE, DEFAULT_MAX_BATCH_SIZE, 1),
        max_latency_ms=_int(env, ENV_MAX_LATENCY_MS, DEFAULT_MAX_LATENCY_MS, 1),
        workers=_int(env, ENV_WORKERS, 1, 1),
        max_upload_mb=_float(env, ENV_MAX_UPLOAD_MB, DEFAULT_MAX_UPLOAD_MB),
        max_pixels=_int(env, ENV_MAX_PIXELS, DEFAULT_MAX_PIXELS, 1),
        max_side=_int(env, ENV_MAX_SIDE, DEFAULT_MAX_SIDE, 1),
        timeout_s=_int(env, ENV_TIMEOUT_S, DEFAULT_TIMEOUT_S, 1),
        threads=_int(env, ENV_THREADS, 0, 0),
        max_queue=_int(env, ENV_MAX_QUEUE, DEFAULT_MAX_QUEUE, 0),
    )

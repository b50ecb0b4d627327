"""`time_segment`: the measurement behind `Segmenter.benchmark`, kept apart from segmentation itself."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from cosa_sdk.arguments import positive_int
from cosa_sdk.result import TIMING_KEYS


def time_segment(
    segment: Callable[..., Any], image: Any, *, batch_size: int, runs: int, warmup: int, tta: bool
) -> dict[str, Any]:
    """Time `segment` (a `Segmenter.segment`) on `batch_size` copies of `image` (None: a random 500x375 image)."""
    runs = positive_int(runs, "runs")
    if image is None:
        image = np.random.default_rng(0).integers(0, 256, size=(375, 500, 3), dtype=np.uint8)
    images = [image] * positive_int(batch_size, "batch_size")
    for _ in range(warmup):
        segment(images, tta=tta, batch_size=batch_size, keep_image=False)
    walls, splits = [], []
    for _ in range(runs):
        start = time.perf_counter()
        results = segment(images, tta=tta, batch_size=batch_size, keep_image=False)
        walls.append(time.perf_counter() - start)
        splits.extend(r.timings for r in results)
    split = {k: float(np.mean([s[k] for s in splits])) for k in TIMING_KEYS}
    per_image = sum(split.values())
    return {
        "batch_size": batch_size,
        "tta": tta,
        "images_per_s": len(images) * runs / sum(walls),
        "latency_s": statistics.median(walls),
        "per_image_s": split,
        "outside_model_fraction": (per_image - split["model"]) / per_image if per_image else 0.0,
    }

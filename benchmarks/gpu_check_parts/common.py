"""What the sections share: the plan, the budget, the context passed along, and how a section ends early."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cosa_sdk.training.config import TrainConfig, apply_overrides, preset

REPO = Path(__file__).resolve().parents[2]
PRESET = "voc"
# The released schedule's wall time (CoSA README: VOC, 32k iterations, two RTX 3090s, 2 images each).
REFERENCE = {"hardware": "2x RTX 3090", "global_batch": 4, "iters": 32000, "seconds": 8 * 3600 + 39 * 60}
MIB = 1 << 20


@dataclass
class Plan:
    """Sizes and devices of one run: the GPU check or the CPU smoke test."""

    smoke: bool
    device: str
    iters: int
    warmup: int
    data_spec: str
    overrides: list[str]
    parity_images: int
    latency_batch: int
    runs: int
    cpu_runs: int  # fewer for CPU rows next to a GPU: ViT-B at 448 takes a large share of a second there
    reserve_s: float
    trt_min_s: float
    trt_precisions: list[str]
    skip_steps: int  # first steps of each phase left out of the rates (allocator, autotuning, loader start)


class Budget:
    """Seconds since the script started, against the global budget."""

    def __init__(self, total_s: float) -> None:
        self.start, self.total = time.perf_counter(), total_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.total - self.elapsed()


@dataclass
class Context:
    """What later sections need from earlier ones."""

    plan: Plan
    budget: Budget
    work: Path
    checkpoint: Path | None = None
    bundle: Path | None = None
    source: Any = None  # ExportSource of the exported checkpoint
    pixels: np.ndarray | None = None
    reference: np.ndarray | None = None  # torch fp32 logits of `pixels`


class Skipped(Exception):
    """A section (or runtime row) that cannot run here; recorded as skipped, not failed."""


class PartialFailure(Exception):
    """A section that failed after measuring something: the numbers are stored next to the error."""

    def __init__(self, message: str, numbers: dict[str, Any]) -> None:
        super().__init__(message)
        self.numbers = numbers


def train_config(plan: Plan, extra: list[str]) -> TrainConfig:
    """The preset with the plan's overrides, then the user's `--set key=value` ones (as `cosa train` does)."""
    return apply_overrides(preset(PRESET), [*plan.overrides, *extra])


def num(value: float | None, fmt: str) -> str:
    """`value` formatted for a table, or n/a."""
    return "n/a" if value is None else format(value, fmt)

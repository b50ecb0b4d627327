"""The one interface every inference backend offers the Segmenter."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Backend(ABC):
    """Runs a normalised image batch (N, 3, H, W) float32 and returns logits (N, K, H, W) float32.

    `fixed_batch` / `fixed_size` are set when the model only accepts that batch size or (H, W);
    `max_batch` caps the batch (TensorRT optimisation profiles). `run` must be safe to call from
    several threads at once. `has_class_scores` is True when the model also gives the classifier's
    image-level logits (N, C), which `run_with_scores` returns beside the logits.
    """

    name: str = ""
    device: str = "cpu"
    fixed_batch: int | None = None
    max_batch: int | None = None
    fixed_size: tuple[int, int] | None = None
    num_outputs: int | None = None
    has_class_scores: bool = False

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a contiguous float32 batch."""

    def run_with_scores(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits, image-level class logits (N, C) float32 or None when the model has none), one model pass."""
        return self.run(batch), None

    def accepts_size(self, height: int, width: int) -> bool:
        """Whether the model takes an (height, width) input."""
        return self.fixed_size is None or self.fixed_size == (height, width)

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to release
        """Release device memory and sessions early (optional)."""

    def describe(self) -> dict[str, object]:
        return {
            "backend": self.name,
            "device": self.device,
            "fixed_batch": self.fixed_batch,
            "fixed_size": list(self.fixed_size) if self.fixed_size else None,
            "has_class_scores": self.has_class_scores,
        }

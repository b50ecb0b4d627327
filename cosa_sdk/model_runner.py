"""`ModelRunner`: a bundle's model on one backend, from normalised batches to logits at the input size.

It checks that the model and cosa.json belong together, splits or pads batches to what the graph accepts
and fuses the TTA passes, so `Segmenter` only deals with images and results.
"""

from __future__ import annotations

import numpy as np

from cosa_sdk.backends.base import Backend
from cosa_sdk.bundle import Bundle
from cosa_sdk.errors import CosaModelError
from cosa_sdk.preprocess import resize_bilinear, sigmoid


class ModelRunner:
    """Runs `backend` for `bundle`; stateless per call, so thread-safe as the backends' `run` is."""

    def __init__(self, bundle: Bundle, backend: Backend) -> None:
        self.bundle = bundle
        self.backend = backend
        if backend.num_outputs is not None and backend.num_outputs != bundle.num_classes:
            raise CosaModelError(
                f"the model outputs {backend.num_outputs} classes but cosa.json lists {bundle.num_classes} "
                "classes; the bundle's files do not belong together (re-export it)"
            )
        if backend.fixed_size is not None and backend.fixed_size != bundle.input_size:
            raise CosaModelError(
                f"the model takes {backend.fixed_size[0]}x{backend.fixed_size[1]} images but cosa.json says "
                f"input_size {list(bundle.input_size)}; the bundle's files do not belong together (re-export it)"
            )
        if bundle.postprocess.drop_absent and not backend.has_class_scores:
            raise CosaModelError(
                f"cosa.json asks for drop_absent by default but the {backend.name} model gives no class scores; "
                "the bundle's files do not belong together (re-export it with `cosa export`)"
            )
        if backend.num_outputs is None:  # the graph does not state K: one probe run checks it at load
            self.run(np.zeros((1, 3, *bundle.input_size), dtype=np.float32))

    @property
    def dynamic(self) -> bool:
        return self.backend.fixed_size is None

    def tta_sizes(self) -> list[tuple[int, int]]:
        """The bundle's TTA scales times the input size, rounded to the patch size; only the input size
        for a fixed-size graph."""
        height, width = self.bundle.input_size
        if not self.dynamic:
            return [(height, width)]
        patch = self.bundle.patch_size
        sizes: list[tuple[int, int]] = []
        for scale in self.bundle.tta_scales:
            size = (max(patch, round(scale * height / patch) * patch), max(patch, round(scale * width / patch) * patch))
            if size not in sizes and self.backend.accepts_size(*size):
                sizes.append(size)
        return sizes or [(height, width)]

    def infer(self, batch: np.ndarray, *, tta: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits (N, K, h, w) at the input size, TTA-fused when asked, and the class probabilities (N, C)
        (sigmoid of the class logits, averaged over the TTA passes) or None without class scores."""
        if not tta:
            logits, scores = self.run(batch)
            return logits, None if scores is None else sigmoid(scores)
        input_size = self.bundle.input_size
        count = batch.shape[0]
        total: np.ndarray | None = None
        probs: list[np.ndarray] = []
        for size in self.tta_sizes():
            scaled = batch if size == input_size else resize_bilinear(batch, size)
            logits, scores = self.run(np.concatenate([scaled, scaled[..., ::-1]], axis=0))
            fused = logits[:count] + logits[count:, ..., ::-1]
            if size != input_size:
                fused = resize_bilinear(fused, input_size)
            total = fused if total is None else total + fused
            if scores is not None:
                probs += [sigmoid(scores[:count]), sigmoid(scores[count:])]
        assert total is not None
        return total, np.mean(probs, axis=0, dtype=np.float32) if probs else None

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Run the backend, splitting or padding the batch to what the model accepts: (logits, class logits or None)."""
        backend = self.backend
        step = backend.fixed_batch or backend.max_batch or batch.shape[0]
        outputs, class_logits = [], []
        for start in range(0, batch.shape[0], step):
            part = batch[start : start + step]
            real = part.shape[0]
            if backend.fixed_batch is not None and real < backend.fixed_batch:
                padding = np.zeros((backend.fixed_batch - real, *part.shape[1:]), dtype=part.dtype)
                part = np.concatenate([part, padding], axis=0)
            logits, scores = backend.run_with_scores(np.ascontiguousarray(part, dtype=np.float32))
            self._check_outputs(logits, scores, part.shape[0])
            outputs.append(logits[:real])
            if scores is not None:
                class_logits.append(scores[:real])
        joined = outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=0)
        return joined, np.concatenate(class_logits, axis=0) if class_logits else None

    def _check_outputs(self, logits: np.ndarray, scores: np.ndarray | None, count: int) -> None:
        """The model's outputs fit cosa.json's classes: logits (n, K, h, w), class scores (n, K-1)."""
        if logits.ndim != 4 or logits.shape[1] != self.bundle.num_classes:
            raise CosaModelError(
                f"the model outputs logits of shape {tuple(logits.shape)} but cosa.json lists "
                f"{self.bundle.num_classes} classes; the bundle's files do not belong together (re-export it)"
            )
        if scores is not None and scores.shape != (count, self.bundle.num_classes - 1):
            raise CosaModelError(
                f"the model outputs class scores of shape {tuple(scores.shape)} but cosa.json lists "
                f"{self.bundle.num_classes - 1} foreground classes; the bundle's files do not belong together "
                "(re-export it)"
            )

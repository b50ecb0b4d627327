"""Parity of an exported graph against the torch seg stream, on real-looking images, before anything ships.

Two numbers decide: the largest absolute logit difference relative to the logit scale, and the share
of pixels whose argmax (the mask the user sees) agrees. Both are measured over several batch sizes
and, for a dynamic graph, several input sizes. A graph with image-level class scores is held to the
same relative tolerance on them; how many present/absent decisions (sigmoid >= 0.5) agree is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cosa_sdk.errors import CosaModelError
from cosa_sdk.export.images import ImageSet, prepare_batch

FP32_TOLERANCE = 1e-3  # max |diff| / logit scale
FP32_MIN_AGREEMENT = 0.999


@dataclass
class _Difference:
    """The largest |reference - candidate| and the reference's scale, accumulated over batches."""

    max_abs_diff: float = 0.0
    logit_scale: float = 0.0

    def _track(self, reference: np.ndarray, candidate: np.ndarray, what: str) -> None:
        if reference.shape != candidate.shape:
            raise CosaModelError(
                f"the exported graph returned {what} of shape {candidate.shape}, torch {reference.shape}"
            )
        self.max_abs_diff = max(self.max_abs_diff, float(np.abs(reference - candidate).max(initial=0.0)))
        self.logit_scale = max(self.logit_scale, float(np.abs(reference).max(initial=0.0)))

    @property
    def relative_diff(self) -> float:
        """max |diff| over the logit scale (floored at 1, so near-zero logits do not inflate it)."""
        return self.max_abs_diff / max(self.logit_scale, 1.0)


@dataclass
class Comparison(_Difference):
    """Reference vs candidate logits, accumulated over batches."""

    agreeing: int = 0
    pixels: int = 0

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        self._track(reference, candidate, "logits")
        self.agreeing += int((reference.argmax(1) == candidate.argmax(1)).sum())
        self.pixels += reference.shape[0] * reference.shape[2] * reference.shape[3]

    @property
    def agreement(self) -> float:
        return self.agreeing / max(self.pixels, 1)


@dataclass
class ScoreComparison(_Difference):
    """Reference vs candidate image-level class logits (N, C), accumulated over batches."""

    agreeing: int = 0
    decisions: int = 0

    def add(self, reference: np.ndarray, candidate: np.ndarray, *, threshold: float = 0.5) -> None:
        self._track(reference, candidate, "class scores")
        self.agreeing += int((present(reference, threshold) == present(candidate, threshold)).sum())
        self.decisions += reference.size

    @property
    def agreement(self) -> float:
        """Share of (image, class) present/absent decisions that agree."""
        return self.agreeing / max(self.decisions, 1)


def present(class_logits: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Which classes the classifier calls present: sigmoid(logit) >= threshold."""
    from cosa_sdk.preprocess import sigmoid

    return sigmoid(class_logits) >= threshold


@dataclass
class ParityReport:
    """The parity check's numbers, per case and overall, in the form cosa.json `metrics.parity` stores."""

    overall: Comparison
    cases: list[dict[str, Any]] = field(default_factory=list)
    images: int = 0
    source: str = ""
    class_scores: ScoreComparison | None = None  # None: a graph without the class-score output

    def metrics(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {
            "max_abs_diff": self.overall.max_abs_diff,
            "logit_scale": self.overall.logit_scale,
            "relative_diff": self.overall.relative_diff,
            "argmax_agreement": self.overall.agreement,
            "images": self.images,
            "image_source": self.source,
            "cases": self.cases,
        }
        if self.class_scores is not None:
            metrics["class_scores"] = {
                "max_abs_diff": self.class_scores.max_abs_diff,
                "relative_diff": self.class_scores.relative_diff,
                "presence_agreement": self.class_scores.agreement,
            }
        return metrics

    def passed(self, *, tolerance: float = FP32_TOLERANCE, min_agreement: float = FP32_MIN_AGREEMENT) -> bool:
        logits_ok = self.overall.relative_diff <= tolerance and self.overall.agreement >= min_agreement
        return logits_ok and self.scores_passed(tolerance=tolerance)

    def scores_passed(self, *, tolerance: float = FP32_TOLERANCE) -> bool:
        """The class scores (if any) within `tolerance` of torch, relative to their scale."""
        return self.class_scores is None or self.class_scores.relative_diff <= tolerance


def parity_sizes(input_size: tuple[int, int], stride: int, dynamic: bool) -> list[tuple[int, int]]:
    """The input size, plus for a dynamic graph a smaller square-ish and a wider size (multiples of the stride)."""
    if not dynamic:
        return [input_size]
    height, width = input_size

    def snap(value: float) -> int:
        return max(stride, round(value / stride) * stride)

    sizes = [input_size, (snap(height * 0.75), snap(width * 0.75)), (snap(height * 0.75), snap(width * 1.25))]
    return list(dict.fromkeys(sizes))


def ort_session(path: str | Path, *, threads: int | None = None, exact_int8: bool = False) -> Any:
    """A CPU ONNX Runtime session with the default (full) graph optimisations a user gets.

    Worker threads do not spin-wait: on a machine shared with other jobs spinning threads slow every run.
    exact_int8: ONNX Runtime's u8 x u8 kernels, which never saturate (see `cosa_sdk.cpu`).
    """
    import onnxruntime as ort

    from cosa_sdk.cpu import EXACT_KERNELS_OPTION

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if exact_int8:
        options.add_session_config_entry(EXACT_KERNELS_OPTION, "1")
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def torch_outputs(stream: Any, batch: np.ndarray) -> list[np.ndarray]:
    """The stream's outputs as the exported graph gives them: [logits] or [logits, class scores]."""
    import torch

    with torch.inference_mode():
        out = stream(torch.from_numpy(batch))
    return [t.float().numpy() for t in (out if isinstance(out, tuple) else (out,))]


def check_parity(
    stream: Any,
    onnx_path: str | Path,
    images: ImageSet,
    *,
    input_size: tuple[int, int],
    stride: int,
    mean: Sequence[float],
    std: Sequence[float],
    dynamic: bool = False,
    batch_sizes: Sequence[int] = (1, 4),
) -> ParityReport:
    """Run torch and ONNX Runtime on the same batches; nothing is raised here, see `verify_parity`."""
    session = ort_session(onnx_path)
    name = session.get_inputs()[0].name
    overall = Comparison()
    cases = []
    with_scores = len(session.get_outputs()) > 1
    scores = ScoreComparison() if with_scores else None
    stream = stream.class_score_view(with_scores).eval()
    for size in parity_sizes(input_size, stride, dynamic):
        pixels = prepare_batch(images.images, size, mean, std)
        for batch_size in batch_sizes:
            case = Comparison()
            for start in range(0, len(pixels) - batch_size + 1, batch_size):
                batch = pixels[start : start + batch_size]
                reference = torch_outputs(stream, batch)
                candidate = session.run(None, {name: batch})
                case.add(reference[0], candidate[0])
                overall.add(reference[0], candidate[0])
                if scores is not None:
                    scores.add(reference[1], candidate[1])
            cases.append(
                {
                    "size": list(size),
                    "batch": batch_size,
                    "max_abs_diff": case.max_abs_diff,
                    "argmax_agreement": case.agreement,
                }
            )
    return ParityReport(
        overall=overall, cases=cases, images=len(images.images), source=images.source, class_scores=scores
    )


def verify_parity(
    stream: Any,
    onnx_path: str | Path,
    images: ImageSet,
    *,
    tolerance: float = FP32_TOLERANCE,
    min_agreement: float = FP32_MIN_AGREEMENT,
    **kwargs: Any,
) -> ParityReport:
    """`check_parity`, raising CosaModelError with the numbers when the graph does not match torch."""
    report = check_parity(stream, onnx_path, images, **kwargs)
    scores = report.class_scores
    if scores is not None and not report.scores_passed(tolerance=tolerance):
        raise CosaModelError(
            f"the ONNX graph's class scores do not match torch: max |diff| {scores.max_abs_diff:.3g} (scale "
            f"{scores.logit_scale:.3g}, limit {tolerance:g} relative). Nothing was written. Try another --opset; "
            "if it persists, report it with the checkpoint's backbone name"
        )
    if not report.passed(tolerance=tolerance, min_agreement=min_agreement):
        worst = max(report.cases, key=lambda c: c["max_abs_diff"])
        raise CosaModelError(
            f"the ONNX graph does not match torch: max |logit diff| {report.overall.max_abs_diff:.3g} "
            f"(logit scale {report.overall.logit_scale:.3g}, limit {tolerance:g} relative), argmax agreement "
            f"{100 * report.overall.agreement:.3f} % (limit {100 * min_agreement:g} %), worst at size "
            f"{worst['size']} batch {worst['batch']}. Nothing was written. Try another --opset, or export a fixed "
            "size (drop --dynamic); if it persists, report it with the checkpoint's backbone name"
        )
    return report

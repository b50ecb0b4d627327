"""Segmentation scores from an accumulated confusion matrix (docs/method.md, "Segmentation mIoU")."""

from __future__ import annotations

import numpy as np

from cosa_sdk.errors import CosaInputError


def _as_int_array(name: str, values: object) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor, without importing torch here
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise CosaInputError(f"{name} must hold integer class indices, got non-integer values.")
    elif array.dtype.kind not in "iub":
        raise CosaInputError(f"{name} must be an integer label map, got dtype {array.dtype}.")
    return array.astype(np.int64, copy=False)


class ConfusionMatrix:
    """K x K confusion matrix (rows = ground truth, columns = prediction) accumulated over images.

    Ground-truth values outside [0, K) (e.g. 255) are ignored; predictions must lie in [0, K).
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes < 1:
            raise CosaInputError(f"num_classes must be >= 1, got {num_classes}.")
        self.num_classes = int(num_classes)
        self._matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    @property
    def matrix(self) -> np.ndarray:
        """A copy of the accumulated counts."""
        return self._matrix.copy()

    def update(self, pred: object, gt: object) -> ConfusionMatrix:
        """Add one prediction / ground-truth pair (any shape, equal sizes) to the counts."""
        p = _as_int_array("pred", pred).ravel()
        g = _as_int_array("gt", gt).ravel()
        if p.shape != g.shape:
            raise CosaInputError(
                f"pred and gt must have the same number of pixels, got {np.shape(pred)} and {np.shape(gt)}; "
                "resize the prediction to the label size first."
            )
        k = self.num_classes
        keep = (g >= 0) & (g < k)
        p, g = p[keep], g[keep]
        if p.size and (p.min() < 0 or p.max() >= k):
            raise CosaInputError(
                f"pred holds class index {int(p.min() if p.min() < 0 else p.max())} "
                f"outside [0, {k}); check num_classes."
            )
        self._matrix += np.bincount(g * k + p, minlength=k * k).reshape(k, k)
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts (e.g. from another worker)."""
        if other.num_classes != self.num_classes:
            raise CosaInputError(
                f"cannot merge confusion matrices of {other.num_classes} and {self.num_classes} classes."
            )
        self._matrix += other._matrix
        return self

    def scores(self) -> dict[str, object]:
        """Per-class IoU (NaN for a class absent from both GT and prediction), mIoU over classes that
        occur in the GT, and pixel accuracy; all on the 0-1 scale."""
        return miou_scores(self._matrix)


def miou_scores(matrix: np.ndarray) -> dict[str, object]:
    """Scores of a K x K confusion matrix: ``per_class_iou`` (list of K floats, NaN where undefined),
    ``miou`` (mean over classes with GT pixels) and ``pixel_acc``."""
    hist = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(hist)
    gt_count, pred_count = hist.sum(axis=1), hist.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (gt_count + pred_count - tp)
        pixel_acc = tp.sum() / hist.sum() if hist.sum() > 0 else float("nan")
    present = gt_count > 0
    miou = float(np.nanmean(iou[present])) if present.any() else float("nan")
    return {"per_class_iou": [float(v) for v in iou], "miou": miou, "pixel_acc": float(pixel_acc)}


def image_miou(pred: object, gt: object, num_classes: int) -> float:
    """mIoU of one image over the classes in its ground truth or its prediction (0-1 scale).

    Unlike `miou_scores`, a class predicted but absent from the image counts (with IoU 0), so one
    image's score says whether its mask looks right. Pixels whose ground truth is outside
    [0, num_classes) (e.g. 255) are ignored; NaN when no pixel is left.
    """
    iou = np.array(ConfusionMatrix(num_classes).update(pred, gt).scores()["per_class_iou"])
    seen = ~np.isnan(iou)  # NaN exactly where a class is in neither the ground truth nor the prediction
    return float(iou[seen].mean()) if seen.any() else float("nan")

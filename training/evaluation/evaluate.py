"""Evaluation (docs/method.md, "Evaluation"): CAM mIoU, label-free and GT-filtered segmentation mIoU.

Label-free ("Seg_ps") is what a deployed model achieves; GT-filtered ("Seg_vd") suppresses classes absent
from the ground-truth image labels, as the paper's headline numbers do. Both are always reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cosa_sdk.constants import TTA_SCALES
from cosa_sdk.training.evaluation.metrics import ConfusionMatrix, image_miou
from cosa_sdk.training.method.pseudo_labels import (
    channel_argmax,
    mask_absent_classes,
    normalize_cams,
    teacher_fusion,
    valid_cams,
)
from cosa_sdk.training.model.network import CoSANetwork

RIGHT_IMAGE_MIOU = 0.5  # an image whose own label-free mIoU reaches this counts as segmented right
# Inference-time post-processing the SDK offers, scored beside the plain bilinear argmax: "drop_absent" keeps
# only background and the classes the classifier itself scores present (label-free), "edge_aware" snaps the
# upsampled class maps to the image's edges (cosa_sdk.upsample)
VARIANTS = ("drop_absent", "edge_aware", "edge_aware+drop_absent")


@torch.no_grad()
def predict_maps(
    network: CoSANetwork, images: torch.Tensor, *, tta: bool = False, scales: Sequence[float] = TTA_SCALES
) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised CAMs in [0, 1], seg logits) at the input size; TTA = multi-scale + flip fusion."""
    if tta:
        fused = teacher_fusion(network.forward_all_maps, images, scales=tuple(scales))
        return fused.cam, fused.seg
    cam, _, seg = network.forward_all_maps(images)
    size = images.shape[-2:]
    cam = normalize_cams(F.relu(F.interpolate(cam, size=size, mode="bilinear", align_corners=False)))
    return cam, F.interpolate(seg, size=size, mode="bilinear", align_corners=False)


def cam_to_label(cam: torch.Tensor, labels: torch.Tensor, threshold: float) -> torch.Tensor:
    """Label map from normalised CAMs: absent classes zeroed, argmax + 1 above `threshold`, else background."""
    value, index = valid_cams(cam, labels).max(dim=1)
    return torch.where(value > threshold, index + 1, torch.zeros_like(index))


@torch.no_grad()
def evaluate(
    network: CoSANetwork,
    samples: Iterable[dict[str, Any]],
    *,
    num_classes: int,
    device: torch.device | str = "cpu",
    tta: bool = False,
    cam_threshold: float = 0.5,
    with_cams: bool = True,
    crf: bool = False,
    limit: int | None = None,
    class_names: Sequence[str] | None = None,
    variants: Sequence[str] = (),
) -> dict[str, Any]:
    """Score one network over evaluation samples (dicts with `image`, `mask`, `labels` and, for CRF or
    edge-aware variants, `raw`).

    mIoU values are percentages; per-class lists are keyed by name when `class_names` (foreground) is given.
    `variants` (names from VARIANTS) adds label-free scores of the SDK's post-processing under "variants".
    """
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown evaluation variants {unknown}: choose from {VARIANTS}")
    network.eval()
    k = num_classes + 1
    seg_ps, seg_vd, cams = ConfusionMatrix(k), ConfusionMatrix(k), ConfusionMatrix(k)
    per_image: list[float] = []
    variant_scores = {name: (ConfusionMatrix(k), []) for name in variants}
    count = 0
    for sample in samples:
        if limit is not None and count >= limit:
            break
        image = sample["image"].unsqueeze(0).to(device)
        labels = torch.as_tensor(sample["labels"]).float().unsqueeze(0).to(device)
        gt = np.asarray(sample["mask"])
        size = gt.shape[-2:]
        cam, seg_at_input = predict_maps(network, image, tta=tta)
        seg = F.interpolate(seg_at_input.float(), size=size, mode="bilinear", align_corners=False)
        filtered = mask_absent_classes(seg, labels)
        pred_ps = channel_argmax(seg)[0].cpu().numpy()
        seg_ps.update(pred_ps, gt)
        per_image.append(image_miou(pred_ps, gt, k))
        if crf:
            from cosa_sdk.training.evaluation.crf_postprocess import dense_crf

            pred_vd = dense_crf(np.asarray(sample["raw"]), filtered.softmax(1)[0].cpu().numpy())
        else:
            pred_vd = channel_argmax(filtered)[0].cpu().numpy()
        seg_vd.update(pred_vd, gt)
        for name, pred in _variant_predictions(network, image, seg_at_input, seg, sample, variants).items():
            variant_scores[name][0].update(pred, gt)
            variant_scores[name][1].append(image_miou(pred, gt, k))
        if with_cams:
            cam = F.interpolate(cam.float(), size=size, mode="bilinear", align_corners=False)
            cams.update(cam_to_label(cam, labels, cam_threshold)[0].cpu().numpy(), gt)
        count += 1
    ps, vd, cam_scores = seg_ps.scores(), seg_vd.scores(), cams.scores()
    names = ["background", *class_names] if class_names is not None else None

    def per_class(values) -> list | dict:
        iou = [_percent(v) for v in np.asarray(values, dtype=float)]
        return dict(zip(names, iou)) if names is not None else iou

    with_cams = with_cams and count > 0
    variant_results = {
        name: {
            "seg_miou": _percent(matrix.scores()["miou"]),
            "per_class_iou": per_class(matrix.scores()["per_class_iou"]),
        }
        | _image_scores(images)
        for name, (matrix, images) in variant_scores.items()
    }
    return {
        "cam_miou": _percent(cam_scores["miou"]) if with_cams else None,
        "seg_miou": _percent(ps["miou"]),
        "seg_miou_gt_filtered": _percent(vd["miou"]),
        "pixel_acc": _percent(ps["pixel_acc"]),
        "per_class_iou": per_class(ps["per_class_iou"]),
        "per_class_iou_gt_filtered": per_class(vd["per_class_iou"]),
        "per_class_cam_iou": per_class(cam_scores["per_class_iou"]) if with_cams else None,
        **_image_scores(per_image),
        "num_images": count,
        "tta": tta,
        "crf": crf,
        **({"variants": variant_results} if variants else {}),
    }


def _image_scores(per_image: Sequence[float]) -> dict[str, float | None]:
    scored = np.array([v for v in per_image if not np.isnan(v)])
    if not scored.size:
        return {"image_miou_median": None, "images_right": None}
    return {
        "image_miou_median": _percent(np.median(scored)),
        "images_right": _percent(np.mean(scored >= RIGHT_IMAGE_MIOU)),
    }


def _variant_predictions(
    network: CoSANetwork,
    image: torch.Tensor,
    seg_at_input: torch.Tensor,
    seg: torch.Tensor,
    sample: dict[str, Any],
    variants: Sequence[str],
) -> dict[str, np.ndarray]:
    """Label maps of the post-processing variants for one image, through the SDK's own functions: seg logits
    at the input and at the mask's size; the class probabilities are the sigmoid of the classifier's logits."""
    if not variants:
        return {}
    from cosa_sdk.preprocess import drop_absent_classes, sigmoid
    from cosa_sdk.upsample import drop_absent_before_upsampling, edge_aware_mask

    probs = sigmoid(network(image).logits[0].float().cpu().numpy())
    out: dict[str, np.ndarray] = {}
    if "drop_absent" in variants:
        out["drop_absent"] = drop_absent_classes(seg[0].float().cpu().numpy(), probs).argmax(0)
    edge = [name for name in variants if name.startswith("edge_aware")]
    if edge:
        raw = np.asarray(sample["raw"])
        small = seg_at_input[0].float().cpu().numpy()
        cell = network.stride * float(np.sqrt(raw.shape[0] / image.shape[-2] * raw.shape[1] / image.shape[-1]))
        for name in edge:
            logits = drop_absent_before_upsampling(small, probs) if name.endswith("drop_absent") else small
            out[name] = edge_aware_mask(logits, raw, cell=cell)
    return out


def _percent(value: float) -> float | None:
    value = float(value)
    return None if np.isnan(value) else round(100.0 * value, 2)


def format_scores(scores: dict[str, Any]) -> str:
    """Per-class table (label-free seg, GT-filtered seg, CAM) and the three mIoU values, as plain text."""
    seg, vd = scores["per_class_iou"], scores["per_class_iou_gt_filtered"]
    cam = scores.get("per_class_cam_iou") or {}
    names = list(seg) if isinstance(seg, dict) else [str(i) for i in range(len(seg))]
    width = max(len("mIoU"), *(len(n) for n in names))

    def fmt(value: float | None) -> str:
        return f"{value:9.2f}" if value is not None else f"{'-':>9}"

    def get(values, index: int, name: str) -> float | None:
        return values.get(name) if isinstance(values, dict) else (values[index] if values else None)

    lines = [f"{'class':<{width}} {'seg':>9} {'seg (GT)':>9} {'CAM':>9}"]
    for i, name in enumerate(names):
        lines.append(f"{name:<{width}} {fmt(get(seg, i, name))} {fmt(get(vd, i, name))} {fmt(get(cam, i, name))}")
    lines.append(
        f"{'mIoU':<{width}} {fmt(scores['seg_miou'])} {fmt(scores['seg_miou_gt_filtered'])} {fmt(scores['cam_miou'])}"
    )
    if scores.get("images_right") is not None:
        lines.append(
            f"per image (label-free): median mIoU {scores['image_miou_median']:.1f}; "
            f"{scores['images_right']:.1f} % of the images reach {100 * RIGHT_IMAGE_MIOU:.0f}"
        )
    for name, variant in scores.get("variants", {}).items():
        right = variant["images_right"]
        lines.append(
            f"post-processing {name}: label-free seg mIoU {variant['seg_miou']:.2f}"
            + (f", {right:.1f} % of the images reach {100 * RIGHT_IMAGE_MIOU:.0f}" if right is not None else "")
        )
    lines.append(
        f"({scores['num_images']} images; seg = label-free, seg (GT) = absent classes filtered with "
        f"ground-truth image labels, as the paper reports)"
    )
    return "\n".join(lines)

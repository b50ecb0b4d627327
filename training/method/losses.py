"""CoSA's classification and swapped-assignment losses (docs/method.md, "Losses")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cosa_sdk.errors import CosaInputError


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-label soft-margin loss between B x C image logits and 0/1 image labels (L_cls)."""
    if logits.dim() != 2 or tuple(labels.shape) != tuple(logits.shape):
        raise CosaInputError(
            f"classification_loss needs B x C logits and labels of the same shape, "
            f"got {tuple(logits.shape)} and {tuple(labels.shape)}."
        )
    return F.multilabel_soft_margin_loss(logits, labels.to(logits.dtype))


def _check_seg_labels(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    if logits.dim() != 4:
        raise CosaInputError(f"seg logits must be B x K x H x W, got {tuple(logits.shape)}.")
    b, k, h, w = logits.shape
    if tuple(labels.shape) != (b, h, w):
        raise CosaInputError(
            f"seg labels must be B x H x W = {b} x {h} x {w} (resize the logits to the label size first), "
            f"got {tuple(labels.shape)}."
        )
    labels = labels.long()
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= k))
    if bool(bad.any()):
        value = int(labels[bad][0])
        raise CosaInputError(
            f"seg label value {value} is outside [0, {k}) and is not the ignore index {ignore_index}; "
            "check the number of classes of the network against the labels."
        )
    return labels


def balanced_seg_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    fg_alpha: float = 0.5,
    pixel_weights: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Background/foreground balanced cross-entropy L_bal (docs/method.md, "CAM-to-seg loss").

    CE is summed separately over background pixels (label 0) and foreground pixels (1..C) of the
    whole batch, each divided by its pixel count + 1e-6, and mixed as (1 - a) * bg + a * fg.
    ``pixel_weights`` (B x H x W) scale each pixel's CE while the denominators stay plain pixel counts,
    as in the official weighted variant. An all-ignore batch gives exactly 0 with a gradient graph.
    """
    if not 0.0 <= fg_alpha <= 1.0:
        raise CosaInputError(f"fg_alpha must be in [0, 1], got {fg_alpha}.")
    labels = _check_seg_labels(logits, labels, ignore_index)
    valid = labels != ignore_index
    ce = F.cross_entropy(logits, labels.masked_fill(~valid, 0), reduction="none")
    if pixel_weights is not None:
        if tuple(pixel_weights.shape) != tuple(labels.shape):
            raise CosaInputError(
                f"pixel_weights must match the labels' shape {tuple(labels.shape)}, got {tuple(pixel_weights.shape)}."
            )
        ce = ce * pixel_weights.to(ce.dtype)
    bg = valid & (labels == 0)
    fg = valid & (labels != 0)
    bg_loss = (ce * bg).sum() / (bg.sum() + 1e-6)
    fg_loss = (ce * fg).sum() / (fg.sum() + 1e-6)
    return (1.0 - fg_alpha) * bg_loss + fg_alpha * fg_loss


def seg_to_cam_loss(cams: torch.Tensor, spl_probs: torch.Tensor) -> torch.Tensor:
    """L_s2c (docs/method.md, "Seg-to-CAM loss"): the SPL's foreground channels, bilinearly resized to the CAM
    grid, are soft multi-label targets for the ReLU'd online CAMs (multi-label soft margin over (B*h*w) x C
    rows)."""
    if cams.dim() != 4 or spl_probs.dim() != 4:
        raise CosaInputError(
            f"seg_to_cam_loss needs B x C x h x w CAMs and B x (C+1) x H x W SPL probabilities, "
            f"got {tuple(cams.shape)} and {tuple(spl_probs.shape)}."
        )
    b, c, h, w = cams.shape
    if spl_probs.shape[0] != b or spl_probs.shape[1] != c + 1:
        raise CosaInputError(
            f"SPL must have B = {b} images and C + 1 = {c + 1} channels (background first), "
            f"got {tuple(spl_probs.shape)}."
        )
    target = F.interpolate(spl_probs[:, 1:], size=(h, w), mode="bilinear", align_corners=False)
    target = target.permute(0, 2, 3, 1).reshape(b * h * w, c)
    flat = F.relu(cams).permute(0, 2, 3, 1).reshape(b * h * w, c)
    return F.multilabel_soft_margin_loss(flat, target.to(flat.dtype))

"""Contrastive separation of co-existing classes (paper technique L_csc; docs/method.md, "Contrastive separation").

The paper's formula is not available and the released code has no such term, so this is our own
design. It targets "co-existence": CAMs / features of two classes present in the same image firing
on the same pixels. Only images with at least two foreground classes that are both in the image
labels and owned by >= ``min_pixels`` pixels of the hard segmentation pseudo-label take part.

For such an image b with co-existing class set S_b (|S_b| >= 2), every pixel i whose SPL label is
c in S_b contributes

* feature term:  -log softmax_{c' in S_b}( <f_i, p_c'> / tau )[c],  f_i the L2-normalised online
  feature at i, p_c' the L2-normalised mean of f over the pixels labelled c' in the same image
  (a per-image prototype, not detached), tau = ``temperature``;
* CAM term:      -log softmax_{c' in S_b}( M_c'(i) )[c],  M the raw online CAMs: a pixel of class c
  should score c above every other co-existing class.

L_csc = mean over those pixels of the feature term + ``cam_weight`` x mean of the CAM term. Pixels
of background, of classes absent from the labels, or ignored (255) do not take part. When no image
qualifies the loss is an exact 0 that still carries a gradient graph (never NaN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cosa_sdk.errors import CosaInputError
from cosa_sdk.training.method.pseudo_labels import channel_argmax


def hard_labels_at(seg_pseudo_labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B x h x w hard labels at ``size`` from SPL probabilities (B x K x H x W, bilinear + argmax)
    or from a hard B x H x W label map (nearest)."""
    if seg_pseudo_labels.dim() == 4 and seg_pseudo_labels.is_floating_point():
        probs = F.interpolate(seg_pseudo_labels.float(), size=size, mode="bilinear", align_corners=False)
        return channel_argmax(probs)
    if seg_pseudo_labels.dim() == 3:
        if tuple(seg_pseudo_labels.shape[1:]) == size:
            return seg_pseudo_labels.long()
        small = F.interpolate(seg_pseudo_labels[:, None].float(), size=size, mode="nearest")
        return small[:, 0].long()
    raise CosaInputError(
        "seg_pseudo_labels must be B x K x H x W SPL probabilities or a B x H x W label map, "
        f"got {tuple(seg_pseudo_labels.shape)}."
    )


def contrastive_separation_loss(
    features: torch.Tensor,
    cams: torch.Tensor,
    seg_pseudo_labels: torch.Tensor,
    cls_labels: torch.Tensor,
    *,
    temperature: float = 0.1,
    cam_weight: float = 1.0,
    min_pixels: int = 1,
) -> torch.Tensor:
    """L_csc for online features (B x D x h x w) and CAMs (B x C x h x w) on the same grid."""
    if features.dim() != 4 or cams.dim() != 4 or features.shape[0] != cams.shape[0]:
        raise CosaInputError(
            f"features must be B x D x h x w and cams B x C x h x w, got {tuple(features.shape)} "
            f"and {tuple(cams.shape)}."
        )
    b, _, h, w = features.shape
    c = cams.shape[1]
    if tuple(cams.shape[2:]) != (h, w):
        raise CosaInputError(f"cams must share the features' {h} x {w} grid, got {tuple(cams.shape[2:])}.")
    if tuple(cls_labels.shape) != (b, c):
        raise CosaInputError(f"cls_labels must be B x C = {b} x {c}, got {tuple(cls_labels.shape)}.")
    if temperature <= 0:
        raise CosaInputError(f"temperature must be > 0, got {temperature}.")
    labels = hard_labels_at(seg_pseudo_labels.detach(), (h, w)).to(features.device).reshape(b, h * w)
    feats = F.normalize(features.reshape(b, -1, h * w), dim=1)
    flat_cams = cams.reshape(b, c, h * w)
    feat_terms, cam_terms = [], []
    for i in range(b):
        owned = labels[i][labels[i] <= c]
        counts = torch.bincount(owned, minlength=c + 1)[1:]
        ids = torch.nonzero((cls_labels[i].to(counts.device) != 0) & (counts >= min_pixels))[:, 0] + 1
        if ids.numel() < 2:
            continue
        member = labels[i][None, :] == ids[:, None]  # |S| x N
        pixels = member.any(dim=0)
        target = member[:, pixels].float().argmax(dim=0)
        f = feats[i][:, pixels]  # D x P
        weights = member[:, pixels].to(f.dtype)
        protos = F.normalize(weights @ f.T / weights.sum(dim=1, keepdim=True), dim=1)  # |S| x D
        feat_terms.append(F.cross_entropy((protos @ f).T / temperature, target, reduction="none"))
        cam_logits = flat_cams[i][ids - 1][:, pixels].T  # P x |S|
        cam_terms.append(F.cross_entropy(cam_logits, target, reduction="none"))
    if not feat_terms:
        return features.sum() * 0.0 + cams.sum() * 0.0
    loss = torch.cat(feat_terms).mean()
    if cam_weight:
        loss = loss + cam_weight * torch.cat(cam_terms).mean()
    return loss

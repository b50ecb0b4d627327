"""CAM erasing (ours, after the adversarial-erasing family of WSSS): the class must also be found where its CAM
is not yet strong (docs/method.md, "CAM erasing").

A max-pooled CAM head learns the single most telling part of an object (on the synthetic benchmarks the class
pattern on one side), and the seg stream learns only what those CAM seeds cover. For each class an image is
labelled with, the cells where the class's CAM reaches `threshold` of its peak are erased; the class must still
score high at the best remaining cell within `reach` cells of them (0: anywhere in the image). The loss is the
positive half of L_cls on those erased scores, so the classifier learns the rest of the object, and `reach`
keeps it from learning the background when the whole object is already covered.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cosa_sdk.errors import CosaInputError


def erased_cam_loss(
    cam: torch.Tensor,
    labels: torch.Tensor,
    *,
    threshold: float = 0.7,
    reach: int = 2,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean softplus(-s) over the (image, present class) pairs, s the class's best CAM score outside its erased
    cells and within `reach` cells of them.

    cam: raw CAM logits B x C x h x w; labels: 0/1 image labels B x C; valid: B x h x w, 1 where a cell is image
    (not padding), None for all. The erased cells come from the detached CAM, so gradients reach only the scores
    of the cells that stay. Pairs with no remaining cell, and a batch without any, give 0 with a gradient graph.
    """
    if cam.dim() != 4 or tuple(labels.shape) != tuple(cam.shape[:2]):
        raise CosaInputError(
            f"erased_cam_loss needs B x C x h x w CAMs and B x C labels, got {tuple(cam.shape)} and "
            f"{tuple(labels.shape)}."
        )
    if reach < 0:
        raise CosaInputError(f"reach must be 0 (anywhere) or a number of cells, got {reach}.")
    inside = torch.ones_like(cam[:, 0], dtype=torch.bool) if valid is None else valid.bool()
    inside = inside[:, None].expand_as(cam)
    with torch.no_grad():
        scores = cam.detach().relu().masked_fill(~inside, 0.0)
        peak = scores.flatten(2).amax(-1)[..., None, None]
        erased = (scores >= threshold * peak) & (peak > 0)
        remaining = inside & ~erased
        if reach > 0:
            near = F.max_pool2d(erased.float(), 2 * reach + 1, stride=1, padding=reach) > 0
            remaining &= near
    best = cam.masked_fill(~remaining, float("-inf")).flatten(2).amax(-1)
    counted = (labels > 0) & remaining.flatten(2).any(-1) & (peak[..., 0, 0] > 0)
    if not bool(counted.any()):
        return cam.sum() * 0.0
    return F.softplus(-best[counted]).mean()

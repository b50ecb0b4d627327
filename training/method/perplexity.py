"""Soft perplexity-based pixel weights, the paper technique "soft perplexity-based regularisation"
(docs/method.md, "Soft perplexity-based regularisation").

The paper's exact formula was not available (only its abstract, introduction and pipeline figure
could be read, and the released code does not contain the module), so this is our reconstruction:

* per pixel p of image b, logits  z = [t, M_c for every class c present in the image] / T, where t is
  the background threshold (a float or a B x 1 x H x W / B x H x W map), M the valid CAMs on [0, 1]
  and T = ``temperature`` (default 0.1: a CAM difference of 0.1 is one logit unit, so a CAM of 1
  against a threshold of 0.7 is already 3 logits apart); absent classes take no part;
* q = softmax(z), perplexity PP = exp(-sum q log q), between 1 (one-hot) and K_b = 1 + #present;
* PP_ref = the perplexity of a confident one-hot CAM pixel, z_ref = [t, 1, 0, ..., 0] / T, for the
  same image and threshold;
* w = min(1, PP_ref / PP) ** beta.

So a confident one-hot CAM pixel gets weight 1, and the weight falls as q flattens, down to
(PP_ref / K_b) ** beta for a flat distribution. The weights are constants (no gradient) meant for
``balanced_seg_loss(pixel_weights=...)``; keep the technique behind a flag, it has no gain guarantee.
"""

from __future__ import annotations

import torch

from cosa_sdk.errors import CosaInputError


def _entropy(logits: torch.Tensor, dim: int) -> torch.Tensor:
    log_q = torch.log_softmax(logits, dim=dim)
    return -(log_q.exp() * log_q).sum(dim=dim)


def _threshold_map(bg_threshold: float | torch.Tensor, b: int, h: int, w: int, ref: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(bg_threshold, dtype=ref.dtype, device=ref.device)
    if t.dim() == 3:
        t = t.unsqueeze(1)
    if t.dim() == 1 and t.numel() == b:
        t = t[:, None, None, None]
    try:
        return t.expand(b, 1, h, w)
    except RuntimeError:
        raise CosaInputError(
            f"bg_threshold must be a float, B values or a B x H x W map for {b} x {h} x {w} CAMs, "
            f"got shape {tuple(t.shape)}."
        ) from None


def perplexity_weights(
    valid_cams: torch.Tensor,
    cls_labels: torch.Tensor,
    *,
    bg_threshold: float | torch.Tensor,
    beta: float = 1.0,
    temperature: float = 0.1,
) -> torch.Tensor:
    """B x H x W pixel weights in (0, 1] from the perplexity of the CAM class distribution."""
    if valid_cams.dim() != 4:
        raise CosaInputError(f"valid_cams must be B x C x H x W, got {tuple(valid_cams.shape)}.")
    b, c, h, w = valid_cams.shape
    if tuple(cls_labels.shape) != (b, c):
        raise CosaInputError(f"cls_labels must be B x C = {b} x {c}, got {tuple(cls_labels.shape)}.")
    if temperature <= 0 or beta < 0:
        raise CosaInputError(f"temperature must be > 0 and beta >= 0, got {temperature} and {beta}.")
    with torch.no_grad():
        cams = valid_cams.float()
        t = _threshold_map(bg_threshold, b, h, w, cams)
        present = cls_labels.to(cams.device) != 0
        weights = torch.empty(b, h, w, device=cams.device)
        for i in range(b):
            # Only background + present classes take part, which also keeps the cost low.
            keys = torch.nonzero(present[i])[:, 0]
            pp = _entropy(torch.cat([t[i], cams[i, keys]]) / temperature, dim=0).exp()
            # Reference one-hot pixel: the threshold, one present class at 1, the others at 0.
            one_hot = torch.zeros(keys.numel(), 1, 1, device=cams.device)
            one_hot[:1] = 1.0
            ref = torch.cat([t[i], one_hot.expand(-1, h, w)]) / temperature
            weights[i] = (_entropy(ref, dim=0).exp() / pp).clamp(max=1.0) ** beta
        return weights

"""Pixel-adaptive affinity refinement of CAMs (docs/method.md, "CAM affinity refinement").

Each pixel is tied to its 8 neighbours at several dilations. How strongly depends on colour (a neighbour
whose colour is unusual among that pixel's neighbours gets little weight) plus a small preference for
near neighbours. Propagating the maps over these ties a few times pulls CAM mass back inside colour
edges, which the coarse patch-grid CAM tends to overflow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cosa_sdk.errors import CosaInputError

DILATIONS = (1, 2, 4, 8, 12, 24)
_EPS = 1e-8


def neighbour_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """(dy, dx) of the 8 neighbours at each dilation, dilation by dilation."""
    steps = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    return [(d * dy, d * dx) for d in dilations for dy, dx in steps]


def _shifted(padded: torch.Tensor, pad: int, offset: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """The map of neighbour values at `offset`, read from a map replicate-padded by `pad` (a view)."""
    (dy, dx), (h, w) = offset, size
    return padded[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def position_affinity(
    offsets: Sequence[tuple[int, int]], *, weight: float, device: torch.device | None = None
) -> torch.Tensor:
    """Softmax over neighbours of -(distance / (std of distances * weight))^2: nearer neighbours weigh more."""
    dist = torch.tensor([math.hypot(dy, dx) for dy, dx in offsets], dtype=torch.float32, device=device)
    return torch.softmax(-((dist / (dist.std(correction=0) * weight + _EPS)) ** 2), dim=0)


def colour_affinity(images: torch.Tensor, offsets: Sequence[tuple[int, int]], *, weight: float) -> torch.Tensor:
    """B x N x H x W softmax over the N neighbours of -mean_c((x_n - x) / (std_n x * weight))^2.

    The per-pixel, per-channel spread of the neighbour colours sets the scale, so "different" is judged
    against the pixel's own surroundings: in a flat region all neighbours tie, next to an edge the ones
    across it drop out.
    """
    h, w = images.shape[-2:]
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    mean = torch.zeros_like(images)
    for offset in offsets:
        mean += _shifted(padded, pad, offset, (h, w))
    mean /= len(offsets)
    var = torch.zeros_like(images)
    for offset in offsets:
        var += (_shifted(padded, pad, offset, (h, w)) - mean) ** 2
    scale = (var / len(offsets)).sqrt() * weight + _EPS
    logits = [-(((_shifted(padded, pad, offset, (h, w)) - images) / scale) ** 2).mean(dim=1) for offset in offsets]
    return torch.softmax(torch.stack(logits, dim=1), dim=1)


def propagate(maps: torch.Tensor, affinity: torch.Tensor, offsets: Sequence[tuple[int, int]]) -> torch.Tensor:
    """One step: every pixel becomes the affinity-weighted sum of its neighbours' values (B x C x H x W)."""
    h, w = maps.shape[-2:]
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(maps, (pad, pad, pad, pad), mode="replicate")
    out = torch.zeros_like(maps)
    for n, offset in enumerate(offsets):
        out.addcmul_(affinity[:, n : n + 1], _shifted(padded, pad, offset, (h, w)))
    return out


def _check(images: torch.Tensor, cams: torch.Tensor, dilations: Sequence[int], iterations: int, scale: float) -> None:
    for name, tensor in (("images", images), ("cams", cams)):
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise CosaInputError(f"{name} must be a B x C x H x W tensor, got {shape}; add the batch dimension.")
    if images.shape[0] != cams.shape[0] or images.shape[-2:] != cams.shape[-2:]:
        raise CosaInputError(
            f"images {tuple(images.shape)} and cams {tuple(cams.shape)} must share batch and size; "
            "resize the CAMs to the image first."
        )
    if not dilations or any(int(d) != d or d < 1 for d in dilations):
        raise CosaInputError(f"dilations must be positive integers, e.g. {DILATIONS}; got {tuple(dilations)}.")
    if iterations < 0:
        raise CosaInputError(f"iterations must be >= 0 (10 in ToCo), got {iterations}.")
    if not 0 < scale <= 1:
        raise CosaInputError(f"scale must be in (0, 1] (the fraction of the image side to refine at), got {scale}.")


@torch.no_grad()
def refine_cams(
    images: torch.Tensor,
    cams: torch.Tensor,
    *,
    dilations: Sequence[int] = DILATIONS,
    iterations: int = 10,
    colour_weight: float = 0.3,
    position_weight: float = 0.01,
    position_mix: float = 0.01,
    scale: float = 1.0,
) -> torch.Tensor:
    """CAMs (B x C x H x W, at the image's size) propagated `iterations` times over the image's local affinity.

    The affinity is (colour + position_mix * position) / (1 + position_mix), so every row sums to 1: the
    result is a convex mix of the input, and a constant map stays constant. Channels propagate
    independently over the same affinity. With ``scale < 1`` image and maps are shrunk (bilinear) for the
    refinement and the maps grown back, for cost. Computed in float32 (or wider), returned in the CAMs' dtype.
    """
    _check(images, cams, dilations, iterations, scale)
    dtype = torch.promote_types(cams.dtype, torch.float32)
    h, w = cams.shape[-2:]
    x, maps = images.to(dtype), cams.to(dtype)
    small = (max(1, round(h * scale)), max(1, round(w * scale)))
    if small != (h, w):
        x = F.interpolate(x, size=small, mode="bilinear", align_corners=False)
        maps = F.interpolate(maps, size=small, mode="bilinear", align_corners=False)
    offsets = neighbour_offsets([int(d) for d in dilations])
    colour = colour_affinity(x, offsets, weight=colour_weight)
    position = position_affinity(offsets, weight=position_weight, device=x.device).to(dtype)
    affinity = (colour + position_mix * position[None, :, None, None]) / (1 + position_mix)
    for _ in range(iterations):
        maps = propagate(maps, affinity, offsets)
    if small != (h, w):
        maps = F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False)
    return maps.to(cams.dtype)

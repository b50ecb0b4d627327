"""Teacher-side pseudo-labels of CoSA: multi-scale/flip fusion, CAM pseudo-labels (CPL) and soft
segmentation pseudo-labels (SPL).

All functions follow the released code to the float (docs/method.md, "Pseudo-labels"): the reference cases in
``tests/cosa-reference-cases.json`` were produced by the official functions and are reproduced here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from cosa_sdk.errors import CosaInputError

IGNORE_INDEX = 255


class TeacherOutput(NamedTuple):
    """Fused teacher maps at the input size: normalised CAM, normalised aux CAM, summed seg logits.

    A field is None when the forward function does not produce that map.
    """

    cam: torch.Tensor | None
    aux_cam: torch.Tensor | None
    seg: torch.Tensor | None


def channel_argmax(tensor: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``tensor.argmax(dim)`` with the same result (ties go to the first index), reduced over a contiguous last
    axis: on the CPU torch's strided arg-max over the channels of a B x C x H x W map is about 10x slower."""
    return tensor.movedim(dim, -1).contiguous().argmax(dim=-1)


def _check_4d(name: str, tensor: torch.Tensor) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise CosaInputError(f"{name} must be a B x C x H x W tensor, got {shape}; add the batch dimension.")


def _check_labels(cls_labels: torch.Tensor, batch: int, num_classes: int) -> torch.Tensor:
    """Return image labels as a B x C tensor, or explain what shape was expected."""
    if not isinstance(cls_labels, torch.Tensor):
        cls_labels = torch.as_tensor(cls_labels)
    if cls_labels.dim() == 1 and batch == 1:
        cls_labels = cls_labels.unsqueeze(0)
    if tuple(cls_labels.shape) != (batch, num_classes):
        raise CosaInputError(
            f"cls_labels must be B x C = {batch} x {num_classes} (one 0/1 entry per foreground class), "
            f"got {tuple(cls_labels.shape)}."
        )
    return cls_labels


def normalize_cams(cams: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Min-max normalise every (image, class) map to [0, 1): (x - min) / (max(x - min) + eps)."""
    _check_4d("cams", cams)
    shifted = cams - cams.amin(dim=(2, 3), keepdim=True)
    return shifted / (shifted.amax(dim=(2, 3), keepdim=True) + eps)


def valid_cams(cams: torch.Tensor, cls_labels: torch.Tensor) -> torch.Tensor:
    """Zero the CAMs of classes absent from the image labels (docs/method.md, "Teacher fusion")."""
    _check_4d("cams", cams)
    labels = _check_labels(cls_labels, cams.shape[0], cams.shape[1]).to(cams)
    return cams * labels[:, :, None, None]


def _split_outputs(out: object) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    if isinstance(out, torch.Tensor):
        return None, None, out
    if hasattr(out, "cam") and hasattr(out, "seg"):  # e.g. the network's CoSAOutput
        return out.cam, getattr(out, "aux_cam", None), out.seg
    if isinstance(out, Sequence) and len(out) == 3:
        return out[0], out[1], out[2]
    raise CosaInputError(
        "teacher_fusion's forward must return (cam, aux_cam, seg) or a single seg tensor, "
        f"got {type(out).__name__}; wrap the network call, e.g. `lambda x: net.forward_all_maps(x)`."
    )


def teacher_fusion(
    forward: Callable[[torch.Tensor], object],
    images: torch.Tensor,
    *,
    scales: Sequence[float] = (1.0, 0.5, 1.5),
    aux_last_scale_only: bool = False,
    flip: bool = True,
) -> TeacherOutput:
    """Multi-scale + horizontal-flip fusion of a network's maps (docs/method.md, "Teacher fusion"), without gradients.

    Each scale runs the image and its mirror as one batched forward of 2B images. CAMs: max over the
    flip pair, ReLU, sum over scales, per-class min-max normalisation. Aux CAM: the same, except that
    ``aux_last_scale_only=True`` keeps only the last scale (the official code's behaviour). Seg: the sum
    of all 2 x len(scales) logit maps. ``forward(x)`` returns ``(cam, aux_cam, seg)`` (any may be None),
    an object with ``cam`` / ``aux_cam`` / ``seg`` fields (the network's ``CoSAOutput``) or just the seg
    logits, at any resolution; outputs are resized back to the input size. ``flip=False`` skips the
    mirrored half (B images per scale, half the teacher's cost; CPU presets buy co-training steps with it).
    """
    _check_4d("images", images)
    if len(scales) == 0:
        raise CosaInputError("teacher_fusion needs at least one scale, e.g. scales=(1.0, 0.5, 1.5).")
    b, _, h, w = images.shape
    cams, aux_cams, segs = [], [], []

    def _merge_views(x: torch.Tensor, merge: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Resize to the input; with flip, merge the first B maps with the mirrored-back second B."""
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return merge(x[:b], x[b:].flip(-1)) if flip else x

    with torch.no_grad():
        for s in scales:
            size = (int(s * h), int(s * w))
            if min(size) < 1:
                raise CosaInputError(f"scale {s} shrinks the {h}x{w} input to nothing; use larger scales.")
            x = images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            cam, aux_cam, seg = _split_outputs(forward(torch.cat([x, x.flip(-1)], dim=0) if flip else x))
            if cam is not None:
                cams.append(F.relu(_merge_views(cam, torch.maximum)))
            if aux_cam is not None:
                fused = F.relu(_merge_views(aux_cam, torch.maximum))
                aux_cams = [fused] if aux_last_scale_only else [*aux_cams, fused]
            if seg is not None:
                segs.append(_merge_views(seg, torch.add))

    def _sum(maps: list[torch.Tensor]) -> torch.Tensor | None:
        return torch.stack(maps, dim=0).sum(dim=0) if maps else None

    cam_sum, aux_sum = _sum(cams), _sum(aux_cams)
    return TeacherOutput(
        cam=normalize_cams(cam_sum) if cam_sum is not None else None,
        aux_cam=normalize_cams(aux_sum) if aux_sum is not None else None,
        seg=_sum(segs),
    )


def _boxes(img_box: torch.Tensor | Sequence[int] | None, batch: int, h: int, w: int) -> torch.Tensor:
    """Return a B x 4 long tensor of (y0, y1, x0, x1) boxes; None means the whole map."""
    if img_box is None:
        return torch.tensor([[0, h, 0, w]] * batch, dtype=torch.long)
    box = torch.as_tensor(img_box).long().cpu()
    if box.dim() == 1 and box.numel() == 4:
        box = box.unsqueeze(0).expand(batch, 4)
    if tuple(box.shape) != (batch, 4):
        raise CosaInputError(
            f"img_box must be 4 values (y0, y1, x0, x1) or one such box per image (B x 4 = {batch} x 4), "
            f"got shape {tuple(box.shape)}."
        )
    return box


def cam_pseudo_label(
    valid_cams: torch.Tensor,
    cls_labels: torch.Tensor,
    *,
    t_high: float,
    t_low: float,
    downscale: int = 2,
    img_box: torch.Tensor | Sequence[int] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """CAM pseudo-label (CPL; docs/method.md, "CAM pseudo-labels"): B x H x W map, 0 = bg, c = class c, 255 = ignore.

    A constant background map at ``t_high`` (resp. ``t_low``) is put in front of the valid CAMs; the
    stack is bilinearly shrunk by ``downscale``, softmaxed over background + present classes, grown
    back and arg-maxed. Foreground of the high map wins, background of both maps is background, the
    rest (and everything outside ``img_box``) is ignored.
    """
    _check_4d("valid_cams", valid_cams)
    b, c, h, w = valid_cams.shape
    labels = _check_labels(cls_labels, b, c)
    present = torch.cat([torch.ones(b, 1, dtype=torch.bool), labels.detach().cpu() != 0], dim=1)
    boxes = _boxes(img_box, b, h, w)
    with torch.no_grad():
        bg = torch.ones(b, 1, h, w, dtype=valid_cams.dtype, device=valid_cams.device)
        stacks = [torch.cat([bg * float(t), valid_cams], dim=1) for t in (t_high, t_low)]
        if downscale and downscale > 1:
            small = (h // downscale, w // downscale)
            stacks = [F.interpolate(s, size=small, mode="bilinear", align_corners=False) for s in stacks]
        maps = []
        for stack in stacks:
            out = torch.empty(b, h, w, dtype=torch.long, device=valid_cams.device)
            for i in range(b):
                keys = torch.nonzero(present[i])[:, 0].to(valid_cams.device)
                probs = stack[i, keys].unsqueeze(0).softmax(dim=1)
                probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
                out[i] = keys[channel_argmax(probs)[0]]
            maps.append(out)
        high, low = maps
        cpl = high.clone()
        cpl[high == 0] = ignore_index
        cpl[(high == 0) & (low == 0)] = 0
        inside = torch.zeros(b, h, w, dtype=torch.bool, device=valid_cams.device)
        for i, (y0, y1, x0, x1) in enumerate(boxes.tolist()):
            inside[i, y0:y1, x0:x1] = True
        cpl[~inside] = ignore_index
    return cpl


def segmentation_pseudo_label(
    seg_logits: torch.Tensor, cls_labels: torch.Tensor, *, temperature: float = 0.01
) -> torch.Tensor:
    """Soft segmentation pseudo-label (SPL; docs/method.md, "Segmentation pseudo-labels"): softmax(logits / T)
    over K = C + 1 channels, with the logits of classes absent from the image set to -1e5 (background kept)."""
    _check_4d("seg_logits", seg_logits)
    if temperature <= 0:
        raise CosaInputError(f"temperature must be > 0 (the released recipe uses 0.01), got {temperature}.")
    return F.softmax(mask_absent_classes(seg_logits, cls_labels) / temperature, dim=1)


def mask_absent_classes(seg_logits: torch.Tensor, cls_labels: torch.Tensor) -> torch.Tensor:
    """Seg logits with the classes absent from the image labels set to -1e5; background (channel 0) kept.

    Used for the SPL and for the GT-filtered evaluation protocol ("Seg_vd"; docs/method.md, "Segmentation mIoU")."""
    _check_4d("seg_logits", seg_logits)
    b, k = seg_logits.shape[:2]
    labels = _check_labels(cls_labels, b, k - 1).to(seg_logits.device)
    keep = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=seg_logits.device), labels != 0], dim=1)
    return seg_logits.masked_fill(~keep[:, :, None, None], -1e5)

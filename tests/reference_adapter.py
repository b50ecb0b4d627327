"""Runs one reference case (schema of ``tests/cosa-reference-cases.json``) through cosa-sdk's own
functions and returns the outputs under the case's output keys, as JSON-compatible values.

Shapes are always read from the data: a key such as ``image_1x3x8x8`` may hold B x 3 x H x W and
``img_box_y0y1x0x1`` one box or one box per image. Keys are matched by name, ignoring a trailing
shape tag, so ``image_2x3x16x16`` would be found as well.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cosa_sdk.training.engine.schedule import set_lr
from cosa_sdk.training.evaluation.metrics import ConfusionMatrix
from cosa_sdk.training.method.dynamic_threshold import DynamicThreshold, gmm_thresholds
from cosa_sdk.training.method.losses import balanced_seg_loss, seg_to_cam_loss
from cosa_sdk.training.method.pseudo_labels import cam_pseudo_label, segmentation_pseudo_label, teacher_fusion

_SHAPE_TAG = re.compile(r"_[0-9A-Za-z]+(?:x[0-9A-Za-z]+)+$")


def _stem(key: str) -> str:
    return _SHAPE_TAG.sub("", key)


def _get(inputs: dict[str, Any], key: str) -> Any:
    if key in inputs:
        return inputs[key]
    matches = [k for k in inputs if _stem(k) == _stem(key)]
    if len(matches) != 1:
        raise KeyError(f"case input {key!r} not found (have {sorted(inputs)})")
    return inputs[matches[0]]


def _t(value: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.asarray(value), dtype=dtype)


def _plain(value: Any) -> Any:
    """JSON-compatible copy: tensors/arrays to nested lists, NaN to None."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


def _seg_loss(inputs: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
    logits = _t(_get(inputs, "seg_logits_BxKxHxW"))
    alpha = float(_get(inputs, "fg_alpha"))
    result = {"loss": balanced_seg_loss(logits, _t(_get(inputs, "label_BxHxW"), torch.long), fg_alpha=alpha)}
    if "loss_for_label_without_fg" in outputs:
        labels = _t(_get(inputs, "label_without_fg_BxHxW"), torch.long)
        result["loss_for_label_without_fg"] = balanced_seg_loss(logits, labels, fg_alpha=alpha)
    return result


def _spl(inputs: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
    probs = segmentation_pseudo_label(
        _t(_get(inputs, "seg_logits_BxKxHxW")),
        _t(_get(inputs, "cls_label_BxC")),
        temperature=float(_get(inputs, "temperature")),
    )
    return {"spl_probs_BxKxHxW": probs}


def _cam_loss(inputs: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
    cam = _t(_get(inputs, "cam_BxCxhxw")).requires_grad_(True)
    loss = seg_to_cam_loss(cam, _t(_get(inputs, "spl_probs_BxKxHxW")))
    loss.backward()
    return {"loss": loss, "grad_wrt_cam": cam.grad}


def _cpl(inputs: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
    box = _get(inputs, "img_box_y0y1x0x1") if "img_box" in {_stem(k) for k in inputs} else None
    cpl = cam_pseudo_label(
        _t(_get(inputs, "valid_cams_BxCxHxW")),
        _t(_get(inputs, "cls_label_BxC")),
        t_high=float(_get(inputs, "t_high")),
        t_low=float(_get(inputs, "t_low")),
        downscale=int(_get(inputs, "downscale")),
        img_box=None if box is None else torch.as_tensor(box, dtype=torch.long),
    )
    return {"cpl_BxHxW": cpl}


def _dynamic_threshold(inputs: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
    queue = np.asarray(_get(inputs, "queue_NxD"), dtype=np.float64)
    filter_thre = float(_get(inputs, "filter_thre"))
    low, high = gmm_thresholds(queue, filter_thre=filter_thre)
    side = max(1, math.isqrt(queue.shape[1]))
    tracker = DynamicThreshold(
        queue_rows=queue.shape[0],
        grid_size=side,
        init_low=float(_get(inputs, "ema_init_low")),
        init_high=float(_get(inputs, "ema_init_high")),
        filter_thre=filter_thre,
        momentum=float(_get(inputs, "ema_decay")),
    )
    if tracker.queue.shape != queue.shape:  # D not a square: use the queue directly
        tracker.queue = np.empty_like(queue)
    tracker.push_rows(queue)
    ema_low, ema_high = tracker.refit()
    return {
        "gmm_low": low,
        "gmm_high": high,
        "ema_low_after_1_update": ema_low,
        "ema_high_after_1_update": ema_high,
    }


def _toy_forward(w_cam: torch.Tensor, w_aux: torch.Tensor, w_seg: torch.Tensor) -> Callable:
    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = F.avg_pool2d(x, 4)
        return tuple(torch.einsum("oc,bchw->bohw", w, feats) for w in (w_cam, w_aux, w_seg))

    return forward


def _teacher(inputs: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
    forward = _toy_forward(
        _t(_get(inputs, "W_cam_Cx3")), _t(_get(inputs, "W_camaux_Cx3")), _t(_get(inputs, "W_seg_Kx3"))
    )
    fused = teacher_fusion(
        forward,
        _t(_get(inputs, "image_1x3x8x8")),
        scales=tuple(float(s) for s in _get(inputs, "scales")),
        aux_last_scale_only=True,
    )
    return {"cam": fused.cam, "cam_aux": fused.aux_cam, "seg_logits_sum": fused.seg}


def _lr_schedule(inputs: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in _get(inputs, "base_lrs")]
    optimizer = torch.optim.AdamW([{"params": [p], "lr": lr} for p, lr in zip(params, _get(inputs, "base_lrs"))])
    schedule = {
        "warmup_iter": int(_get(inputs, "warmup_iter")),
        "max_iter": int(_get(inputs, "max_iter")),
        "warmup_ratio": float(_get(inputs, "warmup_ratio")),
        "power": float(_get(inputs, "power")),
    }
    steps = list(outputs["lr_at_step"]) if "lr_at_step" in outputs else _get(inputs, "steps")
    return {"lr_at_step": {str(s): set_lr(optimizer, int(s), **schedule) for s in steps}}


def _miou(inputs: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
    matrix = ConfusionMatrix(int(_get(inputs, "num_classes")))
    for gt, pred in zip(_get(inputs, "gts"), _get(inputs, "preds")):
        matrix.update(np.asarray(pred), np.asarray(gt))
    return matrix.scores()


RUNNERS: dict[str, Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]] = {
    "seg_loss_bg_fg_balanced_ce": _seg_loss,
    "spl_masked_temperature_softmax": _spl,
    "cam_loss_v1_seg_to_cam": _cam_loss,
    "cpl_two_threshold_mask": _cpl,
    "dynamic_threshold_gmm3_and_ema": _dynamic_threshold,
    "teacher_multiscale_flip_fusion_toy_model": _teacher,
    "lr_schedule_poly_with_linear_warmup": _lr_schedule,
    "miou_confusion_matrix": _miou,
}


def run_case(case: dict) -> dict:
    """Outputs of cosa-sdk's functions for ``case``, under the case's output keys."""
    name = case["name"]
    if name not in RUNNERS:
        raise KeyError(f"no adapter for reference case {name!r}; known: {sorted(RUNNERS)}")
    wanted = case.get("outputs", {})
    result = RUNNERS[name](case["inputs"], wanted)
    keys = list(wanted) or list(result)
    return {k: _plain(result[k]) for k in keys}

"""Runs a recorded official training trajectory through cosa-sdk's own `official` code path.

`run_trajectory(case_dir)` reads a case folder (``inputs.npz``, ``init_weights.npz`` and the
configuration part of ``trajectory.json``: its ``case`` block; the per-iteration records are never
read), builds the `official` preset's network at the case's sizes, loads the case's initial weights,
and feeds the case's batches to `TrainingIteration`, the object the engine runs for every batch (lr
schedule, teacher pseudo-labels, losses, AdamW, EMA). Only the data loader is replaced. It returns
the iteration records in the trajectory schema (docs/official-trajectory.md) and writes the final
online and EMA weights to ``final_state.npz`` in a temporary folder named by ``final_state_npz``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cosa_sdk.training.config import apply_overrides, preset
from cosa_sdk.training.engine.iteration import TrainingIteration
from cosa_sdk.training.model.network import CoSANetwork
from cosa_sdk.training.model.official import map_official_state

CHECKSUM_GROUPS = ("backbone", "backbone_norm", "classifier", "aux_classifier", "decoder")
LR_GROUPS = {"backbone": "backbone", "backbone_norm": "backbone", "classifiers": "heads", "decoder": "heads"}
IGNORE = 255


def checksum_group(official_key: str) -> str:
    """The trajectory's weight group of an official state-dict key (pos_embed is in `backbone`)."""
    if official_key.startswith("encoder."):
        return "backbone_norm" if "norm" in official_key.removeprefix("encoder.") else "backbone"
    for group in ("aux_classifier", "classifier", "decoder"):
        if official_key.startswith(group):
            return group
    raise KeyError(f"no trajectory group for {official_key!r}")


def official_name(key: str) -> str:
    """CoSANetwork state-dict key -> official key (the inverse of `map_official_state`)."""
    return "encoder." + key.removeprefix("backbone.model.") if key.startswith("backbone.model.") else key


def build_config(case: dict[str, Any], overrides: list[str] | None = None):
    """The `official` preset at the case's sizes (network dimensions, batch, crop, schedule lengths),
    then `overrides` (key=value, as `cosa train` takes them)."""
    net = case["network"]
    if net.get("layernorm_eps", 1e-6) != 1e-6 or net.get("decoder", "LargeFOV") != "LargeFOV":
        raise ValueError(f"the official network has LayerNorm eps 1e-6 and a LargeFOV decoder, the case says {net}")
    backbone_kwargs = {
        "embed_dim": net["embed_dim"],
        "depth": net["depth"],
        "num_heads": net["heads"],
        "mlp_ratio": net["mlp_ratio"],
        "qkv_bias": net["qkv_bias"],
        "img_size": net["patch"] * net["pos_embed_grid"],
        "patch_size": net["patch"],
    }
    sizes = {
        "backbone": "vit_base_patch16_224",
        "backbone_weights": "none",
        "backbone_kwargs": json.dumps(backbone_kwargs),
        "aux_layer": net["aux_layer"],
        "decoder_channels": net["decoder_width"],
        "dilation": net["dilation"],
        "crop_size": case["crop"],
        "batch_size": case["batch"],
        "iters": case["iters"],
        "loss_warmup_iters": case["loss_warmup_iters"],
        "lr_warmup_iters": case["lr_warmup_iters"],
        "device": "cpu",
    }
    sized = apply_overrides(preset("official"), [f"{k}={v}" for k, v in sizes.items()])
    return apply_overrides(sized, list(overrides or []))


def _network(config, num_classes: int) -> CoSANetwork:
    return CoSANetwork(
        backbone=config.backbone,
        num_classes=num_classes,
        aux_layer=config.aux_layer,
        decoder_channels=config.decoder_channels,
        dilation=config.dilation,
        backbone_weights=config.backbone_weights,
        backbone_kwargs=config.backbone_kwargs,
    )


def _load(network: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = network.load_state_dict(map_official_state(state), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"case weights do not fit the network: missing {missing}, unexpected {unexpected}")


def _official_state(network: torch.nn.Module) -> dict[str, np.ndarray]:
    return {official_name(key): value.detach().cpu().float().numpy() for key, value in network.state_dict().items()}


def _checksums(state: dict[str, np.ndarray], init: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    sums = {g: dict(sum=0.0, sumsq=0.0, delta_sum=0.0, delta_sumsq=0.0, delta_abssum=0.0) for g in CHECKSUM_GROUPS}
    for key, reference in init.items():
        # a tensor the network does not hold (the ViT's unused ImageNet head) never changes
        w = state.get(key, reference).astype(np.float64).ravel()
        delta = w - reference.astype(np.float64).ravel()
        group = sums[checksum_group(key)]
        group["sum"] += float(w.sum())
        group["sumsq"] += float((w * w).sum())
        group["delta_sum"] += float(delta.sum())
        group["delta_sumsq"] += float((delta * delta).sum())
        group["delta_abssum"] += float(np.abs(delta).sum())
    return sums


def _hist(labels: torch.Tensor, num_classes: int) -> dict[str, int]:
    values = labels.flatten().long()
    counts = {str(c): int((values == c).sum()) for c in range(num_classes)}
    counts[str(IGNORE)] = int((values == IGNORE).sum())
    return counts


def _normalise(u8: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """What torchvision's ToTensor + Normalize compute from uint8 images, in float32."""
    x = torch.from_numpy(u8.astype(np.float32)) / torch.tensor(255.0, dtype=torch.float32)
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def _pseudo_record(pseudo, k: int) -> dict[str, Any]:
    spl = pseudo.spl.double()
    return {
        "cpl_hist": _hist(pseudo.cpl, k),
        "cpl_aux_hist": _hist(pseudo.cpl_aux, k),
        "cpl_hist_per_image": [_hist(c, k) for c in pseudo.cpl],
        "cpl_aux_hist_per_image": [_hist(c, k) for c in pseudo.cpl_aux],
        "spl_argmax_hist": [int((pseudo.spl.argmax(1) == c).sum()) for c in range(k)],
        "spl_mass": [float(v) for v in spl.sum(dim=(0, 2, 3))],
    }


def _adam_steps(iteration: TrainingIteration, names: dict[int, str]) -> dict[str, dict[str, int]]:
    """min/max of AdamW's step counter per trajectory lr group, over parameters that have state."""
    steps: dict[str, list[int]] = {}
    for group in iteration.optimizer.param_groups:
        for param in group["params"]:
            state = iteration.optimizer.state.get(param)
            if not state:
                continue
            key = names[id(param)].removeprefix("encoder.")
            if names[id(param)].startswith("encoder."):
                name = "backbone_norm" if "norm" in key else "backbone"
            else:
                name = "decoder" if key.startswith("decoder.") else "classifiers"
            steps.setdefault(name, []).append(int(state["step"]))
    return {name: {"min": min(v), "max": max(v)} for name, v in steps.items()}


def run_trajectory(case_dir: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Train the case's iterations through `TrainingIteration`; return the trajectory records.

    `overrides` (key=value) change the `official` preset, e.g. to show what a deviation does."""
    folder = Path(case_dir)
    case = json.loads((folder / "trajectory.json").read_text())["case"]
    inputs = np.load(folder / "inputs.npz")
    weights = np.load(folder / "init_weights.npz")
    torch.manual_seed(0)
    config = build_config(case, overrides)
    init_online = {k.removeprefix("online/"): weights[k] for k in weights.files if k.startswith("online/")}
    init_heads = {k.removeprefix("assignment/"): weights[k] for k in weights.files if k.startswith("assignment/")}
    online = _network(config, case["num_classes_cam"])
    _load(online, {k: torch.from_numpy(v) for k, v in init_online.items()})
    iteration = TrainingIteration.build(config, online)
    _load(iteration.assignment, {k: torch.from_numpy(v) for k, v in {**init_online, **init_heads}.items()})
    init_ema = {**init_online, **init_heads}
    k = case["num_classes_seg"]
    mean = torch.from_numpy(np.asarray(inputs["mean"], dtype=np.float32))
    std = torch.from_numpy(np.asarray(inputs["std"], dtype=np.float32))
    lr_group = {group["name"]: group for group in iteration.optimizer.param_groups}
    records = []
    for n in range(case["iters"]):
        batch = {
            "weak": _normalise(inputs["weak_u8"][n], mean, std),
            "strong": _normalise(inputs["strong_u8"][n], mean, std),
            "labels": torch.from_numpy(np.asarray(inputs["cls_label"][n], dtype=np.float32)),
            "box": torch.from_numpy(np.asarray(inputs["img_box"][n]).astype(np.int64)),
        }
        result = iteration(batch, n)
        t = iteration.losses.thresholds
        record: dict[str, Any] = {
            "iter": n,
            "loss_warmup": not iteration.losses.pseudo_labels_active(n),
            "losses": {**result.terms, "total": float(result.loss)},
            "lr": {name: float(lr_group[ours]["lr"]) for name, ours in LR_GROUPS.items()},
            "thresholds": {"high": t.high, "low": t.low, "aux_high": t.aux_high, "aux_low": t.aux_low},
            "checksums": {
                "online": _checksums(_official_state(online), init_online),
                "ema": _checksums(_official_state(iteration.assignment), init_ema),
            },
        }
        if result.pseudo is not None:
            record.update(_pseudo_record(result.pseudo, k))
        records.append(record)
    names = {id(p): official_name(name) for name, p in online.named_parameters()}
    out_dir = Path(tempfile.mkdtemp(prefix="cosa-trajectory-"))
    online_state, ema_state = _official_state(online), _official_state(iteration.assignment)
    final = {f"online/{key}": online_state.get(key, v) for key, v in init_online.items()}
    final.update({f"ema/{key}": ema_state.get(key, v) for key, v in init_ema.items()})
    np.savez(out_dir / "final_state.npz", **final)
    return {
        "iterations": records,
        "final": {"adam_step_count": _adam_steps(iteration, names)},
        "final_state_npz": str(out_dir / "final_state.npz"),
    }

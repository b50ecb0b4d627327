"""Builds trajectory cases from their seeds, as docs/official-trajectory.md ("Rebuilding a case") describes.

`case_block(...)` is the configuration, `initial_weights(case)` and `batches(case)` the two input files.
The public case is rebuilt bit for bit by these functions (tests/training/official/test_trajectory.py), so a case
of other sizes, classes or seeds made here is one the same adapter must handle.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from cosa_sdk.training.config import IMAGENET_MEAN, IMAGENET_STD

PAD_KINDS = {"pad": (0.35, 0.3), "heavy": (0.2, 0.1)}


def state_dict_keys(*, embed_dim: int, depth: int, patch: int, grid: int, width: int, classes: int) -> list:
    """(official key, shape) of the small official network, in the order the weights are drawn."""
    keys: list[tuple[str, list[int]]] = [
        ("encoder.cls_token", [1, 1, embed_dim]),
        ("encoder.pos_embed", [1, 1 + grid * grid, embed_dim]),
        ("encoder.patch_embed.proj.weight", [embed_dim, 3, patch, patch]),
        ("encoder.patch_embed.proj.bias", [embed_dim]),
    ]
    hidden = 4 * embed_dim
    for i in range(depth):
        b = f"encoder.blocks.{i}."
        keys += [
            (b + "norm1.weight", [embed_dim]),
            (b + "norm1.bias", [embed_dim]),
            (b + "attn.qkv.weight", [3 * embed_dim, embed_dim]),
            (b + "attn.qkv.bias", [3 * embed_dim]),
            (b + "attn.proj.weight", [embed_dim, embed_dim]),
            (b + "attn.proj.bias", [embed_dim]),
            (b + "norm2.weight", [embed_dim]),
            (b + "norm2.bias", [embed_dim]),
            (b + "mlp.fc1.weight", [hidden, embed_dim]),
            (b + "mlp.fc1.bias", [hidden]),
            (b + "mlp.fc2.weight", [embed_dim, hidden]),
            (b + "mlp.fc2.bias", [embed_dim]),
        ]
    return [
        *keys,
        ("encoder.norm.weight", [embed_dim]),
        ("encoder.norm.bias", [embed_dim]),
        ("decoder.conv6.weight", [width, embed_dim, 3, 3]),
        ("decoder.conv7.weight", [width, width, 3, 3]),
        ("decoder.conv8.weight", [classes + 1, width, 1, 1]),
        ("classifier.weight", [classes, embed_dim, 1, 1]),
        ("aux_classifier.weight", [classes, embed_dim, 1, 1]),
    ]


def case_block(
    *,
    weights_seed: int,
    inputs_seed: int,
    classes: int,
    batch: int,
    crop: int,
    iters: int,
    loss_warmup_iters: int,
    lr_warmup_iters: int,
    padded_crops: list[dict[str, Any]],
    embed_dim: int = 96,
    depth: int = 4,
    heads: int = 3,
    width: int = 64,
) -> dict[str, Any]:
    network = {
        "patch": 16,
        "embed_dim": embed_dim,
        "depth": depth,
        "heads": heads,
        "mlp_ratio": 4,
        "qkv_bias": True,
        "layernorm_eps": 1e-6,
        "pos_embed_grid": 14,
        "aux_layer": -3,
        "decoder": "LargeFOV",
        "decoder_width": width,
        "dilation": 5,
        "encoder_head": None,
    }
    keys = state_dict_keys(embed_dim=embed_dim, depth=depth, patch=16, grid=14, width=width, classes=classes)
    return {
        "weights_seed": weights_seed,
        "inputs_seed": inputs_seed,
        "num_classes_seg": classes + 1,
        "num_classes_cam": classes,
        "batch": batch,
        "crop": crop,
        "iters": iters,
        "loss_warmup_iters": loss_warmup_iters,
        "lr_warmup_iters": lr_warmup_iters,
        "padded_crops": padded_crops,
        "network": network,
        "state_dict_keys": [[k, s] for k, s in keys],
    }


def _draw(rng: np.random.Generator, key: str, shape: list[int]) -> np.ndarray:
    if key.endswith(("cls_token", "pos_embed")):
        mean, std = 0.0, 0.02
    elif "norm" in key and key.endswith(".weight"):
        mean, std = 1.0, 0.1
    elif key.endswith(".bias"):
        mean, std = 0.0, 0.02
    else:
        mean, std = 0.0, 1.0 / math.sqrt(math.prod(shape[1:]))
    u = rng.random(math.prod(shape))
    return np.float32(mean + std * math.sqrt(3.0) * (2.0 * u - 1.0)).reshape(shape)


def initial_weights(case: dict[str, Any]) -> dict[str, np.ndarray]:
    """`online/<key>` for every tensor, then `assignment/<key>` for the heads, from one generator."""
    rng = np.random.Generator(np.random.PCG64(case["weights_seed"]))
    shapes = {key: shape for key, shape in case["state_dict_keys"]}
    out = {f"online/{key}": _draw(rng, key, shape) for key, shape in case["state_dict_keys"]}
    for key in ("decoder.conv6.weight", "decoder.conv7.weight", "decoder.conv8.weight"):
        out[f"assignment/{key}"] = _draw(rng, key, shapes[key])
    for key in ("classifier.weight", "aux_classifier.weight"):
        out[f"assignment/{key}"] = _draw(rng, key, shapes[key])
    return out


def _image(rng: np.random.Generator, present: list[int], size: int) -> np.ndarray:
    centre = (np.arange(size) + 0.5) / size - 0.5
    bg = 30 + 170 * rng.random(3)
    gy, gx = 40 * (2 * rng.random(2) - 1)
    img = bg[:, None, None] + gy * centre[None, :, None] + gx * centre[None, None, :]
    pix = np.arange(size) + 0.5
    for c in present:
        r = rng.random(4)
        cy, cx = size * (0.15 + 0.7 * r[0]), size * (0.15 + 0.7 * r[1])
        ry, rx = size * (0.12 + 0.2 * r[2]), size * (0.12 + 0.2 * r[3])
        inside = ((pix[:, None] - cy) / ry) ** 2 + ((pix[None, :] - cx) / rx) ** 2 <= 1
        colour = ((60 + 47 * (c + 1)) % 256, (200 - 53 * (c + 1)) % 256, (90 + 101 * (c + 1)) % 256)
        img[:, inside] = np.asarray(colour, dtype=np.float64)[:, None]
    img = img + 24 * (rng.random((3, size, size)) - 0.5)
    return np.floor(np.clip(img, 0, 255))


def batches(case: dict[str, Any]) -> dict[str, np.ndarray]:
    """The case's pre-augmented batches: weak/strong uint8 views, labels, crop boxes, mean and std."""
    rng = np.random.Generator(np.random.PCG64(case["inputs_seed"]))
    n_iter, b, c, h = case["iters"], case["batch"], case["num_classes_cam"], case["crop"]
    pads = {(p["iter"], p["image"]): p["kind"] for p in case["padded_crops"]}
    weak = np.zeros((n_iter, b, 3, h, h), np.uint8)
    strong = np.zeros_like(weak)
    labels = np.zeros((n_iter, b, c), np.float32)
    boxes = np.zeros((n_iter, b, 4), np.int16)
    for n in range(n_iter):
        for i in range(b):
            keys = rng.random(c)
            k = 1 + math.floor(rng.random() * min(3, c))
            present = sorted(int(j) for j in np.argsort(keys, kind="stable")[:k])
            labels[n, i, present] = 1
            img = _image(rng, present, h)
            box = [0, h, 0, h]
            if (n, i) in pads:
                lo, span = PAD_KINDS[pads[(n, i)]]
                r = rng.random(4)
                hv, wv = round(h * (lo + span * r[0])), round(h * (lo + span * r[1]))
                y0, x0 = math.floor(r[2] * (h - hv + 1)), math.floor(r[3] * (h - wv + 1))
                box = [y0, y0 + hv, x0, x0 + wv]
                outside = np.ones((h, h), bool)
                outside[box[0] : box[1], box[2] : box[3]] = False
                img[:, outside] = 0
            a = 0.6 + 0.8 * rng.random()
            s = 60 * (rng.random() - 0.5)
            weak[n, i] = img.astype(np.uint8)
            strong[n, i] = np.floor(np.clip(a * (img - 128) + 128 + s, 0, 255)).astype(np.uint8)
            boxes[n, i] = box
    return {
        "weak_u8": weak,
        "strong_u8": strong,
        "cls_label": labels,
        "img_box": boxes,
        "mean": np.asarray(IMAGENET_MEAN, np.float32),
        "std": np.asarray(IMAGENET_STD, np.float32),
    }


def write_case(folder: Path, case: dict[str, Any]) -> Path:
    """A case folder the adapter reads: inputs.npz, init_weights.npz and trajectory.json (case block only)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "inputs.npz", **batches(case))
    np.savez(folder / "init_weights.npz", **initial_weights(case))
    (folder / "trajectory.json").write_text(json.dumps({"case": case}))
    return folder

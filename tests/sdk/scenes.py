"""Images for the SDK tests, and the toy colour model's expected output computed in torch."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from toy_bundle import MEAN, STD, ColourNet


def blocks(height: int = 333, width: int = 517, seed: int = 0) -> np.ndarray:
    """Red on the left, gray in the middle, green on the right, with a little noise."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 128, dtype=np.int16)
    image[:, : width // 3] = (220, 30, 30)
    image[:, 2 * width // 3 :] = (20, 210, 40)
    image += rng.integers(-10, 11, image.shape, dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def torch_reference(image: np.ndarray, *, sizes: list[tuple[int, int]] | None) -> torch.Tensor:
    """The official recipe in torch: normalise, resize to 64; per TTA size run image + flip and sum the
    logits at 64 (no TTA: `sizes=None`); resize to the image size; softmax."""
    net = ColourNet(3).eval()
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        if sizes is None:
            total = net(x)
        else:
            total = torch.zeros(1, 3, 64, 64)
            for size in sizes:
                scaled = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
                out = net(scaled) + net(scaled.flip(-1)).flip(-1)
                total += F.interpolate(out, size=(64, 64), mode="bilinear", align_corners=False)
    logits = F.interpolate(total, size=image.shape[:2], mode="bilinear", align_corners=False)
    return torch.softmax(logits, 1)[0]


def need_network() -> None:
    """Skip unless the torch backend can rebuild a network here (timm, safetensors, training/model/network.py)."""
    pytest.importorskip("timm")
    pytest.importorskip("safetensors")
    try:
        importlib.import_module("cosa_sdk.training.model.network")
    except ImportError as err:
        pytest.skip(f"training/model/network.py does not import: {err}")


def noise(height: int, width: int, seed: int) -> np.ndarray:
    """Uniform random RGB pixels: an image without colour meaning (for models trained on nothing)."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)

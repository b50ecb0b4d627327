"""Pictures of what training sees: image, CAM, CAM pseudo-label, seg pseudo-label, prediction side by side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IGNORE_COLOUR = (255, 255, 255)


def denormalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """3xHxW normalised tensor -> HxWx3 uint8."""
    mean_t = torch.tensor(mean, device=image.device).view(3, 1, 1)
    std_t = torch.tensor(std, device=image.device).view(3, 1, 1)
    pixels = ((image.float() * std_t + mean_t).clamp(0, 1) * 255).round().byte()
    return pixels.permute(1, 2, 0).cpu().numpy()


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """Label map -> HxWx3 uint8 with the palette; 255 (ignore) is white."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)[:256]
    table[255] = IGNORE_COLOUR
    return table[np.asarray(mask, dtype=np.uint8)]


def heatmap(values: np.ndarray) -> np.ndarray:
    """[0, 1] map -> HxWx3 uint8 with a blue-green-yellow-red ramp (no matplotlib needed)."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    stops = np.array([[0, 0, 96], [0, 128, 255], [0, 224, 128], [255, 224, 0], [224, 32, 0]], dtype=np.float32)
    position = v * (len(stops) - 1)
    low = np.floor(position).astype(int).clip(0, len(stops) - 2)
    frac = (position - low)[..., None]
    return (stops[low] * (1 - frac) + stops[low + 1] * frac).astype(np.uint8)


def blend(image: np.ndarray, overlay: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    return (image.astype(np.float32) * (1 - alpha) + overlay.astype(np.float32) * alpha).astype(np.uint8)


def grid(rows: Sequence[Sequence[np.ndarray]], *, cell: int = 128, gap: int = 2) -> Image.Image:
    """Tile HxWx3 uint8 arrays (resized to cell x cell) into one picture, white gaps between cells."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    canvas = Image.new("RGB", (n_cols * (cell + gap) - gap, n_rows * (cell + gap) - gap), (255, 255, 255))
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            tile = Image.fromarray(picture).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (c * (cell + gap), r * (cell + gap)))
    return canvas


@torch.no_grad()
def save_training_samples(
    path: Path, batch: dict, pseudo, online: torch.nn.Module, *, palette, mean, std, limit: int = 4
) -> Path:
    """Write a PNG: per row image | CAM (assignment net) | CPL | SPL | online prediction."""
    was_training = online.training
    online.eval()
    prediction = online.forward_seg(batch["strong"][:limit])
    online.train(was_training)
    size = batch["weak"].shape[-2:]
    prediction = torch.nn.functional.interpolate(prediction, size=size, mode="bilinear", align_corners=False)
    rows = []
    for i in range(min(limit, batch["weak"].shape[0])):
        image = denormalize(batch["weak"][i], mean, std)
        cam = pseudo.valid_cam[i].amax(0).float().cpu().numpy()
        rows.append(
            [
                image,
                blend(image, heatmap(cam)),
                colorize(pseudo.cpl[i].cpu().numpy(), palette),
                colorize(pseudo.spl[i].argmax(0).cpu().numpy(), palette),
                colorize(prediction[i].argmax(0).cpu().numpy(), palette),
            ]
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(rows).save(path)
    return path

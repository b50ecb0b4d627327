"""Detail refinement: the decoder's coarse logits redrawn at a quarter of the input side from the image itself.

A ViT's decoder sees one grid cell per patch (14 px for DINOv2), so a shape thinner than a cell cannot be
drawn however well the network is trained. `DetailRefiner` runs a two-convolution stem on the normalised
image (stride 4), concatenates the coarse logits upsampled to that grid, and adds a learned correction.
Its last convolution starts at zero, so a fresh refiner returns the upsampled coarse logits unchanged and
training starts from exactly the network without it (docs/method.md, "Detail refinement").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DETAIL_STRIDE = 4


class DetailRefiner(nn.Module):
    """coarse logits (N, K, h, w) + images (N, 3, H, W) -> logits (N, K, ceil(H/4), ceil(W/4)).

    channels: width of the stem's output and of the two fusing convolutions (~0.1 M parameters at 32;
    under 2 % of a ViT-S forward at any input size).
    """

    def __init__(self, *, num_outputs: int, channels: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels // 2, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(channels + num_outputs, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.correction = nn.Conv2d(channels, num_outputs, 1)
        nn.init.zeros_(self.correction.weight)
        nn.init.zeros_(self.correction.bias)

    def forward(self, coarse: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        detail = self.stem(images)
        upsampled = F.interpolate(coarse, size=detail.shape[-2:], mode="bilinear", align_corners=False)
        return upsampled + self.correction(self.fuse(torch.cat([upsampled, detail], dim=1)))

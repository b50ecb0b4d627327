"""Input resolution that follows the data: the crop and evaluation side chosen from the images and objects.

A ViT's CAM is a grid of `stride`-pixel cells: an object must span a few cells of it to be drawn at all.
`choose_resolution` reads the sizes of a sample of images (file headers only) and, where masks exist,
the extent (bounding-box side) of every object, then picks the smallest side (a multiple of the stride)
at which the small objects (the 10th percentile) span `min_cells` cells, between the preset's side and
what the compute budget allows (cost grows with the side squared). The choice and its reasons are
printed before training. The chosen sides are written into the run's config (`crop_size`, `eval_size`), so a
config whose `eval_size` is set keeps its sides: resuming a run never chooses again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cosa_sdk.errors import CosaConfigError, CosaDataError
from cosa_sdk.training.config import TrainConfig
from cosa_sdk.training.data.common import IGNORE_INDEX, ItemIndex

SAMPLE_IMAGES = 200
SMALL_OBJECT_PERCENTILE = 10
MIN_EXTENT_PX = 4  # smaller regions are slivers of occluded objects, not objects
# an object must span this many CAM cells across to be drawn; 3 chose 252 and 266 px for benchmarks v1 and v2, where
# the `cpu` preset scored 2.9 and 1.9 label-free mIoU more at 224 px in 55 % and 66 % of the minutes; v3 and v4
# keep 308 px
# (docs/benchmarks.md, "The side `resolution=auto` picks for large objects")
MIN_CELLS = 2.5
COMPUTE_BUDGET = 2.0  # at most this many times the preset's compute per step (side grows with its square root)
RESOLUTION_MODES = ("preset", "auto")


@dataclass(frozen=True)
class ObjectSizes:
    """Image sides and object extents (sqrt of area over image side) of a sample of a dataset."""

    image_sides: tuple[int, ...]  # the shorter side of each sampled image
    object_extents: tuple[float, ...]  # bounding-box side of each object region, as a fraction of the image side

    @property
    def median_side(self) -> int | None:
        return int(np.median(self.image_sides)) if self.image_sides else None

    def small_object(self) -> float | None:
        if not self.object_extents:
            return None
        return float(np.percentile(self.object_extents, SMALL_OBJECT_PERCENTILE))


@dataclass(frozen=True)
class ResolutionChoice:
    crop_size: int
    eval_size: int
    reason: str


def measure_objects(indexes: Sequence[ItemIndex], *, limit: int = SAMPLE_IMAGES) -> ObjectSizes:
    """Sides of up to `limit` images spread over `indexes`, and the extents of the objects in their masks."""
    from scipy import ndimage

    items = [item for index in indexes for item in index.items]
    step = max(1, len(items) // limit)
    sides, extents = [], []
    for item in items[::step][:limit]:
        try:
            with Image.open(item.image) as image:
                width, height = image.size
        except OSError:
            continue  # unreadable files are reported by the dataset check, not here
        sides.append(min(width, height))
        if item.mask is None or not item.mask.is_file():
            continue
        mask = np.asarray(Image.open(item.mask))
        side = math.sqrt(mask.shape[0] * mask.shape[1])
        for cls in np.unique(mask):
            if cls in (0, IGNORE_INDEX):
                continue
            regions, _ = ndimage.label(ndimage.binary_dilation(mask == cls, iterations=2))  # across 255 bands
            for box in ndimage.find_objects(regions):
                extent = max(box[0].stop - box[0].start, box[1].stop - box[1].start) - 4
                if extent >= MIN_EXTENT_PX:
                    extents.append(extent / side)
    return ObjectSizes(tuple(sides), tuple(extents))


def choose_resolution(
    sizes: ObjectSizes,
    *,
    preset_side: int,
    stride: int,
    min_cells: float = MIN_CELLS,
    compute_budget: float = COMPUTE_BUDGET,
) -> ResolutionChoice:
    """The side for training crops and evaluation: see the module docstring."""
    ceiling = _multiple(preset_side * math.sqrt(compute_budget), stride, down=True)
    small = sizes.small_object()
    if small is None:
        side = preset_side
        why = "no masks to measure objects in: the preset's side"
    else:
        wanted = _multiple(min_cells * stride / small, stride)
        side = min(max(wanted, preset_side), ceiling)
        cells = small * side / stride
        why = (
            f"small objects ({SMALL_OBJECT_PERCENTILE}th percentile) span {100 * small:.0f} % of the image side: "
            f"{cells:.1f} cells of {stride} px at {side} px"
        )
        if wanted > ceiling:
            why += f" (fewer than {min_cells:g}: {wanted} px would cost more than {compute_budget:g}x the preset)"
        elif wanted < preset_side:
            why += " (the preset's side already resolves them)"
    median = sizes.median_side
    images = f"median image side {median} px" if median else "no readable images sampled"
    return ResolutionChoice(side, side, f"{images}; {why}")


def resolve_resolution(config: TrainConfig, data_spec: str) -> tuple[TrainConfig, str | None]:
    """`config` with crop and evaluation sides chosen from `data_spec` when `config.resolution` is "auto"
    (and the line saying why), else unchanged (None)."""
    if config.resolution not in RESOLUTION_MODES:
        raise CosaConfigError(
            f"resolution must be one of {', '.join(RESOLUTION_MODES)}, got {config.resolution!r}: "
            "resolution=auto picks the side from the data, resolution=preset keeps crop_size"
        )
    if config.resolution == "preset":
        return config, None
    if config.eval_size is not None:
        # chosen when the run started (a resumed run's config carries the sides) or set by the user: choosing
        # again from a capped side would grow it and the resumed run would no longer match its checkpoint
        return config, (
            f"resolution: crop {config.crop_size}, eval {config.eval_size} (kept: eval_size is set, by the run "
            "being resumed or by you; resolution=auto chooses only when eval_size is unset)"
        )
    from cosa_sdk.training.data.build import read_index
    from cosa_sdk.training.model.backbones import backbone_stride

    indexes = [read_index(data_spec, "train")]
    with contextlib.suppress(CosaDataError):  # no val split: the training images still give sizes
        indexes.append(read_index(data_spec, "val"))
    stride = backbone_stride(config.backbone, **config.backbone_kwargs)
    choice = choose_resolution(measure_objects(indexes), preset_side=config.crop_size, stride=stride)
    sized = dataclasses.replace(config, crop_size=choice.crop_size, eval_size=choice.eval_size)
    rescaled = f"; crops cut from images resized to {choice.eval_size} px" if config.rescale_base == "eval" else ""
    return sized, f"resolution: crop {choice.crop_size}, eval {choice.eval_size} ({choice.reason}){rescaled}"


def _multiple(value: float, stride: int, *, down: bool = False) -> int:
    units = math.floor(value / stride) if down else math.ceil(value / stride)
    return max(1, units) * stride

"""Real-looking images for parity checks and INT8 calibration.

Random tensors are a poor test of an exported segmenter: they keep every activation in a narrow band
and every logit near a tie. Export feeds the graph training images when the dataset is reachable, and
otherwise the photographs that ship with scikit-image.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cosa_sdk.errors import CosaError, CosaModelError

logger = logging.getLogger(__name__)

SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "motorcycle_left",
    "hubble_deep_field",
    "camera",
    "immunohistochemistry",
    "retina",
    "cat",
)


@dataclass(frozen=True)
class ImageSet:
    """uint8 RGB images of varied sizes and where they came from (for the report)."""

    images: list[np.ndarray]
    source: str


def dataset_images(spec: str, count: int, *, split: str = "train") -> list[np.ndarray]:
    """Up to `count` images of a dataset split, spread evenly over it (decoded only, no augmentation)."""
    from cosa_sdk.training.data.build import read_index
    from cosa_sdk.training.data.common import BAD_IMAGE_ERRORS, read_image

    items = read_index(spec, split).items
    picks = np.unique(np.linspace(0, len(items) - 1, num=min(count, len(items))).round().astype(int))
    images = []
    for index in picks:
        try:
            images.append(np.asarray(read_image(items[index].image)))
        except BAD_IMAGE_ERRORS as err:
            logger.warning("skipping unreadable image %s (%s)", items[index].image, err)
    return images


def skimage_photos(count: int) -> list[np.ndarray]:
    """Photographs bundled with scikit-image, as uint8 RGB (grey ones repeated over three channels)."""
    from skimage import data

    photos = []
    for name in SKIMAGE_PHOTOS:
        loader = getattr(data, name, None)
        if loader is None:
            continue
        try:
            photo = np.asarray(loader())
        except Exception as err:  # some photos are fetched on demand; offline they are simply skipped
            logger.debug("scikit-image photo %s unavailable: %s", name, err)
            continue
        if photo.ndim == 2:
            photo = np.repeat(photo[..., None], 3, axis=2)
        if photo.dtype != np.uint8:
            photo = (255 * (photo.astype(np.float64) / max(float(photo.max()), 1e-12))).astype(np.uint8)
        photos.append(np.ascontiguousarray(photo[..., :3]))
        if len(photos) == count:
            break
    return photos


def sample_images(spec: str | None, count: int) -> ImageSet:
    """`count` real-looking images: from the dataset `spec` when it can be read, else scikit-image photos."""
    if spec:
        try:
            images = dataset_images(spec, count)
            if images:
                return ImageSet(images=images, source=f"dataset {spec}")
        except (CosaError, OSError, ImportError) as err:
            logger.warning("cannot read images of %s (%s); using scikit-image photographs instead", spec, err)
    photos = skimage_photos(count)
    if not photos:
        raise CosaModelError(
            "no images to verify the export with: pass --data SPEC (the training dataset) or install scikit-image"
        )
    return ImageSet(images=photos, source="scikit-image photographs")


def evaluation_images(spec: str | None, count: int) -> ImageSet:
    """`count` validation images: the dataset's evaluation split, else its training split, else the photographs."""
    if spec:
        for split in ("val", "train"):
            try:
                images = dataset_images(spec, count, split=split)
            except (CosaError, OSError, ImportError) as err:
                logger.info("no %s images of %s (%s)", split, spec, err)
                continue
            if images:
                return ImageSet(images=images, source=f"dataset {spec} ({split})")
    return sample_images(None, count)


def prepare_batch(
    images: Sequence[np.ndarray], size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """Resize (bilinear, aspect ratio not kept, as the SDK feeds a fixed-size model) and normalise: N x 3 x H x W."""
    height, width = size
    batch = np.empty((len(images), 3, height, width), dtype=np.float32)
    scale = np.float32(255.0) * np.asarray(std, dtype=np.float32)
    offset = np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)
    for i, image in enumerate(images):
        resized = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(resized, dtype=np.float32)
        batch[i] = (pixels / scale - offset).transpose(2, 0, 1)
    return batch

"""Torch datasets over an `ItemIndex`: seeded, resumable training samples and evaluation samples."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cosa_sdk.constants import IMAGENET_MEAN, IMAGENET_STD
from cosa_sdk.errors import CosaConfigError, CosaDataError, CosaInputError
from cosa_sdk.training.data.common import (
    BAD_IMAGE_ERRORS,
    IGNORE_INDEX,
    Item,
    ItemIndex,
    labels_from_mask,
    multi_hot,
    read_image,
    read_mask,
    voc_palette,
)
from cosa_sdk.training.data.transforms import (
    eval_image,
    normalize,
    sample_params,
    valid_box,
    weak_strong_views,
)

logger = logging.getLogger(__name__)
MAX_BAD_FRACTION = 0.01


def _check_norm(mean: Sequence[float], std: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise CosaConfigError(f"mean/std must be 3 values each with std > 0, got mean={mean}, std={std}.")
    if max(mean) > 1.0 or max(std) > 1.0:
        raise CosaConfigError(
            f"mean/std {mean}/{std} look like the 0-255 scale; give them on the 0-1 scale "
            f"(ImageNet: mean={IMAGENET_MEAN}, std={IMAGENET_STD})."
        )
    return mean, std


class ItemDataset(Dataset):
    """Common part: class names, palette, image/mask reading and bookkeeping of unreadable images."""

    def __init__(
        self,
        index: ItemIndex,
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if not index.items:
            raise CosaDataError(f"{index.source}: the split has no images; check its name list and folders.")
        self.index = index
        self.split: str | None = index.split  # the split actually read, e.g. "train_aug"
        self.items: list[Item] = index.items
        self.classes: list[str] = list(index.classes)
        self.num_classes: int = len(self.classes)
        self.palette: list[list[int]] = voc_palette(self.num_classes + 1)
        self.mean, self.std = _check_norm(mean, std)
        self.bad_images: list[str] = []

    def __len__(self) -> int:
        return len(self.items)

    def _load_mask(self, item: Item, size: tuple[int, int]) -> np.ndarray | None:
        if item.mask is None:
            return None
        return read_mask(item.mask, num_classes=self.num_classes, size=size)

    def _labels(self, item: Item, mask: np.ndarray | None) -> np.ndarray:
        if item.labels is not None:
            return multi_hot(item.labels, self.num_classes)
        if mask is None:
            raise CosaDataError(f"{item.image}: no image labels and no mask to derive them from.")
        return multi_hot(labels_from_mask(mask, self.num_classes), self.num_classes)

    def label_sets(self) -> list[tuple[int, ...]]:
        """Every item's 0-based foreground classes, in item order (masks are read for items without labels)."""
        sets = []
        for item in self.items:
            if item.labels is not None:
                sets.append(tuple(sorted(set(item.labels))))
            elif item.mask is not None:
                sets.append(labels_from_mask(read_mask(item.mask, num_classes=self.num_classes), self.num_classes))
            else:
                sets.append(())
        return sets

    def _record_bad(self, item: Item, exc: BaseException) -> None:
        if item.name not in self.bad_images:
            self.bad_images.append(item.name)
            logger.warning("skipping unreadable image %s (%s)", item.image, exc)
        limit = MAX_BAD_FRACTION * len(self.items)
        if len(self.bad_images) > limit:
            raise CosaDataError(
                f"{len(self.bad_images)} of {len(self.items)} images of {self.index.source} cannot be read "
                f"(more than {MAX_BAD_FRACTION:.0%}; first: {', '.join(self.bad_images[:5])}). Re-export or "
                "remove them; `dataset.check_images()` lists every unreadable file."
            )

    def check_images(self, *, workers: int = 4) -> list[str]:
        """Decode every image once; record and return the names of unreadable ones (raises above 1 %)."""

        def is_bad(item: Item) -> BaseException | None:
            try:
                read_image(item.image)
            except BAD_IMAGE_ERRORS as exc:
                return exc
            return None

        with ThreadPoolExecutor(max_workers=workers) as pool:
            errors = list(pool.map(is_bad, self.items))
        bad = [(item, exc) for item, exc in zip(self.items, errors) if exc is not None]
        for item, exc in bad:
            self._record_bad(item, exc)
        return [item.name for item, _ in bad]


class TrainDataset(ItemDataset):
    """Training samples for CoSA: a weak and a strong view sharing one random geometry.

    `dataset[key]` uses image `key % len(dataset)` and draws every random choice from an RNG seeded
    by `(seed, key)` only, so a key always yields the same sample in any worker and after a resume.
    """

    def __init__(
        self,
        index: ItemIndex,
        *,
        crop_size: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int = 0,
        rescale_range: tuple[float, float] = (0.5, 2.0),
        base_size: int | None = None,
        blur_prob: float = 0.5,
        supervision: str = "weak",
    ) -> None:
        super().__init__(index, mean=mean, std=std)
        if not isinstance(crop_size, int) or crop_size <= 0:
            raise CosaConfigError(f"crop_size must be a positive integer, got {crop_size!r}.")
        low, high = (float(v) for v in rescale_range)
        if not 0 < low <= high:
            raise CosaConfigError(f"rescale_range must be (low, high) with 0 < low <= high, got {rescale_range}.")
        if base_size is not None and (isinstance(base_size, bool) or not isinstance(base_size, int) or base_size <= 0):
            raise CosaConfigError(f"base_size must be a positive integer or None, got {base_size!r}.")
        if supervision not in ("weak", "full"):
            raise CosaConfigError(f"supervision must be 'weak' or 'full', got {supervision!r}.")
        self.crop_size = crop_size
        self.seed = int(seed)
        self.rescale_range = (low, high)
        self.base_size = base_size
        self.blur_prob = float(blur_prob)
        self.supervision = supervision
        if supervision == "full":
            missing = [item.name for item in self.items if item.mask is None]
            if missing:
                raise CosaDataError(
                    f"supervision='full' needs a mask for every training image, but {len(missing)} of "
                    f"{len(self.items)} images of {index.source} have none (first: {', '.join(missing[:5])}). "
                    "Add masks/<stem>.png for them, restrict train.txt to images with masks, or train weakly."
                )
        else:
            unlabelled = [item.name for item in self.items if item.labels is None and item.mask is None]
            if unlabelled:
                raise CosaDataError(
                    f"{len(unlabelled)} training images of {index.source} have neither image labels nor a mask "
                    f"(first: {', '.join(unlabelled[:5])}); give them labels."
                )

    def rng(self, key: int) -> np.random.Generator:
        """The RNG of one sample, a function of (seed, key) only."""
        return np.random.default_rng([self.seed, key])

    def __getitem__(self, key: int) -> dict[str, Any]:
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or key < 0:
            raise CosaInputError(f"training sample keys are non-negative integers, got {key!r}.")
        key = int(key)
        rng = self.rng(key)
        index = key % len(self.items)
        for _ in range(len(self.items)):
            item = self.items[index]
            try:
                image = read_image(item.image)
                break
            except BAD_IMAGE_ERRORS as exc:
                self._record_bad(item, exc)
                index = (index + 1) % len(self.items)
        else:  # pragma: no cover - _record_bad raises long before every image is bad
            raise CosaDataError(f"no readable image in {self.index.source}.")
        mask = self._load_mask(item, image.size)
        labels = self._labels(item, mask)
        params = sample_params(
            rng,
            image.size,
            crop_size=self.crop_size,
            rescale_range=self.rescale_range,
            blur_prob=self.blur_prob,
            base_size=self.base_size,
        )
        weak, strong, mask_crop = weak_strong_views(image, mask, params, self.crop_size)
        if mask_crop is None:
            mask_crop = np.full((self.crop_size, self.crop_size), IGNORE_INDEX, dtype=np.uint8)
        y0, y1, x0, x1 = valid_box(params, self.crop_size)
        return {
            "weak": normalize(weak, self.mean, self.std),
            "strong": normalize(strong, self.mean, self.std),
            "labels": torch.from_numpy(labels),
            "box": torch.tensor([y0, y1, x0, x1], dtype=torch.int64),
            "mask": torch.from_numpy(mask_crop.astype(np.int64)),
            "has_mask": mask is not None,
            "name": item.name,
        }


class EvalDataset(ItemDataset):
    """Evaluation samples: the image squashed to eval_size x eval_size and the mask at the original size."""

    def __init__(
        self,
        index: ItemIndex,
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        eval_size: int | None = None,
    ) -> None:
        super().__init__(index, mean=mean, std=std)
        if eval_size is not None and (not isinstance(eval_size, int) or eval_size <= 0):
            raise CosaConfigError(f"eval_size must be a positive integer or None, got {eval_size!r}.")
        missing = [item.name for item in self.items if item.mask is None]
        if missing:
            raise CosaDataError(
                f"{len(missing)} evaluation images of {index.source} have no mask (first: "
                f"{', '.join(missing[:5])}); evaluation needs a mask for every image."
            )
        self.eval_size = eval_size

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        try:
            image = read_image(item.image)
        except BAD_IMAGE_ERRORS as exc:
            raise CosaDataError(
                f"{item.image}: cannot read this evaluation image ({exc}); replace it or remove it from the "
                "split (evaluation does not skip images, to keep scores comparable)."
            ) from exc
        mask = self._load_mask(item, image.size)
        raw = np.asarray(image, dtype=np.uint8)
        return {
            "image": eval_image(raw, self.mean, self.std, self.eval_size),
            "mask": torch.from_numpy(mask.astype(np.int64)),
            "labels": torch.from_numpy(self._labels(item, mask)),
            "name": item.name,
            "raw": torch.from_numpy(raw.copy()),
        }


def collate_eval(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch evaluation samples: images and labels stacked (images as a list if sizes differ), masks and
    raw images as lists (original sizes differ)."""
    images = [sample["image"] for sample in batch]
    same = all(img.shape == images[0].shape for img in images)
    return {
        "image": torch.stack(images) if same else images,
        "mask": [sample["mask"] for sample in batch],
        "labels": torch.stack([sample["labels"] for sample in batch]),
        "name": [sample["name"] for sample in batch],
        "raw": [sample["raw"] for sample in batch],
    }

"""PASCAL VOC 2012 (with the SBD-augmented `train_aug` split when present).

Layout: `VOC2012/{JPEGImages, SegmentationClass, SegmentationClassAug, ImageSets/Segmentation/*.txt}`.
PATH may be the VOC2012 folder, the VOCdevkit folder or its parent. Image labels come from
`cls_labels_onehot.npy` (the official name -> float[20] dict) when present, else from the masks,
read lazily with each sample.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cosa_sdk.errors import CosaDataError
from cosa_sdk.training.data.classes import VOC_CLASSES
from cosa_sdk.training.data.common import Item, ItemIndex, read_name_list

VOC_SPLITS = ("train", "train_aug", "val")


def resolve_voc_root(path: Path) -> Path:
    """Find the VOC2012 folder (the one holding JPEGImages) from PATH."""
    for candidate in (path, path / "VOC2012", path / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise CosaDataError(
        f"{path} is not a VOC 2012 folder: expected VOCdevkit/VOC2012/JPEGImages (with SegmentationClass "
        "and ImageSets/Segmentation). Give voc:PATH to VOC2012, VOCdevkit or the folder above it."
    )


def _split_list(root: Path, split: str) -> Path:
    candidates = [root / "ImageSets" / "Segmentation" / f"{split}.txt", root / f"{split}.txt"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    hint = (
        " (train_aug needs the SBD augmentation: SegmentationClassAug + train_aug.txt)" if split == "train_aug" else ""
    )
    raise CosaDataError(f"VOC split list not found: {candidates[0]}{hint}.")


def _official_labels(root: Path) -> dict[str, tuple[int, ...]] | None:
    path = root / "cls_labels_onehot.npy"
    if not path.is_file():
        return None
    try:
        table = np.load(path, allow_pickle=True).item()
        return {str(k): tuple(int(i) for i in np.flatnonzero(np.asarray(v) > 0.5)) for k, v in table.items()}
    except (OSError, ValueError, AttributeError) as exc:
        raise CosaDataError(f"{path}: cannot read it as a name -> one-hot dict ({exc}); remove it.") from exc


def read_voc(path: Path, split: str) -> ItemIndex:
    """Resolve a VOC split ("train", "train_aug" or "val") into an ItemIndex."""
    if split not in VOC_SPLITS:
        raise CosaDataError(f"VOC splits are {', '.join(VOC_SPLITS)}, not {split!r}.")
    root = resolve_voc_root(Path(path))
    list_path = _split_list(root, split)
    # The official val masks are SegmentationClass; training prefers the larger augmented set.
    order = (
        ("SegmentationClass", "SegmentationClassAug")
        if split == "val"
        else ("SegmentationClassAug", "SegmentationClass")
    )
    mask_dirs = [(root / d, set(os.listdir(root / d))) for d in order if (root / d).is_dir()]
    official = _official_labels(root)
    images = set(os.listdir(root / "JPEGImages"))
    items = []
    for number, name in read_name_list(list_path):
        if f"{name}.jpg" not in images:
            raise CosaDataError(f"{list_path}:{number}: image {root / 'JPEGImages' / (name + '.jpg')} is missing.")
        mask = next((folder / f"{name}.png" for folder, files in mask_dirs if f"{name}.png" in files), None)
        labels = official.get(name) if official is not None else None
        if mask is None and (labels is None or split == "val"):
            raise CosaDataError(
                f"{list_path}:{number}: no mask {name}.png in SegmentationClassAug or SegmentationClass; "
                "VOC image labels are derived from the masks, and evaluation needs them."
            )
        items.append(Item(name=name, image=root / "JPEGImages" / f"{name}.jpg", mask=mask, labels=labels))
    return ItemIndex(classes=list(VOC_CLASSES), items=items, source=f"voc:{root} ({split})")

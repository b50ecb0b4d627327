"""PASCAL VOC 2012 (with the SBD-augmented `train_aug` split when present).

Layout: `VOC2012/{JPEGImages, SegmentationClass, SegmentationClassAug, ImageSets/Segmentation/*.txt}`.
PATH may be the VOC2012 folder, the VOCdevkit folder or its parent. Image labels come from
`cls_labels_onehot.npy` (the official name -> float[20] dict) when present, else from the masks,
read lazily with each sample. The training role reads `train_aug` (10,582 images, the CoSA recipe)
when its list and SegmentationClassAug exist, else `train` (1,464 images) with a warning:
`default_train_split`.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from cosa_sdk.errors import CosaDataError
from cosa_sdk.training.data.classes import VOC_CLASSES
from cosa_sdk.training.data.common import Item, ItemIndex, read_name_list

logger = logging.getLogger(__name__)
VOC_SPLITS = ("train", "train_aug", "val")
SBD_HINT = (
    "add the SBD augmentation (SegmentationClassAug/ with the 10,582 augmented masks and "
    "ImageSets/Segmentation/train_aug.txt) to train like the CoSA recipe"
)


def resolve_voc_root(path: Path) -> Path:
    """Find the VOC2012 folder (the one holding JPEGImages) from PATH."""
    for candidate in (path, path / "VOC2012", path / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise CosaDataError(
        f"{path} is not a VOC 2012 folder: expected VOCdevkit/VOC2012/JPEGImages (with SegmentationClass "
        "and ImageSets/Segmentation). Give voc:PATH to VOC2012, VOCdevkit or the folder above it."
    )


def _split_candidates(root: Path, split: str) -> list[Path]:
    return [root / "ImageSets" / "Segmentation" / f"{split}.txt", root / f"{split}.txt"]


def _split_list(root: Path, split: str) -> Path:
    candidates = _split_candidates(root, split)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    hint = (
        " (train_aug needs the SBD augmentation: SegmentationClassAug + train_aug.txt)" if split == "train_aug" else ""
    )
    raise CosaDataError(f"VOC split list not found: {candidates[0]}{hint}.")


def train_aug_missing(root: Path) -> list[str]:
    """What a VOC2012 folder lacks for the `train_aug` split (relative names; empty when it is usable)."""
    missing = []
    if not any(candidate.is_file() for candidate in _split_candidates(root, "train_aug")):
        missing.append("ImageSets/Segmentation/train_aug.txt")
    if not (root / "SegmentationClassAug").is_dir():
        missing.append("SegmentationClassAug/")
    return missing


def default_train_split(path: Path) -> str:
    """The split the training role reads when the spec pins none: `train_aug` when usable, else `train`.

    Falling back to `train` logs a warning naming what is missing and the fix.
    """
    root = resolve_voc_root(Path(path))
    missing = train_aug_missing(root)
    if not missing:
        return "train_aug"
    logger.warning(
        "VOC %s has no train_aug split (missing %s): training on the 1,464-image train split instead of the "
        "10,582-image train_aug of the CoSA recipe. To fix, %s; to train on train on purpose and silence this, "
        "write voc:%s?split=train.",
        root,
        " and ".join(missing),
        SBD_HINT,
        path,
    )
    return "train"


# The only globals a pickled dict of float arrays (np.save of an object array) needs: array
# reconstruction, dtype and scalar. Anything else in the file is refused before it can run.
_NPY_GLOBALS = frozenset(
    {
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")
        for name in ("_reconstruct", "scalar", "_frombuffer")
    }
    | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("collections", "OrderedDict")}
)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _NPY_GLOBALS:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return super().find_class(module, name)


def read_label_table(path: Path) -> dict[str, Any]:
    """Read `cls_labels_onehot.npy` (a pickled name -> one-hot dict) without letting it run code.

    Plain (non-object) .npy files load with `allow_pickle=False`; object arrays are unpickled with an
    unpickler that only allows numpy array reconstruction, so a crafted file is refused, never executed.
    """
    fix = "delete it (the labels are then derived from the masks) or replace it with the official file"
    try:
        with path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            _, _, dtype = read_header(handle)
            if not dtype.hasobject:
                handle.seek(0)
                table = np.load(handle, allow_pickle=False)
            else:
                table = _NumpyOnlyUnpickler(handle, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise CosaDataError(
            f"{path}: refused to load it ({exc}): a label file only holds numpy arrays, and nothing in it was "
            f"executed; {fix}."
        ) from exc
    except (OSError, ValueError, EOFError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise CosaDataError(f"{path}: cannot read it as a name -> one-hot dict ({exc}); {fix}.") from exc
    if isinstance(table, np.ndarray) and table.dtype.hasobject and table.shape == ():
        table = table.item()
    if not isinstance(table, dict):
        raise CosaDataError(f"{path}: expected a name -> one-hot dict, got {type(table).__name__}; {fix}.")
    return table


def _official_labels(root: Path) -> dict[str, tuple[int, ...]] | None:
    path = root / "cls_labels_onehot.npy"
    if not path.is_file():
        return None
    table = read_label_table(path)
    try:
        return {
            str(k): tuple(int(i) for i in np.flatnonzero(np.asarray(v, dtype=np.float64) > 0.5))
            for k, v in table.items()
        }
    except (TypeError, ValueError) as exc:
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
    return ItemIndex(classes=list(VOC_CLASSES), items=items, source=f"voc:{root} ({split})", split=split)

"""ImageFolder trees: ROOT/<class>/<image>, one label per image (torchvision's layout).

ROOT/train/<class>/... and ROOT/val/<class>/... (also `valid`, `validation`) keep that split.
"""

from __future__ import annotations

from pathlib import Path

from cosa_sdk.errors import CosaDataError
from cosa_sdk.training.data.importers.plan import (
    ImportEntry,
    ImportPlan,
    check_class_list,
    class_name,
    is_background,
    is_image_file,
)

SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val"}


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if is_image_file(p) and not p.name.startswith("."))


def looks_like(root: Path) -> bool:
    """A folder whose sub-folders (or train/val sub-folders) hold images directly."""
    if not root.is_dir():
        return False
    dirs = _class_dirs(root)
    if dirs and all(d.name.lower() in SPLIT_FOLDERS for d in dirs):
        dirs = [c for d in dirs for c in _class_dirs(d)]
    return bool(dirs) and any(any(is_image_file(p) for p in d.iterdir()) for d in dirs)


def read_imagefolder(source: Path, **_options) -> ImportPlan:
    root = Path(source)
    if not root.is_dir():
        raise CosaDataError(f"{root} is not a folder; an ImageFolder tree is ROOT/<class name>/<images>.")
    top = _class_dirs(root)
    if top and all(d.name.lower() in SPLIT_FOLDERS for d in top):
        groups = [(SPLIT_FOLDERS[d.name.lower()], d) for d in top]
    else:
        groups = [(None, root)]
    raw: dict[str, str] = {}
    entries: list[ImportEntry] = []
    skipped = 0
    for split, base in groups:
        for folder in _class_dirs(base):
            name = class_name(folder.name, str(folder))
            raw.setdefault(folder.name, name)
            images = _images(folder)
            skipped += sum(1 for p in folder.rglob("*") if p.is_file() and not is_image_file(p))
            labels = () if is_background(name) else (name,)
            entries.extend(ImportEntry(source=p, name=p.name, labels=labels, split=split) for p in images)
    if not entries:
        raise CosaDataError(
            f"{root}: no images found in class folders; an ImageFolder tree is ROOT/<class name>/<images> "
            "(jpg, png, bmp, webp, tif)."
        )
    classes = sorted({n for n in raw.values() if not is_background(n)})
    check_class_list(classes, str(root), raw)
    notes = [f"{skipped} files that are not images were skipped"] if skipped else []
    if any(is_background(n) for n in raw.values()):
        notes.append("images in a background folder are imported without labels (negatives)")
    return ImportPlan(classes=classes, entries=entries, source=str(root), format="imagefolder", notes=notes)

"""The custom weakly labelled folder format (docs/contracts.md, "Custom folder format").

```
PATH/classes.txt   foreground class names, one per line (background is implicit, index 0)
PATH/images/       the images, flat
PATH/labels.csv    header `image,labels`; labels = class names separated by spaces
PATH/masks/        optional <stem>.png index masks (0 = background, i = i-th class, 255 = ignore)
PATH/train.txt     optional image stems to train on
PATH/val.txt       optional image stems to evaluate on
```
Defaults: every labelled image trains (minus val.txt when that exists) and every image with a mask
evaluates (minus train.txt when that exists). Rows with an empty label field are images without
foreground: CoSA's CAM stream needs at least one class per training image, so they are left out of
training and counted in `ItemIndex.notes["unlabelled"]` (they still evaluate if they have a mask);
listing one in train.txt is an error. Nothing is decoded here, so start-up stays cheap.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path

from cosa_sdk.constants import IMAGE_SUFFIXES
from cosa_sdk.errors import CosaDataError
from cosa_sdk.training.data.common import Item, ItemIndex, read_lines, read_name_list, read_text

logger = logging.getLogger(__name__)
MAX_CLASSES = 254  # mask value 255 is reserved for "ignore"


def read_classes(path: Path) -> list[str]:
    """Foreground class names from classes.txt, validated (unique, no spaces, no explicit background)."""
    if not path.is_file():
        raise CosaDataError(f"{path} is missing: list the foreground class names there, one per line.")
    classes: list[str] = []
    seen: dict[str, int] = {}
    for number, name in read_lines(path):
        if not name:
            continue
        where = f"{path}:{number}"
        if " " in name or "," in name:
            raise CosaDataError(f"{where}: class name {name!r} contains a space or comma; use _ instead.")
        if name.lower() in ("background", "_background_", "bg") and not classes:
            raise CosaDataError(f"{where}: background is implicit (index 0); remove the {name!r} line.")
        if name in seen:
            raise CosaDataError(f"{where}: class {name!r} is listed twice (first at line {seen[name]}).")
        seen[name] = number
        classes.append(name)
    if not classes:
        raise CosaDataError(f"{path} lists no class names: write the foreground classes, one per line.")
    if len(classes) > MAX_CLASSES:
        raise CosaDataError(f"{path} lists {len(classes)} classes; at most {MAX_CLASSES} fit 8-bit masks.")
    return classes


def _list_files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, str]:
    """stem -> file name of the files in a folder with one of the suffixes (one directory scan)."""
    files: dict[str, str] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, dot, suffix = entry.name.rpartition(".")
            if dot and ("." + suffix.lower()) in suffixes and entry.is_file():
                if stem in files:
                    raise CosaDataError(
                        f"{folder}: two files share the stem {stem!r} ({files[stem]}, {entry.name}); "
                        "image stems must be unique because masks and name lists refer to stems."
                    )
                files[stem] = entry.name
    return files


def _read_labels(path: Path, classes: list[str], images: dict[str, str]) -> dict[str, tuple[tuple[int, ...], int]]:
    """stem -> (0-based class indices, line number) from labels.csv, with file:line errors."""
    if not path.is_file():
        raise CosaDataError(
            f"{path} is missing: write a CSV with header `image,labels` and one row per image, "
            "labels = class names separated by spaces."
        )
    lookup = {name: i for i, name in enumerate(classes)}
    rows: dict[str, tuple[tuple[int, ...], int]] = {}
    text = read_text(path)
    finder = _ImageFinder(images, path.parent / "images")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or [h.strip().lower() for h in header] != ["image", "labels"]:
        raise CosaDataError(f"{path}:1: the header must be `image,labels`, got {','.join(header or [])!r}.")
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if not row or all(not field.strip() for field in row):
            continue
        if len(row) != 2:
            raise CosaDataError(
                f"{where}: expected 2 fields `image,labels`, got {len(row)} ({','.join(row)!r}); "
                "separate class names with spaces, not commas."
            )
        image, names = row[0].strip(), row[1].split()
        if not image:
            raise CosaDataError(f"{where}: the image field is empty.")
        stem = finder.find(image, where)
        if stem in rows:
            raise CosaDataError(f"{where}: duplicate row for {image!r} (first at line {rows[stem][1]}).")
        unknown = [n for n in names if n not in lookup]
        if unknown:
            raise CosaDataError(
                f"{where}: unknown class {unknown[0]!r}; known classes (classes.txt): "
                f"{', '.join(classes[:20])}{' ...' if len(classes) > 20 else ''}."
            )
        rows[stem] = (tuple(sorted({lookup[n] for n in names})), reader.line_num)
    finder.warn(path)
    return rows


class _ImageFinder:
    """Resolves an image named in labels.csv / train.txt / val.txt to its stem in images/.

    A name that differs from the file only in upper/lower case (`a.jpg` for `images/a.JPG`) is accepted,
    as Windows and macOS accept it, with one warning per file naming the exact name to write; a name
    that matches two files that way, or none, is an error with a hint.
    """

    def __init__(self, images: dict[str, str], folder: Path) -> None:
        self.images, self.folder = images, folder
        self.by_name: dict[str, list[str]] = {}
        self.by_stem: dict[str, list[str]] = {}
        for stem, name in images.items():
            self.by_name.setdefault(name.lower(), []).append(stem)
            self.by_stem.setdefault(stem.lower(), []).append(stem)
        self.case_fixed: list[tuple[str, str, str]] = []

    def find(self, image: str, where: str) -> str:
        has_suffix = image.lower().endswith(IMAGE_SUFFIXES)
        stem = image.rsplit(".", 1)[0] if has_suffix else image
        if stem in self.images and (not has_suffix or self.images[stem] == image):
            return stem
        matches = (self.by_name if has_suffix else self.by_stem).get(image.lower(), [])
        if len(matches) == 1:
            self.case_fixed.append((where, image, self.images[matches[0]]))
            return matches[0]
        if len(matches) > 1:
            names = " and ".join(self.images[m] for m in sorted(matches))
            raise CosaDataError(
                f"{where}: image {image!r} matches {names} in {self.folder} when upper/lower case is ignored; "
                "write the exact file name (or rename one of the files)."
            )
        hint = ""
        if has_suffix and stem in self.images:
            hint = f" ({self.images[stem]} exists: write {self.images[stem]!r} or just the stem {stem!r})"
        elif has_suffix and len(self.by_stem.get(stem.lower(), [])) == 1:
            other = self.images[self.by_stem[stem.lower()][0]]
            hint = f" ({other} exists: write {other!r})"
        raise CosaDataError(f"{where}: image {image!r} not found in {self.folder}{hint}.")

    def warn(self, path: Path) -> None:
        if self.case_fixed:
            where, image, actual = self.case_fixed[0]
            logger.warning(
                "%s: %d image names differ from the files only in upper/lower case (first: %s %r is %s); using "
                "those files. Write the exact names to silence this: file names are case-sensitive on Linux.",
                path,
                len(self.case_fixed),
                where,
                image,
                actual,
            )


def read_custom(root: Path, split: str) -> ItemIndex:
    """Resolve one split ("train" or "val") of a custom folder into an ItemIndex."""
    root = Path(root)
    if split not in ("train", "val"):
        raise CosaDataError(f"custom datasets have the splits 'train' and 'val', not {split!r}.")
    if not root.is_dir():
        raise CosaDataError(f"custom dataset folder {root} does not exist.")
    classes = read_classes(root / "classes.txt")
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise CosaDataError(f"{image_dir} is missing: put the images there (flat, jpg/png/...).")
    images = _list_files(image_dir, IMAGE_SUFFIXES)
    rows = _read_labels(root / "labels.csv", classes, images)
    masks = _list_files(root / "masks", (".png",)) if (root / "masks").is_dir() else {}
    lists = {name: _read_list(root / f"{name}.txt", images) for name in ("train", "val")}
    unlabelled = sum(1 for labels, _ in rows.values() if not labels)

    def item(stem: str) -> Item:
        mask = root / "masks" / masks[stem] if stem in masks else None
        labels = rows[stem][0] if stem in rows else None
        return Item(name=stem, image=image_dir / images[stem], mask=mask, labels=labels)

    if split == "train":
        if lists["train"] is not None:
            for stem, number in lists["train"]:
                _check_trainable(stem, number, root / "train.txt", rows)
            stems = [stem for stem, _ in lists["train"]]
        else:
            held_out = {stem for stem, _ in lists["val"] or []}
            stems = [stem for stem, (labels, _) in rows.items() if labels and stem not in held_out]
        if unlabelled:
            logger.warning(
                "%s: %d images have no labels and are not trained on (CoSA needs at least one class per image)",
                root / "labels.csv",
                unlabelled,
            )
    else:
        if lists["val"] is not None:
            for stem, number in lists["val"]:
                if stem not in masks:
                    raise CosaDataError(
                        f"{root / 'val.txt'}:{number}: {stem!r} has no mask {root / 'masks' / (stem + '.png')}; "
                        "evaluation needs a mask for every image."
                    )
            stems = [stem for stem, _ in lists["val"]]
        else:
            trained = {stem for stem, _ in lists["train"] or []}
            stems = sorted(stem for stem in masks if stem in images and stem not in trained)
        if not stems:
            raise CosaDataError(
                f"{root} has no evaluation images: add masks/<stem>.png (0 = background, i = i-th class) "
                "for some images, and optionally val.txt."
            )
    return ItemIndex(
        classes=classes,
        items=[item(stem) for stem in stems],
        source=f"custom:{root} ({split})",
        notes={"unlabelled": unlabelled, "masks": len(masks)},
        split=split,
    )


def _read_list(path: Path, images: dict[str, str]) -> list[tuple[str, int]] | None:
    if not path.is_file():
        return None
    seen: dict[str, int] = {}
    finder = _ImageFinder(images, path.parent / "images")
    for number, name in read_name_list(path):
        stem = finder.find(name, f"{path}:{number}")
        if stem in seen:
            raise CosaDataError(f"{path}:{number}: {stem!r} is listed twice (first at line {seen[stem]}).")
        seen[stem] = number
    finder.warn(path)
    return list(seen.items())


def _check_trainable(stem: str, number: int, path: Path, rows: dict) -> None:
    if stem not in rows:
        raise CosaDataError(f"{path}:{number}: {stem!r} has no row in labels.csv; every training image needs one.")
    labels, line = rows[stem]
    if not labels:
        raise CosaDataError(
            f"{path}:{number}: {stem!r} has no labels (labels.csv line {line}); CoSA needs at least one class "
            "per training image: label it or remove it from train.txt."
        )

"""The dataset check's view of the index: the dataset root, labels.csv line numbers, CosaDataError
messages as Problems, and a lenient reader of custom datasets that collects every index problem."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from cosa_sdk.constants import IMAGE_SUFFIXES
from cosa_sdk.errors import CosaDataError
from cosa_sdk.training.data.check.problems import Problem
from cosa_sdk.training.data.common import Item
from cosa_sdk.training.data.readers import READERS
from cosa_sdk.training.data.spec import DataSpec


def _dataset_root(spec: DataSpec) -> Path | None:
    reader = READERS[spec.kind]
    return reader.folder(spec) if reader.folder is not None else spec.path


def _custom_lines(root: Path) -> dict[str, int]:
    """stem -> labels.csv line, for pointing image problems of custom datasets at their row."""
    path = root / "labels.csv"
    lines: dict[str, int] = {}
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            next(reader, None)
            for row in reader:
                if row and row[0].strip():
                    image = row[0].strip()
                    stem = image.rsplit(".", 1)[0] if image.lower().endswith(IMAGE_SUFFIXES) else image
                    lines.setdefault(stem, reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    return lines


def _split_error(exc: CosaDataError) -> Problem:
    """A CosaDataError message `PATH:LINE: what; fix` as a Problem."""
    text = str(exc)
    file, line, rest = None, None, text
    head, sep, tail = text.partition(": ")
    if sep:
        path, colon, number = head.rpartition(":")
        if colon and number.isdigit():
            file, line, rest = path, int(number), tail
        elif "/" in head or "\\" in head:
            file, rest = head, tail
    what, semi, fix = rest.partition("; ")
    return Problem(file, what.rstrip("."), fix.rstrip(".") if semi else "see the message above", line=line)


def _lenient_custom(root: Path, role: str, classes: list[str]) -> tuple[list[Problem], list[Item]]:
    """When the strict reader stops at the first error in labels.csv or a name list, collect all of them
    (each with file:line) and the items that are fine, so one report lists everything."""
    problems: list[Problem] = []
    image_dir, mask_dir = root / "images", root / "masks"
    images = {}
    if image_dir.is_dir():
        for entry in os.scandir(image_dir):
            stem, dot, suffix = entry.name.rpartition(".")
            if dot and "." + suffix.lower() in IMAGE_SUFFIXES:
                images.setdefault(stem, entry.name)
    masks = {p.stem: p for p in mask_dir.glob("*.png")} if mask_dir.is_dir() else {}
    lookup = {name: i for i, name in enumerate(classes)}
    rows: dict[str, tuple[tuple[int, ...], int]] = {}
    path = root / "labels.csv"
    if path.is_file():
        with path.open(newline="", encoding="utf-8", errors="replace") as handle:
            reader = csv.reader(handle)
            next(reader, None)
            for row in reader:
                if not row or all(not f.strip() for f in row):
                    continue
                where = dict(file=str(path), line=reader.line_num)
                if len(row) != 2:
                    problems.append(
                        Problem(
                            what=f"expected 2 fields `image,labels`, got {len(row)}",
                            fix="separate class names with spaces, not commas",
                            **where,
                        )
                    )
                    continue
                image = row[0].strip()
                stem = image.rsplit(".", 1)[0] if image.lower().endswith(IMAGE_SUFFIXES) else image
                if stem not in images:
                    problems.append(
                        Problem(
                            what=f"image {image!r} not found in {image_dir}",
                            fix="add the image or delete the row",
                            item=stem,
                            split=role,
                            **where,
                        )
                    )
                    continue
                unknown = [n for n in row[1].split() if n not in lookup]
                if unknown:
                    problems.append(
                        Problem(
                            what=f"unknown class {unknown[0]!r}",
                            fix="add it to classes.txt or correct the spelling",
                            item=stem,
                            split=role,
                            **where,
                        )
                    )
                    continue
                rows.setdefault(stem, (tuple(sorted({lookup[n] for n in row[1].split()})), reader.line_num))
    listed = None
    list_path = root / f"{role}.txt"
    if list_path.is_file():
        listed = []
        for number, line in enumerate(list_path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            stem = line.strip()
            if stem.lower().endswith(IMAGE_SUFFIXES):
                stem = stem.rsplit(".", 1)[0]
            if not stem:
                continue
            if stem not in images:
                problems.append(
                    Problem(
                        str(list_path),
                        f"image {stem!r} not found in {image_dir}",
                        "add the image or delete the line",
                        line=number,
                        split=role,
                        item=stem,
                    )
                )
            elif role == "val" and stem not in masks:
                problems.append(
                    Problem(
                        str(list_path),
                        f"{stem!r} has no mask {mask_dir / (stem + '.png')}",
                        "evaluation needs a mask for every image: add it or delete the line",
                        line=number,
                        split=role,
                        item=stem,
                    )
                )
            else:
                listed.append(stem)
    if listed is None:
        listed = (
            [s for s, (labels, _) in rows.items() if labels]
            if role == "train"
            else sorted(s for s in masks if s in images)
        )
    items = [
        Item(name=s, image=image_dir / images[s], mask=masks.get(s), labels=rows[s][0] if s in rows else None)
        for s in listed
        if role == "val" or s in rows
    ]
    return problems, items

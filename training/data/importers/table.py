"""Multi-label tables (CSV, TSV): one row per image, any column names and label separator.

Columns: `image_col` (default: the first of image, filename, file_name, file, path, img, name, id,
else the first column) and `labels_col` (default: the first of labels, label, tags, classes, class,
categories, category, target; else the other column of a two-column table). A table whose other
columns all hold 0/1 (one-hot, one column per class) is read as such when no labels column is found.
Labels are split on `sep` (default: any run of spaces, commas, semicolons or |); a cell like
`["cat", "dog"]` is read as a list. Image paths are relative to `images_dir` (default: the table's
folder, then its images/ sub-folder); the suffix may be left out.
"""

from __future__ import annotations

import ast
import csv
import re
from pathlib import Path

from cosa_sdk.errors import CosaDataError
from cosa_sdk.training.data.importers.plan import (
    ImportEntry,
    ImportPlan,
    check_class_list,
    class_name,
    find_image,
    folders_text,
    is_background,
    normalise_labels,
)

IMAGE_COLUMNS = (
    "image",
    "images",
    "filename",
    "file_name",
    "file",
    "path",
    "image_path",
    "img",
    "name",
    "id",
    "image_id",
)
LABEL_COLUMNS = ("labels", "label", "tags", "tag", "classes", "class", "categories", "category", "target", "targets")
ONE_HOT_VALUES = {"0", "1", "", "0.0", "1.0", "true", "false", "yes", "no"}
POSITIVE = {"1", "1.0", "true", "yes"}


def _pick(header: list[str], wanted: str | None, defaults: tuple[str, ...], path: Path, option: str) -> int | None:
    lowered = [h.strip().lower() for h in header]
    if wanted is not None:
        if wanted in header:
            return header.index(wanted)
        if wanted.strip().lower() in lowered:
            return lowered.index(wanted.strip().lower())
        if wanted.isdigit() and int(wanted) < len(header):
            return int(wanted)
        raise CosaDataError(f"{path}:1: no column {wanted!r} ({option}); the columns are {', '.join(header)}.")
    for name in defaults:
        if name in lowered:
            return lowered.index(name)
    return None


def _split_labels(cell: str, sep: str | None) -> list[str]:
    text = cell.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = None
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value]
        text = text[1:-1]
    if sep is not None:
        sep = sep.encode().decode("unicode_escape") if "\\" in sep else sep
        return [part.strip().strip("'\"") for part in text.split(sep)]
    return [part.strip("'\"") for part in re.split(r"[\s,;|]+", text)]


def _dialect(path: Path, sample: str) -> str:
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    first = sample.splitlines()[0] if sample else ""
    counts = {d: first.count(d) for d in (",", "\t", ";")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def read_table(
    source: Path,
    *,
    image_col: str | None = None,
    labels_col: str | None = None,
    sep: str | None = None,
    images_dir: Path | None = None,
    **_options,
) -> ImportPlan:
    path = Path(source)
    if not path.is_file():
        raise CosaDataError(f"{path} does not exist.")
    text = path.read_text(encoding="utf-8-sig")
    rows = list(csv.reader(text.splitlines(), delimiter=_dialect(path, text)))
    if not rows:
        raise CosaDataError(f"{path} is empty; expected a header row and one row per image.")
    header = [h.strip() for h in rows[0]]
    img_i = _pick(header, image_col, IMAGE_COLUMNS, path, "--image-col")
    if img_i is None:
        img_i = 0
    lab_i = _pick(header, labels_col, LABEL_COLUMNS, path, "--labels-col")
    one_hot: list[int] = []
    if lab_i is None:
        others = [i for i in range(len(header)) if i != img_i]
        body = rows[1:]
        if len(others) > 1 and all(
            (row[i].strip().lower() if i < len(row) else "") in ONE_HOT_VALUES for row in body for i in others
        ):
            one_hot = others
        elif len(others) == 1:
            lab_i = others[0]
        else:
            raise CosaDataError(
                f"{path}:1: no labels column found among {', '.join(header)}; name it with --labels-col "
                "(and the image column with --image-col)."
            )
    folders = [Path(images_dir)] if images_dir else [path.parent, path.parent / "images"]
    raw: dict[str, str] = {}
    entries: list[ImportEntry] = []
    seen: dict[Path, int] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        where = f"{path}:{number}"
        need = max([img_i, lab_i or 0, *one_hot])
        if len(row) <= need:
            raise CosaDataError(
                f"{where}: expected {len(header)} fields like the header, got {len(row)}; quote label cells "
                "that contain the delimiter, or pass --sep."
            )
        image = row[img_i].strip()
        if not image:
            raise CosaDataError(f"{where}: the image field ({header[img_i]}) is empty.")
        found = find_image(image, folders)
        if found is None:
            raise CosaDataError(f"{where}: image {image!r} not found in {folders_text(folders)}; pass --images-dir.")
        if found in seen:
            raise CosaDataError(f"{where}: image {image!r} is listed twice (first at line {seen[found]}).")
        seen[found] = number
        if one_hot:
            names = [header[i] for i in one_hot if row[i].strip().lower() in POSITIVE]
        else:
            names = _split_labels(row[lab_i], sep)
        for name in names:
            if name.strip():
                raw.setdefault(name.strip(), class_name(name, where))
        entries.append(ImportEntry(source=found, name=found.name, labels=normalise_labels(names, where)))
    if not entries:
        raise CosaDataError(f"{path} has a header but no rows.")
    classes = sorted({c for c in raw.values() if not is_background(c)})
    if one_hot:
        classes = [c for c in (class_name(header[i], path.name) for i in one_hot) if not is_background(c)]
        raw = {header[i]: class_name(header[i], path.name) for i in one_hot}
    if not classes:
        column = "the one-hot columns" if one_hot else f"column {header[lab_i]!r}"
        raise CosaDataError(
            f"{path}: every labels cell of {column} is empty; choose the labels column with --labels-col."
        )
    check_class_list(classes, str(path), raw)
    notes = [f"one-hot columns read as classes: {', '.join(header[i] for i in one_hot)}"] if one_hot else []
    return ImportPlan(classes=classes, entries=entries, source=str(path), format="csv", notes=notes)

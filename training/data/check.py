"""Validate a dataset before training, and describe it before spending GPU hours (`cosa data check`).

`validate_dataset(spec)` resolves the train and val items (`read_index`) and checks every file once:
each image decodes completely (truncated JPEGs fail here, not in a DataLoader worker), each mask is a
single-channel 8-bit index image with exactly the image's displayed size (after EXIF orientation) and
values 0..C or 255. Every problem lands in one `ValidationReport` (file, line where there is one, what
is wrong, the fix). What was verified is cached per dataset in `$COSA_CACHE_DIR/checks/` (default
`~/.cache/cosa-sdk/checks/`), keyed by each file's size and mtime, so a second run reads no pixels of
unchanged files.

`describe_dataset(report)` turns the verified items into statistics: images per class, mask
instances, label-set histogram, co-occurrence with warnings, rare classes, duplicates, sizes, and
val mask coverage. `check_command` is `cosa data check DIR|SPEC [--report FILE]`.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import sys
import tempfile
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from cosa_sdk.errors import CosaConfigError, CosaDataError
from cosa_sdk.training.data.common import BAD_IMAGE_ERRORS, IGNORE_INDEX, IMAGE_SUFFIXES, Item
from cosa_sdk.training.data.common import cache_dir as default_cache_dir
from cosa_sdk.training.data.spec import DataSpec, parse_data_spec

CACHE_VERSION = 1
EXIF_ORIENTATION = 0x0112
ROLES = ("train", "val")
# Statistics thresholds (documented in the report text).
RARE_IMAGES = 10  # a class on fewer training images than this is too rare to learn reliably
COOCCUR_SHARE = 0.9  # a pair is flagged when the rarer class appears with the other in >= 90 % of its images
COOCCUR_MIN = 5  # ... and they share at least this many images


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: where (file, line), what, and how to fix it.

    `split`/`item` name the affected item when the problem belongs to one (None for index problems,
    which `--skip-bad-images` cannot skip).
    """

    file: str | None
    what: str
    fix: str
    line: int | None = None
    split: str | None = None
    item: str | None = None

    def format(self) -> str:
        where = self.file or "dataset"
        if self.line is not None:
            where = f"{where}:{self.line}"
        return f"{where}: {self.what}\n    fix: {self.fix}"


@dataclass
class CheckedItem:
    """An item of a split with what validation learnt about it (sizes upright, content hash, mask stats)."""

    split: str
    item: Item
    line: int | None = None
    image: dict[str, Any] | None = None
    mask: dict[str, Any] | None = None
    ok: bool = True

    @property
    def labels(self) -> tuple[int, ...]:
        """0-based foreground classes: the item's labels, else those its mask holds."""
        if self.item.labels is not None:
            return tuple(sorted(set(self.item.labels)))
        if self.mask and self.mask.get("values") is not None:
            return tuple(int(v) - 1 for v in self.mask["values"] if 0 < int(v) < IGNORE_INDEX)
        return ()


@dataclass
class ValidationReport:
    """Everything `validate_dataset` found: problems (empty = valid), the checked items and counts."""

    spec: str
    classes: list[str]
    problems: list[Problem] = field(default_factory=list)
    items: list[CheckedItem] = field(default_factory=list)
    splits: dict[str, str] = field(default_factory=dict)  # role -> split read (e.g. train -> train_aug)
    files_read: int = 0  # files whose bytes were read this time
    files_cached: int = 0  # files answered from the cache (size and mtime unchanged)
    skip_bad: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when training can start: no problems, or only skippable item problems under skip_bad."""
        if not self.skip_bad:
            return not self.problems
        return not self.blocking

    @property
    def blocking(self) -> list[Problem]:
        """Problems `--skip-bad-images` cannot work around (index problems, or a split left empty)."""
        blocking = [p for p in self.problems if p.item is None]
        for role in ROLES:
            role_items = [c for c in self.items if c.split == role]
            if role == "train" and role_items and not any(c.ok for c in role_items):
                blocking.append(Problem(None, "every training image is bad", "fix the files listed above"))
        return blocking

    def bad_items(self, role: str) -> set[str]:
        """Names of the items of a role ("train"/"val") with a problem."""
        return {c.item.name for c in self.items if c.split == role and not c.ok}

    def counts(self) -> dict[str, int]:
        return {
            **{f"{role}_items": sum(1 for c in self.items if c.split == role) for role in ROLES},
            "problems": len(self.problems),
            "bad_items": sum(1 for c in self.items if not c.ok),
            "files_read": self.files_read,
            "files_cached": self.files_cached,
        }

    def format(self, *, limit: int | None = None) -> str:
        """The text report: a headline, then every problem with its fix (all of them unless `limit`)."""
        c = self.counts()
        head = (
            f"dataset {self.spec}: {c['train_items']} train and {c['val_items']} val images checked "
            f"({self.files_read} files read, {self.files_cached} unchanged since the last check)"
        )
        if not self.problems:
            return head + "\nno problems found"
        lines = [head, f"{len(self.problems)} problem(s), {c['bad_items']} bad item(s):"]
        shown = self.problems if limit is None else self.problems[:limit]
        lines += [p.format() for p in shown]
        if len(shown) < len(self.problems):
            lines.append(f"... and {len(self.problems) - len(shown)} more")
        if self.skip_bad and self.ok:
            lines.append(
                f"--skip-bad-images: the {c['bad_items']} bad item(s) above are left out "
                f"(train: {len(self.bad_items('train'))}, val: {len(self.bad_items('val'))})"
            )
        elif not self.blocking:
            lines.append(
                "fix the files, or train anyway without them: cosa train ... --skip-bad-images "
                "(bad images and their masks are left out and listed)"
            )
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------- file checks
def _upright_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed: EXIF orientations 5-8 swap the axes."""
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except BAD_IMAGE_ERRORS:
        orientation = 1
    w, h = img.size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def check_image_file(path: Path) -> dict[str, Any]:
    """Decode one image completely; returns {"size": [w, h] upright, "sha1"} or {"error", "fix"}."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return {"error": f"cannot read the image ({exc.strerror or exc})", "fix": "check the file's permissions"}
    digest = hashlib.sha1(data).hexdigest()
    if not data:
        return {"sha1": digest, "error": "the image file is empty (0 bytes)", "fix": "re-export or remove it"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                size = _upright_size(img)
                img.load()
                mode = img.mode
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return {
            "sha1": digest,
            "error": f"the image is larger than PIL's safety limit ({exc})",
            "fix": "downscale it (training crops are at most a few hundred pixels)",
        }
    except (*BAD_IMAGE_ERRORS, EOFError) as exc:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, UnidentifiedImageError):
            text = "PIL cannot identify the format"
        if "truncated" in text.lower() or isinstance(exc, EOFError):
            what, fix = f"the image is truncated ({text})", "re-download or re-export it, or remove it"
        else:
            what, fix = f"the file is not a readable image ({text})", "re-save it as JPEG or PNG, or remove it"
        return {"sha1": digest, "error": what, "fix": fix}
    if size[0] <= 0 or size[1] <= 0:
        return {"sha1": digest, "error": f"the image has no pixels ({size[0]}x{size[1]})", "fix": "remove it"}
    return {"size": list(size), "sha1": digest, "mode": mode}


def check_mask_file(path: Path) -> dict[str, Any]:
    """Read one mask: mode, size, values present with pixel counts, instances per value (4-connected).

    Returns {"mode", "size", "values", "pixels", "instances"} or {"error", "fix"}; range and size
    checks against the classes and the image happen in `validate_dataset` (so the cache stays valid).
    """
    try:
        with Image.open(path) as img:
            img.load()
            mode, size = img.mode, list(img.size)
            mask = np.asarray(img)
    except OSError as exc:
        if not path.exists():
            return {"error": "the mask file is missing", "fix": "add it or remove the item from the name list"}
        return {"error": f"cannot read this mask ({exc})", "fix": "re-save it as an 8-bit PNG"}
    except (*BAD_IMAGE_ERRORS, EOFError) as exc:
        return {"error": f"cannot read this mask ({exc})", "fix": "re-save it as an 8-bit PNG"}
    info: dict[str, Any] = {"mode": mode, "size": size}
    if mode not in ("L", "P") or mask.ndim != 2:
        return info
    values, pixels = np.unique(mask, return_counts=True)
    info["values"] = [int(v) for v in values]
    info["pixels"] = [int(n) for n in pixels]
    info["instances"] = _instances(mask, values)
    return info


def _instances(mask: np.ndarray, values: np.ndarray) -> list[int]:
    """Connected regions per mask value (0 for background and ignore)."""
    try:
        from scipy import ndimage
    except ImportError:  # pragma: no cover - scipy comes with the training extra
        return [1 if 0 < v < IGNORE_INDEX else 0 for v in values]
    counts = []
    for value in values:
        if value == 0 or value == IGNORE_INDEX:
            counts.append(0)
            continue
        counts.append(int(ndimage.label(mask == value)[1]))
    return counts


class FileCache:
    """path -> (size, mtime_ns, result) as JSON; an entry is used only while size and mtime match."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, list[Any]] = {}
        self.dirty = False
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if data.get("version") == CACHE_VERSION:
                    self.entries = data.get("files", {})
            except (OSError, ValueError, AttributeError):
                self.entries = {}

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns

    def lookup(self, kind: str, path: Path) -> tuple[dict[str, Any] | None, tuple[int, int] | None]:
        stamp = self._stamp(path)
        if stamp is None:
            return None, None
        entry = self.entries.get(f"{kind}:{path}")
        if entry is not None and entry[0] == stamp[0] and entry[1] == stamp[1]:
            return entry[2], stamp
        return None, stamp

    def store(self, kind: str, path: Path, stamp: tuple[int, int], result: dict[str, Any]) -> None:
        self.entries[f"{kind}:{path}"] = [stamp[0], stamp[1], result]
        self.dirty = True

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".check-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"version": CACHE_VERSION, "files": self.entries}, handle)
            os.replace(tmp, self.path)
        except OSError:  # a read-only cache folder only costs speed
            pass


def cache_file_for(spec: DataSpec, items: Iterable[CheckedItem], root: Path | None) -> Path:
    key = str(Path(root).resolve()) if root is not None else str(spec)
    if root is None:
        first = next(iter(items), None)
        key = str(first.item.image.parent.resolve()) if first else key
    return Path(hashlib.sha1(key.encode()).hexdigest()[:16] + ".json")


# ------------------------------------------------------------------------------------------- the index
def _dataset_root(spec: DataSpec) -> Path | None:
    if spec.kind == "synthetic":
        from cosa_sdk.training.data.synthetic import ensure_synthetic

        return Path(ensure_synthetic(spec.params))
    return spec.path


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


# ---------------------------------------------------------------------------------------------- validate
def validate_dataset(
    spec: str | DataSpec,
    *,
    cache_dir: Path | str | None = None,
    skip_bad: bool = False,
    use_cache: bool = True,
    workers: int | None = None,
    roles: Sequence[str] = ROLES,
    require_val: bool = False,
) -> ValidationReport:
    """Check every train and val image and mask of `spec`; never raises for data problems.

    `cache_dir` holds the per-dataset cache (default `$COSA_CACHE_DIR/checks`); `use_cache=False`
    re-reads everything. With `skip_bad`, item problems do not make the report fail (`report.ok`),
    and `bad_items(role)` names what to leave out. A dataset without a val split (no masks) is fine
    unless `require_val`.
    """
    import time

    from cosa_sdk.training.data.build import read_index, resolve_split

    start = time.perf_counter()
    spec = parse_data_spec(spec) if isinstance(spec, str) else spec
    report = ValidationReport(spec=str(spec), classes=[], skip_bad=skip_bad)
    root = _dataset_root(spec)
    lines = _custom_lines(root) if spec.kind in ("custom", "synthetic") and root else {}
    for role in roles:
        try:
            report.splits[role] = resolve_split(spec, role)
            index = read_index(spec, role)
            report.classes = report.classes or list(index.classes)
            items = index.items
        except CosaDataError as exc:
            if role == "val" and not require_val and "no evaluation images" in str(exc):
                continue
            if spec.kind == "custom" and root is not None and (root / "classes.txt").is_file():
                try:
                    from cosa_sdk.training.data.custom import read_classes

                    report.classes = report.classes or read_classes(root / "classes.txt")
                except CosaDataError as inner:
                    report.problems.append(_split_error(inner))
                    break
                found, items = _lenient_custom(root, role, report.classes)
                known = {(p.file, p.line, p.what) for p in report.problems}
                report.problems += [p for p in found if (p.file, p.line, p.what) not in known]
                if not found:
                    report.problems.append(_split_error(exc))
            else:
                report.problems.append(_split_error(exc))
                continue
        report.items += [CheckedItem(role, item, line=lines.get(item.name)) for item in items]

    base = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "checks"
    cache = FileCache(base / cache_file_for(spec, report.items, root) if use_cache else None)
    _check_files(report, cache, workers=workers)
    cache.save()
    _judge(report)
    report.seconds = time.perf_counter() - start
    return report


def _check_files(report: ValidationReport, cache: FileCache, *, workers: int | None) -> None:
    """Fill each CheckedItem's image and mask info, from the cache or by reading the file."""
    jobs: dict[tuple[str, Path], None] = {}
    for checked in report.items:
        jobs[("image", checked.item.image)] = None
        if checked.item.mask is not None:
            jobs[("mask", checked.item.mask)] = None
    results: dict[tuple[str, Path], dict[str, Any]] = {}
    todo: list[tuple[str, Path, tuple[int, int] | None]] = []
    for kind, path in jobs:
        hit, stamp = cache.lookup(kind, path)
        if hit is not None:
            results[(kind, path)] = hit
            report.files_cached += 1
        elif stamp is None:
            what = "the image file is missing" if kind == "image" else "the mask file is missing"
            results[(kind, path)] = {"error": what, "fix": "add it, or remove the item from labels.csv / the name list"}
        else:
            todo.append((kind, path, stamp))
    check: dict[str, Callable[[Path], dict[str, Any]]] = {"image": check_image_file, "mask": check_mask_file}
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = pool.map(lambda job: check[job[0]](job[1]), todo)
        for (kind, path, stamp), result in zip(todo, done):
            results[(kind, path)] = result
            report.files_read += 1
            cache.store(kind, path, stamp, result)
    for checked in report.items:
        checked.image = results[("image", checked.item.image)]
        if checked.item.mask is not None:
            checked.mask = results[("mask", checked.item.mask)]


def _judge(report: ValidationReport) -> None:
    """Turn file results into problems: decoding errors, mask mode, size and value range."""
    num_classes = len(report.classes)
    seen: set[tuple[str, str]] = set()
    for checked in report.items:
        item, problems = checked.item, []
        image, mask = checked.image or {}, checked.mask
        row = f" (labels.csv line {checked.line})" if checked.line else ""
        if "error" in image:
            problems.append(Problem(str(item.image), image["error"] + row, image["fix"]))
        if mask is not None:
            problems += _mask_problems(item, mask, image.get("size"), num_classes)
        if checked.split == "train" and item.labels is None and item.mask is None:
            problems.append(
                Problem(
                    str(item.image),
                    "no image labels and no mask to derive them from",
                    "add a labels.csv row (custom) or the mask",
                )
            )
        for p in problems:
            checked.ok = False
            key = (p.file or "", p.what)
            if key in seen:  # an image in both splits is reported once
                continue
            seen.add(key)
            report.problems.append(Problem(p.file, p.what, p.fix, line=p.line, split=checked.split, item=item.name))


def _mask_problems(item: Item, mask: dict[str, Any], size: list[int] | None, num_classes: int) -> list[Problem]:
    file = str(item.mask)
    if "error" in mask:
        return [Problem(file, mask["error"], mask["fix"])]
    problems = []
    if "values" not in mask:
        colour = mask["mode"] in ("RGB", "RGBA")
        problems.append(
            Problem(
                file,
                f"mask has mode {mask['mode']}; masks must be single-channel 8-bit index images",
                "convert the colour mask to class indices (0 = background, i = i-th class, 255 = ignore) and "
                "save it as mode L or P PNG"
                if colour
                else "save it as an 8-bit (mode L or P) PNG of class indices",
            )
        )
    if size is not None and list(mask["size"]) != list(size):
        problems.append(
            Problem(
                file,
                f"mask is {mask['size'][0]}x{mask['size'][1]} but its image is {size[0]}x{size[1]}"
                " (as displayed, after EXIF orientation)",
                "re-export the mask at the image's size (nearest-neighbour resize keeps class values)",
            )
        )
    bad = [v for v in mask.get("values", []) if v > num_classes and v != IGNORE_INDEX]
    if bad:
        problems.append(
            Problem(
                file,
                f"mask holds value(s) {', '.join(map(str, bad[:5]))} but the dataset has {num_classes} classes",
                f"valid values are 0 (background), 1..{num_classes} (classes.txt order) and 255 (ignore)",
            )
        )
    return problems


# ------------------------------------------------------------------------------------------- statistics
@dataclass
class DatasetStats:
    classes: list[str]
    split_sizes: dict[str, int]
    images_per_class: dict[str, list[int]]  # role -> per class
    instances_per_class: dict[str, list[int]]  # role -> per class, counted in masks (None where no mask)
    label_sets: list[tuple[tuple[str, ...], int]]  # training label sets, most frequent first
    cooccurrence: list[list[int]]  # training images holding both classes (diagonal: images per class)
    cooccurring_pairs: list[tuple[str, str, int, int, float]]  # a, b, together, images of the rarer, share
    rare_classes: list[tuple[str, int]]
    duplicates: list[list[str]]  # groups of image paths with identical bytes
    cross_split_duplicates: int
    sizes: list[tuple[int, int]]  # (w, h) of every distinct good image
    val_coverage: dict[str, float]  # class (and background/ignore) -> share of val mask pixels
    val_with_mask: int
    warnings: list[str]


def describe_dataset(report: ValidationReport) -> DatasetStats:
    """Statistics of the good items of a validated dataset (bad ones are left out)."""
    classes, n = report.classes, len(report.classes)
    good = [c for c in report.items if c.ok]
    split_sizes = {role: sum(1 for c in good if c.split == role) for role in ROLES}
    images = {role: [0] * n for role in ROLES}
    instances = {role: [0] * n for role in ROLES}
    for c in good:
        for k in c.labels:
            if 0 <= k < n:
                images[c.split][k] += 1
        if c.mask and "values" in c.mask:
            for v, inst in zip(c.mask["values"], c.mask.get("instances", [])):
                if 0 < v <= n:
                    instances[c.split][v - 1] += inst
    train = [c for c in good if c.split == "train"]
    sets = Counter(tuple(classes[k] for k in c.labels if 0 <= k < n) for c in train)
    co = np.zeros((n, n), dtype=np.int64)
    for c in train:
        ks = [k for k in c.labels if 0 <= k < n]
        for a in ks:
            for b in ks:
                co[a, b] += 1
    pairs = []
    for a in range(n):
        for b in range(a + 1, n):
            together = int(co[a, b])
            rarer = int(min(co[a, a], co[b, b]))
            if together >= COOCCUR_MIN and rarer and together / rarer >= COOCCUR_SHARE:
                pairs.append((classes[a], classes[b], together, rarer, together / rarer))
    pairs.sort(key=lambda p: (-p[4], -p[2]))
    rare = [(classes[k], images["train"][k]) for k in range(n) if images["train"][k] < RARE_IMAGES] if train else []
    by_hash: dict[str, list[CheckedItem]] = defaultdict(list)
    seen_paths: set[str] = set()
    for c in good:
        if str(c.item.image) in seen_paths:
            continue
        seen_paths.add(str(c.item.image))
        if c.image and c.image.get("sha1"):
            by_hash[c.image["sha1"]].append(c)
    groups = [g for g in by_hash.values() if len(g) > 1]
    cross = sum(1 for g in groups if len({c.split for c in g}) > 1)
    sizes = [tuple(by_hash[h][0].image["size"]) for h in by_hash if by_hash[h][0].image.get("size")]
    pixels = Counter()
    val_with_mask = 0
    for c in good:
        if c.split == "val" and c.mask and "values" in c.mask:
            val_with_mask += 1
            for v, p in zip(c.mask["values"], c.mask["pixels"]):
                pixels[v] += p
    total = sum(pixels.values()) or 1
    coverage = {"background": pixels[0] / total}
    coverage.update({classes[k]: pixels[k + 1] / total for k in range(n)})
    coverage["ignore (255)"] = pixels[IGNORE_INDEX] / total
    stats = DatasetStats(
        classes=classes,
        split_sizes=split_sizes,
        images_per_class=images,
        instances_per_class=instances,
        label_sets=sets.most_common(),
        cooccurrence=co.tolist(),
        cooccurring_pairs=pairs,
        rare_classes=rare,
        duplicates=[[str(c.item.image) for c in g] for g in groups],
        cross_split_duplicates=cross,
        sizes=sizes,
        val_coverage=coverage,
        val_with_mask=val_with_mask,
        warnings=[],
    )
    stats.warnings = _warnings(stats)
    return stats


def _warnings(s: DatasetStats) -> list[str]:
    out = []
    for a, b, together, rarer, share in s.cooccurring_pairs:
        out.append(
            f"{a} and {b} nearly always appear together ({together} of the {rarer} training images of the rarer "
            f"one, {share:.0%}): from image-level labels alone the network cannot tell which pixels are which, "
            "and the CAMs of one spread onto the other (the classic weak-supervision failure). "
            "label_set_balance=0.5 (cosa train ... label_set_balance=0.5) draws images with weight "
            "count(label set)^-0.5, so the images that show them apart are seen more often; it cannot help "
            + (
                "when they never appear apart: add such images."
                if share >= 1.0
                else "much when such images are few: add more."
            )
        )
    for name, count in s.rare_classes:
        out.append(
            f"class {name} is on only {count} training image(s) (fewer than {RARE_IMAGES}): too rare to learn; "
            "add images of it or merge/drop the class"
        )
    if s.duplicates:
        extra = (
            f", {s.cross_split_duplicates} of them shared between train and val (leaks into the evaluation)"
            if s.cross_split_duplicates
            else ""
        )
        out.append(f"{len(s.duplicates)} group(s) of byte-identical images{extra}: keep one of each")
    if s.split_sizes.get("val", 0) == 0:
        out.append("no val split (no masks): training runs, but no mIoU can be measured")
    small = [wh for wh in s.sizes if min(wh) < 224]
    if small:
        out.append(f"{len(small)} image(s) have a side under 224 px: they are upscaled for training crops")
    return out


def _bar(value: float, top: float, width: int = 24) -> str:
    return "#" * (round(width * value / top) if top else 0)


def format_stats(s: DatasetStats, *, top_sets: int = 10) -> str:
    """The terminal summary of `describe_dataset`."""
    lines = [f"classes: {len(s.classes)}; good images: train {s.split_sizes['train']}, val {s.split_sizes['val']}"]
    tr, va = s.images_per_class["train"], s.images_per_class["val"]
    inst = s.instances_per_class
    width = max([len(c) for c in s.classes] + [5])
    top = max([*tr, 1])
    lines.append(f"\n{'class':<{width}}  train imgs  val imgs  instances(masks)")
    for k, name in enumerate(s.classes):
        count_inst = inst["train"][k] + inst["val"][k]
        lines.append(f"{name:<{width}}  {tr[k]:>10}  {va[k]:>8}  {count_inst:>16}  {_bar(tr[k], top)}")
    lines.append(f"\nlabel sets (training, {len(s.label_sets)} distinct):")
    for names, count in s.label_sets[:top_sets]:
        lines.append(f"  {count:>6}  {' + '.join(names) or '(none)'}")
    if len(s.label_sets) > top_sets:
        lines.append(f"  ... {len(s.label_sets) - top_sets} more")
    if len(s.classes) <= 20:
        lines.append("\nco-occurrence (training images with both classes):")
        short = [c[:6] for c in s.classes]
        lines.append(" " * (width + 2) + " ".join(f"{c:>6}" for c in short))
        for name, row in zip(s.classes, s.cooccurrence):
            lines.append(f"{name:<{width}}  " + " ".join(f"{v:>6}" for v in row))
    if s.sizes:
        ws, hs = [w for w, _ in s.sizes], [h for _, h in s.sizes]
        lines.append(
            f"\nimage sizes: width {min(ws)}..{max(ws)} (median {int(np.median(ws))}), "
            f"height {min(hs)}..{max(hs)} (median {int(np.median(hs))})"
        )
    if s.val_with_mask:
        cov = ", ".join(f"{k} {v:.1%}" for k, v in s.val_coverage.items() if v > 0)
        lines.append(f"val mask coverage ({s.val_with_mask} masks): {cov}")
    for group in s.duplicates[:5]:
        lines.append("duplicate: " + " = ".join(group))
    if s.warnings:
        lines.append("")
        lines += [f"warning: {w}" for w in s.warnings]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- training hook
def validate_for_training(
    spec: str, run_dir: Path | str, *, skip_bad: bool = False, require_val: bool = False
) -> ValidationReport:
    """`cosa train`'s gate: validate; on failure write only RUN_DIR/validation_report.txt and raise.

    Raises CosaDataError (exit 2) naming the report; with `skip_bad` the bad items are listed and the
    caller leaves them out (`exclude_bad_items`).
    """
    report = validate_dataset(spec, skip_bad=skip_bad, require_val=require_val)
    path = Path(run_dir) / "validation_report.txt"
    main = int(os.environ.get("RANK", "0") or 0) == 0  # under torchrun only rank 0 writes and prints
    if report.problems:
        text = report.format()
        if main:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text + "\n", encoding="utf-8")
            print(text, file=sys.stderr, flush=True)
    elif main and path.is_file():
        path.unlink()  # a report of problems since fixed
    if not report.ok:
        raise CosaDataError(
            f"the dataset has problems that --skip-bad-images cannot skip (listed above and in {path})"
            if report.blocking
            else f"the dataset has {len(report.problems)} problem(s) (listed above and in {path}); fix them, "
            "or pass --skip-bad-images to train without the bad images"
        )
    return report


def exclude_bad_items(dataset: Any, names: set[str]) -> int:
    """Drop items named in `names` from a dataset built by `build_dataset` (in place); returns how many."""
    if dataset is None or not names:
        return 0
    before = len(dataset.items)
    dataset.items[:] = [item for item in dataset.items if item.name not in names]
    return before - len(dataset.items)


# --------------------------------------------------------------------------------------------- command
def spec_from_arg(text: str) -> str:
    """`cosa data check` takes a custom folder as is, or any dataset spec."""
    if Path(text).expanduser().is_dir() and ":" not in text.split("/")[0]:
        return f"custom:{text}"
    return text


def check_command(args: argparse.Namespace) -> int:
    """`cosa data check DIR|SPEC [--report FILE] [--no-cache]`: 0 when valid, 2 on problems."""
    spec = spec_from_arg(args.data)
    try:
        parse_data_spec(spec)
    except CosaConfigError:
        raise
    report = validate_dataset(spec, use_cache=not getattr(args, "no_cache", False))
    print(report.format(limit=getattr(args, "max_problems", None)))
    stats = describe_dataset(report) if report.items else None
    if stats is not None:
        print()
        print(format_stats(stats))
    if getattr(args, "report", None):
        from cosa_sdk.training.data.check_report import write_check_report

        path = write_check_report(Path(args.report), report, stats)
        print(f"\nwrote {path}")
    return 0 if not report.problems else 2

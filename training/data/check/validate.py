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

The work is split over `check_problems.py` (Problem, CheckedItem, ValidationReport), `check_files.py`
(reading one image or mask), `check_cache.py` (the size/mtime cache), `check_index.py` (index problems)
and `check_stats.py` (statistics); this module runs the validation, the training hook and the command,
and re-exports the names callers import from it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cosa_sdk.errors import CosaConfigError, CosaDataError
from cosa_sdk.training.data.check.cache import CACHE_VERSION, FileCache, cache_file_for
from cosa_sdk.training.data.check.files import EXIF_ORIENTATION, check_image_file, check_mask_file
from cosa_sdk.training.data.check.index import _custom_lines, _dataset_root, _lenient_custom, _split_error
from cosa_sdk.training.data.check.problems import ROLES, CheckedItem, Problem, ValidationReport
from cosa_sdk.training.data.check.stats import (
    COOCCUR_MIN,
    COOCCUR_SHARE,
    RARE_IMAGES,
    DatasetStats,
    describe_dataset,
    format_stats,
)
from cosa_sdk.training.data.common import IGNORE_INDEX, Item
from cosa_sdk.training.data.common import cache_dir as default_cache_dir
from cosa_sdk.training.data.readers import READERS
from cosa_sdk.training.data.spec import DataSpec, parse_data_spec

__all__ = [
    "CACHE_VERSION",
    "COOCCUR_MIN",
    "COOCCUR_SHARE",
    "EXIF_ORIENTATION",
    "RARE_IMAGES",
    "ROLES",
    "CheckedItem",
    "DatasetStats",
    "FileCache",
    "Problem",
    "ValidationReport",
    "cache_file_for",
    "check_command",
    "check_image_file",
    "check_mask_file",
    "describe_dataset",
    "exclude_bad_items",
    "format_stats",
    "spec_from_arg",
    "validate_dataset",
    "validate_for_training",
]


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
    reader = READERS[spec.kind]
    lines = _custom_lines(root) if reader.custom_layout and root else {}
    for role in roles:
        try:
            report.splits[role] = resolve_split(spec, role)
            index = read_index(spec, role)
            report.classes = report.classes or list(index.classes)
            items = index.items
        except CosaDataError as exc:
            if role == "val" and not require_val and "no evaluation images" in str(exc):
                continue
            # the user's own folder in the custom layout: list every bad row, not only the first
            lenient = reader.custom_layout and reader.takes_path
            if lenient and root is not None and (root / "classes.txt").is_file():
                try:
                    from cosa_sdk.training.data.readers.custom import read_classes

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
        from cosa_sdk.training.data.check.report import write_check_report

        path = write_check_report(Path(args.report), report, stats)
        print(f"\nwrote {path}")
    return 0 if not report.problems else 2

"""`cosa segment IMAGE_OR_DIR... --model BUNDLE --out DIR`: palette masks (and overlays) for files and folders."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from cosa_sdk.constants import IMAGE_SUFFIXES
from cosa_sdk.errors import CosaError, CosaInputError
from cosa_sdk.result import SegmentationResult


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders as their image files (by suffix, sorted, not recursive); duplicates dropped."""
    found: list[Path] = []
    seen: set[Path] = set()
    for entry in inputs:
        path = Path(entry).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files = [path]
        else:
            raise CosaInputError(f"{str(path)!r} does not exist; pass image files or folders of images")
        for file in files:
            if file.resolve() not in seen:
                seen.add(file.resolve())
                found.append(file)
    return found


def plan_outputs(images: Sequence[Path], out_dir: Path, *, overlay: bool) -> list[tuple[Path, Path | None]]:
    """(mask path, overlay path) per image; refuses name clashes and anything that would overwrite an input."""
    stems = Counter(p.stem for p in images)
    clashes = sorted(stem for stem, count in stems.items() if count > 1)
    if clashes:
        raise CosaInputError(
            f"several inputs share the name {clashes[0]!r} (e.g. {[str(p) for p in images if p.stem == clashes[0]]}), "
            "so their masks would overwrite each other; segment them into separate --out folders"
        )
    inputs = {p.resolve() for p in images}
    plan = []
    for image in images:
        mask = out_dir / f"{image.stem}.png"
        extra = out_dir / f"{image.stem}_overlay.jpg" if overlay else None
        for target in (mask, extra):
            if target is not None and target.resolve() in inputs:
                raise CosaInputError(f"writing {target} would overwrite an input image; choose another --out folder")
        plan.append((mask, extra))
    return plan


def _progress(total: int) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return nullcontext(None)
    return tqdm(total=total, unit="img", disable=None if total > 1 else True, file=sys.stderr)


def _segment_chunk(
    seg: Any, chunk: Sequence[Path], tta: bool, drop_absent: bool, edge_aware: bool
) -> list[SegmentationResult | CosaError]:
    """One batched call; if an image in it is bad, redo the chunk one by one to keep the good ones."""
    options = {"tta": tta, "drop_absent": drop_absent, "edge_aware": edge_aware}
    try:
        return list(seg.segment(list(chunk), **options))
    except CosaInputError:
        outcomes: list[SegmentationResult | CosaError] = []
        for path in chunk:
            try:
                outcomes.append(seg.segment(path, **options))
            except CosaInputError as err:
                outcomes.append(err)
        return outcomes


def _summary(found: Counter, done: int, failed: int, seconds: float, seg: Any) -> str:
    rate = done / seconds if seconds > 0 else 0.0
    classes = ", ".join(f"{name} ({count})" for name, count in found.most_common()) or "none"
    failures = f", {failed} failed" if failed else ""
    noun = "image" if done == 1 else "images"
    return (
        f"segmented {done} {noun}{failures} in {seconds:.1f} s ({rate:.2f} images/s, {seg.backend} on "
        f"{seg.device}); classes found (images): {classes}"
    )


def segment_command(args: argparse.Namespace) -> int:
    """Handler of `cosa segment`; returns 0, or 1 when some images could not be read."""
    from cosa_sdk.segmenter import load

    if args.batch_size < 1:
        raise CosaInputError(f"--batch-size must be at least 1, got {args.batch_size}")
    images = collect_images(args.inputs)
    if not images:
        raise CosaInputError(
            f"no images found in {args.inputs}; folders are searched for {', '.join(sorted(IMAGE_SUFFIXES))}"
        )
    out_dir = Path(args.out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise CosaInputError(f"--out {out_dir} is a file; pass a folder for the masks")
    plan = plan_outputs(images, out_dir, overlay=args.overlay)
    seg = load(args.model, backend=args.backend, batch_size=args.batch_size)
    # --drop-absent / --keep-absent; None (neither given) is the bundle's default. Checked before any output.
    drop_absent = seg.drop_absent_setting(getattr(args, "drop_absent", None))
    edge_aware = seg.edge_aware_setting(getattr(args, "edge_aware", None))  # --edge-aware / --bilinear, likewise
    out_dir.mkdir(parents=True, exist_ok=True)

    found: Counter = Counter()
    records: list[dict[str, Any]] = []
    failed = 0
    start = time.perf_counter()
    with _progress(len(images)) as bar:
        for first in range(0, len(images), args.batch_size):
            chunk = images[first : first + args.batch_size]
            outcomes = _segment_chunk(seg, chunk, args.tta, drop_absent, edge_aware)
            for path, (mask_path, overlay_path), outcome in zip(chunk, plan[first : first + args.batch_size], outcomes):
                if isinstance(outcome, CosaError):
                    failed += 1
                    print(f"skipped {path}: {outcome}", file=sys.stderr)
                    continue
                outcome.save(mask_path, kind="mask")
                record = {"input": str(path), "mask": str(mask_path), **outcome.to_dict()}
                if overlay_path is not None:
                    outcome.save(overlay_path, kind="overlay")
                    record["overlay"] = str(overlay_path)
                records.append(record)
                found.update(name for name in outcome.present if name != seg.classes[0])
            if bar is not None:
                bar.update(len(chunk))
    seconds = time.perf_counter() - start
    print(_summary(found, len(records), failed, seconds, seg))
    if args.json_out:
        summary = {
            "model": str(args.model),
            **seg.info(),
            "drop_absent": drop_absent,
            "edge_aware": edge_aware,
            "seconds": seconds,
        }
        summary["images"] = records
        Path(args.json_out).expanduser().write_text(json.dumps(summary, indent=2))
    return 1 if failed else 0

"""`write_custom`: an ImportPlan into a custom-format folder, atomically (temp folder, then rename)."""

from __future__ import annotations

import csv
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cosa_sdk.errors import CosaDataError
from cosa_sdk.training.data.importers.plan import ImportPlan

CUSTOM_MARKERS = ("classes.txt", "labels.csv", "images")


@dataclass
class ImportSummary:
    out: Path
    classes: list[str]
    images: int
    train: int
    val: int
    held_out: int
    masks: int
    unlabelled: int
    per_class: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [
            f"wrote {self.out}: {self.images} images, {len(self.classes)} classes, {self.masks} masks",
            f"  split: {self.train} train, {self.val} val (with masks)"
            + (f", {self.held_out} held out without masks (not trained on)" if self.held_out else ""),
        ]
        if self.unlabelled:
            lines.append(f"  {self.unlabelled} images have no labels: kept in labels.csv, not trained on")
        shown = ", ".join(f"{name} {count}" for name, count in list(self.per_class.items())[:12])
        more = " ..." if len(self.per_class) > 12 else ""
        lines.append(f"  images per class: {shown}{more}")
        lines.extend(f"  note: {note}" for note in self.notes)
        lines.append(f"next: cosa data check {self.out}")
        return "\n".join(lines)


def check_out(out: Path, *, force: bool, sources: tuple[Path, ...] = ()) -> None:
    """Fail before any work when `out` exists (without --force) or would swallow the source."""
    out = Path(out).absolute()
    for src in sources:
        src = Path(src).absolute()
        if src == out or out in src.parents or src in out.parents:
            raise CosaDataError(f"--out {out} overlaps the source {src}; write the import somewhere else.")
    if out.exists() and not out.is_dir():
        raise CosaDataError(f"--out {out} is a file; choose a folder path.")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise CosaDataError(
                f"{out} already exists and is not empty; pass --force to replace it, or choose another --out."
            )
        if not any((out / marker).exists() for marker in CUSTOM_MARKERS):
            raise CosaDataError(
                f"{out} is not a custom-format folder (no classes.txt, labels.csv or images/); "
                "refusing to replace it even with --force: choose another --out."
            )


def _safe_name(name: str) -> str:
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, "jpg"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"
    return f"{stem}.{suffix.lower()}"


def unique_names(names: list[str]) -> list[str]:
    """Output file names with unique stems (case-insensitively), in the given order."""
    taken: set[str] = set()
    out = []
    for name in names:
        name = _safe_name(name)
        stem, _, suffix = name.rpartition(".")
        candidate, n = stem, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{stem}_{n}"
        taken.add(candidate.lower())
        out.append(f"{candidate}.{suffix}")
    return out


def _place(src: Path, dst: Path, link: bool) -> None:
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            try:
                os.symlink(src.resolve(), dst)
                return
            except OSError:
                pass
    shutil.copy2(src, dst)


def _split(plan: ImportPlan, stems: list[str], has_mask: list[bool], val_fraction: float | None, seed: int):
    """(train stems, val stems with masks, held-out stems without masks)."""
    entries = plan.entries
    hinted = any(e.split for e in entries)
    if hinted:
        val_idx = {i for i, e in enumerate(entries) if e.split == "val"}
    else:
        if val_fraction is None:
            val_fraction = 0.2 if any(has_mask) else 0.0
        if not 0.0 <= val_fraction < 1.0:
            raise CosaDataError(f"--val-fraction must be in [0, 1), got {val_fraction}.")
        # With masks, validation is drawn from the images that have one (only those can be scored).
        pool = [i for i in range(len(entries)) if has_mask[i]] if any(has_mask) else list(range(len(entries)))
        pool.sort(key=lambda i: stems[i])
        n_val = round(val_fraction * len(pool))
        if val_fraction > 0 and n_val == 0 and len(pool) >= 2:
            n_val = 1
        random.Random(seed).shuffle(pool)
        val_idx = set(pool[:n_val])
    train = [stems[i] for i in range(len(entries)) if i not in val_idx and entries[i].labels]
    val = [stems[i] for i in sorted(val_idx) if has_mask[i]]
    held = [stems[i] for i in sorted(val_idx) if not has_mask[i]]
    return train, val, held


def write_custom(
    plan: ImportPlan,
    out: Path,
    *,
    link: bool = False,
    val_fraction: float | None = None,
    seed: int = 0,
    force: bool = False,
) -> ImportSummary:
    """Write `plan` as a custom-format folder at `out` and return what was written.

    Images are copied (or hard-linked, falling back to a symlink, with `link=True`) into out/images
    under unique stems; masks (when the source has them) go to out/masks/<stem>.png. The split is the
    source's when it has one, else seeded: `val_fraction` of the images with masks (default 0.2) form
    val.txt; without masks nothing is held out by default (0), and an explicit fraction leaves those
    images out of train.txt. train.txt lists the labelled images not in validation.
    """
    out = Path(out).absolute()
    check_out(out, force=force)
    if not plan.entries:
        raise CosaDataError(f"{plan.source}: no images to import.")
    names = unique_names([e.name for e in plan.entries])
    stems = [n.rpartition(".")[0] for n in names]
    has_mask = [e.mask is not None for e in plan.entries]
    train, val, held = _split(plan, stems, has_mask, val_fraction, seed)
    if not train:
        raise CosaDataError(f"{plan.source}: no labelled image left to train on; lower --val-fraction or add labels.")
    index = {name: i + 1 for i, name in enumerate(plan.classes)}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.import-", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        if any(has_mask):
            (tmp / "masks").mkdir()
        (tmp / "classes.txt").write_text("".join(f"{c}\n" for c in plan.classes), encoding="utf-8")
        with (tmp / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["image", "labels"])
            for entry, name, stem in zip(plan.entries, names, stems):
                unknown = [c for c in entry.labels if c not in index]
                if unknown:
                    raise CosaDataError(f"{entry.source}: label {unknown[0]!r} is not among the classes.")
                _place(entry.source, tmp / "images" / name, link)
                writer.writerow([name, " ".join(entry.labels)])
                if entry.mask is not None:
                    _write_mask(entry, tmp / "masks" / f"{stem}.png")
        (tmp / "train.txt").write_text("".join(f"{s}\n" for s in train), encoding="utf-8")
        if val:
            (tmp / "val.txt").write_text("".join(f"{s}\n" for s in val), encoding="utf-8")
        os.chmod(tmp, 0o755)
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / "old")
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    per_class = {c: 0 for c in plan.classes}
    for entry in plan.entries:
        for c in entry.labels:
            per_class[c] += 1
    return ImportSummary(
        out=out,
        classes=list(plan.classes),
        images=len(plan.entries),
        train=len(train),
        val=len(val),
        held_out=len(held),
        masks=sum(has_mask),
        unlabelled=sum(1 for e in plan.entries if not e.labels),
        per_class=per_class,
        notes=list(plan.notes),
    )


def _write_mask(entry, path: Path) -> None:
    if callable(entry.mask):
        array = np.asarray(entry.mask(), dtype=np.uint8)
        Image.fromarray(array, mode="L").save(path)
    else:
        with Image.open(entry.mask) as img:
            if img.mode not in ("L", "P"):
                raise CosaDataError(f"{entry.mask}: masks must be 8-bit index PNGs (mode L or P), got {img.mode}.")
        shutil.copy2(entry.mask, path)

"""`cosa data import`: images with labels in a common format into the custom format.

Each format has a reader `read_<format>(source, **options) -> ImportPlan` (FORMATS); one writer,
`write_custom`, copies or links the images and writes classes.txt, labels.csv, masks/ (when the source
has masks) and a seeded train/val split, atomically. `detect_format` picks the reader when
`--format` is not given:

- a folder with `Annotations/*.xml` or `*.xml` VOC files: `voc-xml`
- a folder of class folders (optionally under train/ and val/): `imagefolder`
- a `.csv` / `.tsv` / `.txt` table: `csv`
- a JSON object with images, annotations and categories: `coco`
- a JSON list of tasks with data + annotations (or JSON-MIN records with choice): `label-studio`
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from cosa_sdk.errors import CosaDataError
from cosa_sdk.training.data.importers import coco, imagefolder, label_studio, table, voc_xml
from cosa_sdk.training.data.importers.plan import ImportEntry, ImportPlan
from cosa_sdk.training.data.importers.writer import ImportSummary, check_out, write_custom

FORMATS: dict[str, Callable[..., ImportPlan]] = {
    "imagefolder": imagefolder.read_imagefolder,
    "csv": table.read_table,
    "coco": coco.read_coco,
    "voc-xml": voc_xml.read_voc_xml,
    "label-studio": label_studio.read_label_studio,
}

__all__ = [
    "FORMATS",
    "ImportEntry",
    "ImportPlan",
    "ImportSummary",
    "detect_format",
    "import_command",
    "import_dataset",
    "read_source",
    "write_custom",
]


def detect_format(source: Path) -> str:
    """The FORMATS key for `source` (see the module docstring), or a CosaDataError naming --format."""
    source = Path(source)
    hint = f"pass --format with one of {', '.join(FORMATS)}"
    if not source.exists():
        raise CosaDataError(f"{source} does not exist.")
    if source.is_dir():
        if voc_xml.looks_like(source):
            return "voc-xml"
        if imagefolder.looks_like(source):
            return "imagefolder"
        if (source / "classes.txt").is_file() and (source / "labels.csv").is_file():
            raise CosaDataError(f"{source} is already in the custom format: use it as --data custom:{source}.")
        raise CosaDataError(f"{source}: cannot tell the format of this folder (no class folders, no VOC XML); {hint}.")
    suffix = source.suffix.lower()
    if suffix in (".csv", ".tsv", ".tab", ".txt"):
        return "csv"
    if suffix == ".json":
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CosaDataError(f"{source}: cannot read this JSON ({exc}).") from exc
        if coco.looks_like(data):
            return "coco"
        if label_studio.looks_like(data):
            return "label-studio"
        raise CosaDataError(
            f"{source}: neither a COCO instances file (images, annotations, categories) nor a Label Studio "
            f"export (a list of tasks); {hint}."
        )
    if suffix == ".xml":
        raise CosaDataError(f"{source}: pass the folder that holds the VOC XML files (or Annotations/), not one file.")
    raise CosaDataError(f"{source}: cannot tell the format from the suffix {suffix or '(none)'}; {hint}.")


def read_source(source: Path, fmt: str | None = None, **options) -> ImportPlan:
    """Read `source` with the reader for `fmt` (detected when None) into an ImportPlan."""
    fmt = fmt or detect_format(Path(source))
    if fmt not in FORMATS:
        raise CosaDataError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}.")
    return FORMATS[fmt](Path(source), **{k: v for k, v in options.items() if v is not None})


def import_dataset(
    source: Path,
    out: Path,
    *,
    fmt: str | None = None,
    link: bool = False,
    val_fraction: float | None = None,
    seed: int = 0,
    force: bool = False,
    **options,
) -> ImportSummary:
    """Read `source` and write it as a custom-format folder at `out` (refuses to replace `out` without force)."""
    check_out(Path(out), force=force, sources=(Path(source),))
    plan = read_source(source, fmt, **options)
    return write_custom(plan, Path(out), link=link, val_fraction=val_fraction, seed=seed, force=force)


def import_command(args: argparse.Namespace) -> int:
    """`cosa data import SOURCE --out DIR [options]`."""
    summary = import_dataset(
        Path(args.source),
        Path(args.out),
        fmt=getattr(args, "format", None),
        link=getattr(args, "link", False),
        val_fraction=getattr(args, "val_fraction", None),
        seed=getattr(args, "seed", 0),
        force=getattr(args, "force", False),
        image_col=getattr(args, "image_col", None),
        labels_col=getattr(args, "labels_col", None),
        sep=getattr(args, "sep", None),
        images_dir=Path(args.images_dir) if getattr(args, "images_dir", None) else None,
    )
    print(summary.text())
    return 0

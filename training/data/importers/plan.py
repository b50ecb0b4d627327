"""What every importer produces (`ImportPlan`) and the helpers the readers share."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cosa_sdk.constants import IMAGE_SUFFIXES
from cosa_sdk.errors import CosaDataError

BACKGROUND_NAMES = ("background", "_background_", "bg", "__background__")


@dataclass
class ImportEntry:
    """One image to import.

    `labels`: foreground class names (may be empty: an image without foreground). `mask`: None, a
    path to an index PNG, or a callable returning a uint8 HxW array (0 = background, i = i-th class,
    255 = ignore) built only when written. `split`: "train"/"val" when the source fixes the split.
    """

    source: Path
    name: str
    labels: tuple[str, ...]
    mask: Path | Callable[[], np.ndarray] | None = None
    split: str | None = None


@dataclass
class ImportPlan:
    """The classes (in output order) and the images of a source, plus notes for the summary."""

    classes: list[str]
    entries: list[ImportEntry]
    source: str
    format: str
    notes: list[str] = field(default_factory=list)


def class_name(raw: str, where: str) -> str:
    """A class name usable in classes.txt / labels.csv: trimmed, spaces and commas become `_`."""
    name = re.sub(r"[\s,]+", "_", str(raw).strip())
    if not name:
        raise CosaDataError(f"{where}: empty class name.")
    return name


def is_background(name: str) -> bool:
    return name.lower() in BACKGROUND_NAMES


def normalise_labels(raw: Iterable[str], where: str) -> tuple[str, ...]:
    """Class names of one image: sanitised, background names dropped, duplicates removed, order kept."""
    out: list[str] = []
    for item in raw:
        if not str(item).strip():
            continue
        name = class_name(item, where)
        if not is_background(name) and name not in out:
            out.append(name)
    return tuple(out)


def check_class_list(classes: list[str], where: str, raw: dict[str, str] | None = None) -> list[str]:
    """Reject lists the custom format cannot hold (two raw names mapping to one, too many classes)."""
    from cosa_sdk.training.data.readers.custom import MAX_CLASSES

    if raw:
        seen: dict[str, str] = {}
        for original, name in raw.items():
            if name in seen and seen[name] != original:
                raise CosaDataError(
                    f"{where}: classes {seen[name]!r} and {original!r} both become {name!r} "
                    "(spaces and commas turn into _); rename one of them."
                )
            seen[name] = original
    if not classes:
        raise CosaDataError(f"{where}: no class names found; every image needs at least one label to train.")
    if len(classes) > MAX_CLASSES:
        raise CosaDataError(f"{where}: {len(classes)} classes; at most {MAX_CLASSES} fit 8-bit masks.")
    return classes


def find_image(name: str, folders: list[Path]) -> Path | None:
    """The image `name` (a relative path, with or without a suffix) in the first folder that has it."""
    rel = Path(name.replace("\\", "/"))
    for folder in folders:
        candidate = folder / rel
        if candidate.is_file():
            return candidate
        if not rel.suffix or rel.suffix.lower() not in IMAGE_SUFFIXES:
            for suffix in IMAGE_SUFFIXES:
                for s in (suffix, suffix.upper()):
                    alt = candidate.with_name(candidate.name + s)
                    if alt.is_file():
                        return alt
    return None


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def folders_text(folders: list[Path]) -> str:
    return ", ".join(str(f) for f in folders)

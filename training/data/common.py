"""Shared pieces of every dataset: the item index, image and mask reading, palette, cache folder."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cosa_sdk.constants import IMAGE_SUFFIXES
from cosa_sdk.errors import CosaDataError
from cosa_sdk.inputs import decode_image
from cosa_sdk.palette import voc_colormap

IGNORE_INDEX = 255

# Errors PIL raises for files that are not images or are cut short.
BAD_IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Item:
    """One image of a split. `labels` holds 0-based foreground indices, or None to derive them from the mask."""

    name: str
    image: Path
    mask: Path | None = None
    labels: tuple[int, ...] | None = None


@dataclass
class ItemIndex:
    """The resolved content of one split of a dataset: class names and the items, in a fixed order.

    `split` is the split actually read (e.g. "train_aug" when the training role resolved to it).
    """

    classes: list[str]
    items: list[Item]
    source: str
    notes: dict[str, int] = field(default_factory=dict)
    split: str | None = None


def voc_palette(num_entries: int) -> list[list[int]]:
    """The standard PASCAL VOC colour map (the SDK's), index 0 black, as lists for JSON."""
    return [list(colour) for colour in voc_colormap(num_entries)]


def cache_dir() -> Path:
    """Folder for generated data: `$COSA_CACHE_DIR`, else `~/.cache/cosa-sdk`."""
    env = os.environ.get("COSA_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cosa-sdk"


def read_image(path: Path) -> Image.Image:
    """Decode an image fully into RGB the way the SDK does (`cosa_sdk.inputs.decode_image`: EXIF orientation
    applied, alpha dropped), so masks drawn on the upright photo line up in training, evaluation and
    `segment`; raises one of BAD_IMAGE_ERRORS for unreadable or truncated files."""
    return decode_image(path, max_pixels=None)


def read_mask(path: Path, *, num_classes: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an 8-bit index mask (0 = background, i = class i, 255 = ignore) as uint8 HxW and validate it.

    `size` is the (width, height) of the image the mask belongs to.
    """
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            mask = np.array(img)
    except BAD_IMAGE_ERRORS as exc:
        raise CosaDataError(f"{path}: cannot read this mask ({exc}); re-save it as an 8-bit PNG.") from exc
    if mode not in ("L", "P") or mask.ndim != 2:
        raise CosaDataError(
            f"{path}: mask has mode {mode!r}; masks must be single-channel 8-bit PNGs holding class indices "
            "(0 = background, i = i-th class, 255 = ignore). Convert colour masks to index masks first."
        )
    if size is not None and (mask.shape[1], mask.shape[0]) != tuple(size):
        raise CosaDataError(
            f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is {size[0]}x{size[1]}; "
            "a mask must have exactly the size of its image."
        )
    bad = (mask > num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        raise CosaDataError(
            f"{path}: mask holds value {int(mask[bad].max())} but the dataset has only {num_classes} classes "
            f"(valid values 0..{num_classes} and {IGNORE_INDEX} = ignore)."
        )
    return mask


def labels_from_mask(mask: np.ndarray, num_classes: int) -> tuple[int, ...]:
    """0-based foreground class indices present in a mask (background and ignore left out)."""
    values = np.unique(mask)
    return tuple(int(v) - 1 for v in values if 0 < v <= num_classes)


def multi_hot(labels: Sequence[int], num_classes: int) -> np.ndarray:
    """Float32 vector of length C with 1 at every given 0-based class index."""
    vec = np.zeros(num_classes, dtype=np.float32)
    vec[list(labels)] = 1.0
    return vec


def read_text(path: Path) -> str:
    """The text of a dataset text file (classes.txt, labels.csv, name lists): UTF-8, a leading BOM (Excel's
    "CSV UTF-8") dropped. Any other encoding is refused with the file, line and fix."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CosaDataError(
            f"{path}:{line}: byte 0x{data[exc.start]:02x} is not UTF-8 (the file looks saved as Latin-1 / "
            "Windows-1252); save it as UTF-8 (Excel: Save As > CSV UTF-8; editors: Encoding > UTF-8)."
        ) from None


def read_lines(path: Path) -> list[tuple[int, str]]:
    """Every line of a dataset text file as (line number, text without surrounding spaces); CRLF, CR and LF
    line ends and a UTF-8 BOM are accepted (see `read_text`)."""
    return [(number, line.strip()) for number, line in enumerate(read_text(path).splitlines(), start=1)]


def read_name_list(path: Path) -> list[tuple[int, str]]:
    """Non-empty lines of a name list as (line number, stripped text); a known image suffix is removed."""
    entries = []
    for number, text in read_lines(path):
        if not text:
            continue
        if text.lower().endswith(IMAGE_SUFFIXES):
            text = text.rsplit(".", 1)[0]
        entries.append((number, text))
    return entries


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: seed numpy and `random` from torch's per-worker seed.

    The datasets never use global RNG state, so this only protects user code called in workers.
    """
    import torch

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)

"""COCO instances JSON: image labels from the annotations' categories, masks from their polygons/RLE.

Classes are the JSON's categories in id order. Every image whose annotations all carry a
segmentation gets a mask (larger instances painted first so smaller stay visible; crowd regions
become 255 = ignore where no instance covers them); crowd annotations count as labels too. Images
are looked up under `images_dir` (default: the JSON's folder, images/, the parent folder and, for
instances_val2017.json, ../val2017 and ../images/val2017). Decoding needs no pycocotools.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from cosa_sdk.errors import CosaDataError
from cosa_sdk.training.data.common import IGNORE_INDEX
from cosa_sdk.training.data.importers.plan import (
    ImportEntry,
    ImportPlan,
    check_class_list,
    class_name,
    find_image,
    folders_text,
    is_background,
)
from cosa_sdk.training.data.importers.rle import decode_segmentation


def looks_like(data) -> bool:
    return isinstance(data, dict) and all(k in data for k in ("images", "annotations", "categories"))


def _load(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CosaDataError(f"{path}: cannot read this JSON ({exc}).") from exc


def _folders(path: Path, images_dir: Path | None) -> list[Path]:
    if images_dir:
        return [Path(images_dir)]
    parent = path.parent
    folders = [parent, parent / "images", parent.parent, parent.parent / "images"]
    split = path.stem.split("_")[-1]  # instances_val2017 -> val2017
    folders += [parent.parent / split, parent.parent / "images" / split, parent / split]
    return folders


def _has_segm(ann: dict) -> bool:
    segm = ann.get("segmentation")
    return bool(segm) and (isinstance(segm, list) or (isinstance(segm, dict) and "counts" in segm))


def read_coco(source: Path, *, images_dir: Path | None = None, **_options) -> ImportPlan:
    path = Path(source)
    data = _load(path)
    if not looks_like(data):
        raise CosaDataError(f"{path}: not a COCO instances file (needs the keys images, annotations, categories).")
    categories = sorted(data["categories"], key=lambda c: c["id"])
    raw = {str(c["name"]): class_name(c["name"], f"{path} category {c['id']}") for c in categories}
    name_of = {c["id"]: raw[str(c["name"])] for c in categories}
    classes = [n for n in dict.fromkeys(name_of.values()) if not is_background(n)]
    check_class_list(classes, str(path), raw)
    index = {n: i + 1 for i, n in enumerate(classes)}
    images = {img["id"]: img for img in data["images"]}
    by_image: dict = {img_id: [] for img_id in images}
    for ann in data["annotations"]:
        if ann.get("image_id") not in images:
            raise CosaDataError(f"{path}: annotation {ann.get('id')} refers to unknown image id {ann.get('image_id')}.")
        if ann.get("category_id") not in name_of:
            raise CosaDataError(
                f"{path}: annotation {ann.get('id')} has category_id {ann.get('category_id')}, "
                "not among the categories."
            )
        by_image[ann["image_id"]].append(ann)
    any_segm = any(_has_segm(a) for a in data["annotations"])
    folders = _folders(path, images_dir)
    entries: list[ImportEntry] = []
    missing: list[str] = []
    for img_id, img in images.items():
        file_name = str(img.get("file_name", ""))
        found = find_image(file_name, folders) if file_name else None
        if found is None:
            missing.append(file_name or f"id {img_id}")
            continue
        anns = by_image[img_id]
        labels = tuple(n for n in dict.fromkeys(name_of[a["category_id"]] for a in anns) if n in index)
        mask = None
        if any_segm and all(_has_segm(a) for a in anns):
            mask = _mask_maker(anns, img, found, path, name_of, index)
        entries.append(ImportEntry(source=found, name=found.name, labels=labels, mask=mask))
    if missing:
        raise CosaDataError(
            f"{path}: {len(missing)} images not found (e.g. {missing[0]!r}) in {folders_text(folders)}; "
            "pass --images-dir FOLDER where the file_name paths are relative to."
        )
    notes = []
    if not any_segm:
        notes.append("no segmentations in the JSON: no masks written (boxes only)")
    return ImportPlan(classes=classes, entries=entries, source=str(path), format="coco", notes=notes)


def _mask_maker(anns, img, image_path: Path, json_path: Path, name_of, index):
    def make() -> np.ndarray:
        with Image.open(image_path) as im:
            width, height = im.size
        h, w = int(img.get("height", height)), int(img.get("width", width))
        if (w, h) != (width, height):
            raise CosaDataError(
                f"{json_path}: image {img.get('file_name')} is {width}x{height} but the JSON says {w}x{h}."
            )
        mask = np.zeros((height, width), dtype=np.uint8)
        crowd = np.zeros((height, width), dtype=bool)
        for ann in sorted(anns, key=lambda a: -float(a.get("area", 0.0) or 0.0)):
            try:
                region = decode_segmentation(ann["segmentation"], height, width)
            except (ValueError, TypeError, IndexError) as exc:
                raise CosaDataError(f"{json_path}: annotation {ann.get('id')}: bad segmentation ({exc}).") from exc
            name = name_of[ann["category_id"]]
            if ann.get("iscrowd", 0):
                crowd |= region
            elif name in index:
                mask[region] = index[name]
        mask[crowd & (mask == 0)] = IGNORE_INDEX
        return mask

    return make

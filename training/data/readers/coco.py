"""MS COCO 2014 as VOC-style index masks (81 labels, 0 = background, the 80 classes in category order).

Layout under PATH: images in `{train2014,val2014}/`, `JPEGImages/{train2014,val2014}/` or
`images/{...}`; masks in `SegmentationClass/{train2014,val2014}/<image stem>.png`; optional name lists
`{train,val}.txt`. Without masks, `annotations/instances_{split}2014.json` is converted once into
those PNG masks with pycocotools. Image labels come from the masks, read lazily with each sample.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from cosa_sdk.errors import CosaDataError
from cosa_sdk.training.data.classes import COCO_CLASSES
from cosa_sdk.training.data.common import IGNORE_INDEX, Item, ItemIndex, read_name_list

COCO_SPLITS = ("train", "val")


def _image_dir(root: Path, folder: str) -> Path:
    for candidate in (root / folder, root / "JPEGImages" / folder, root / "images" / folder):
        if candidate.is_dir():
            return candidate
    raise CosaDataError(f"COCO images not found: expected {root / folder} (or JPEGImages/{folder}, images/{folder}).")


def convert_instances(annotation_file: Path, out_dir: Path) -> int:
    """Write one index PNG per image of an instances JSON into out_dir (atomically); returns the count.

    Larger instances are painted first so smaller ones stay visible; crowd regions become 255 where
    no instance covers them.
    """
    try:
        from pycocotools import mask as mask_utils
    except ImportError as exc:
        raise CosaDataError(
            f"converting {annotation_file} into PNG masks needs pycocotools: `pip install pycocotools`, "
            "or provide SegmentationClass/{train2014,val2014} PNG masks."
        ) from exc
    data = json.loads(annotation_file.read_text(encoding="utf-8"))
    unknown = [c["name"] for c in data["categories"] if c["name"] not in COCO_CLASSES]
    if unknown:
        raise CosaDataError(f"{annotation_file}: categories {unknown[:5]} are not COCO 2014 classes.")
    class_of = {c["id"]: COCO_CLASSES.index(c["name"]) + 1 for c in data["categories"]}
    by_image: dict[int, list[dict]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        for img in data["images"]:
            height, width = img["height"], img["width"]
            mask = np.zeros((height, width), dtype=np.uint8)
            crowd = np.zeros((height, width), dtype=bool)
            for ann in sorted(by_image[img["id"]], key=lambda a: -a.get("area", 0.0)):
                segm = ann["segmentation"]
                if isinstance(segm, list):
                    rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
                elif isinstance(segm.get("counts"), list):
                    rle = mask_utils.frPyObjects(segm, height, width)
                else:
                    rle = segm
                region = mask_utils.decode(rle).astype(bool)
                if ann.get("iscrowd", 0):
                    crowd |= region
                else:
                    mask[region] = class_of[ann["category_id"]]
            mask[crowd & (mask == 0)] = IGNORE_INDEX
            stem = img["file_name"].rsplit(".", 1)[0]
            Image.fromarray(mask, mode="L").save(tmp / f"{stem}.png")
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return len(data["images"])


def read_coco(path: Path, split: str) -> ItemIndex:
    """Resolve a COCO 2014 split ("train" or "val") into an ItemIndex."""
    if split not in COCO_SPLITS:
        raise CosaDataError(f"COCO splits are {', '.join(COCO_SPLITS)}, not {split!r}.")
    root = Path(path)
    if not root.is_dir():
        raise CosaDataError(f"COCO folder {root} does not exist.")
    folder = f"{split}2014"
    image_dir = _image_dir(root, folder)
    mask_dir = root / "SegmentationClass" / folder
    if not mask_dir.is_dir():
        annotations = root / "annotations" / f"instances_{folder}.json"
        if not annotations.is_file():
            raise CosaDataError(
                f"COCO masks not found: expected {mask_dir} (VOC-style PNGs, 0 = background, 1..80 = classes) "
                f"or {annotations} to convert."
            )
        convert_instances(annotations, mask_dir)
    masks = {name.rsplit(".", 1)[0] for name in os.listdir(mask_dir) if name.endswith(".png")}
    images = {name.rsplit(".", 1)[0]: name for name in os.listdir(image_dir)}
    list_path = root / f"{split}.txt"
    if list_path.is_file():
        entries = read_name_list(list_path)
        where = {name: f"{list_path}:{number}" for number, name in entries}
        names = [name for _, name in entries]
    else:
        names = sorted(masks)
        where = {name: str(mask_dir / f"{name}.png") for name in names}
    items = []
    for name in names:
        if name not in images:
            raise CosaDataError(f"{where[name]}: image {name!r} not found in {image_dir}.")
        if name not in masks:
            raise CosaDataError(f"{where[name]}: mask {mask_dir / (name + '.png')} is missing.")
        items.append(Item(name=name, image=image_dir / images[name], mask=mask_dir / f"{name}.png"))
    return ItemIndex(classes=list(COCO_CLASSES), items=items, source=f"coco:{root} ({split})", split=split)

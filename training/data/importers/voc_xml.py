"""Pascal VOC XML detection annotations: image labels from the <object><name> entries.

SOURCE is a VOC folder (Annotations/*.xml, images in JPEGImages/) or any folder of XML files (images
next to them, in images/, or in `images_dir`). ImageSets/Main/{train,val}.txt, when both exist, fix
the split. Boxes are not masks, so nothing is written to masks/.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from cosa_sdk.errors import CosaDataError
from cosa_sdk.training.data.common import read_name_list
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


def _xml_dir(root: Path) -> Path:
    return root / "Annotations" if (root / "Annotations").is_dir() else root


def looks_like(root: Path) -> bool:
    if not root.is_dir():
        return False
    for xml in sorted(_xml_dir(root).glob("*.xml"))[:3]:
        try:
            if ET.parse(xml).getroot().tag == "annotation":
                return True
        except ET.ParseError:
            return False
    return False


def read_voc_xml(source: Path, *, images_dir: Path | None = None, **_options) -> ImportPlan:
    root = Path(source)
    xml_dir = _xml_dir(root)
    files = sorted(xml_dir.glob("*.xml")) if root.is_dir() else []
    if not files:
        raise CosaDataError(f"{root}: no VOC XML files found (expected Annotations/*.xml or *.xml).")
    if images_dir:
        folders = [Path(images_dir)]
    else:
        folders = [root / "JPEGImages", xml_dir, root / "images", root]
    splits: dict[str, str] = {}
    sets = root / "ImageSets" / "Main"
    if (sets / "train.txt").is_file() and (sets / "val.txt").is_file():
        for split in ("train", "val"):
            for _, stem in read_name_list(sets / f"{split}.txt"):
                splits[stem.split()[0]] = split
    raw: dict[str, str] = {}
    entries: list[ImportEntry] = []
    for xml in files:
        try:
            tree = ET.parse(xml).getroot()
        except ET.ParseError as exc:
            raise CosaDataError(f"{xml}: not valid XML ({exc}).") from exc
        if tree.tag != "annotation":
            raise CosaDataError(f"{xml}: root element is <{tree.tag}>, expected a VOC <annotation>.")
        file_name = (tree.findtext("filename") or "").strip() or xml.stem
        found = find_image(file_name, folders) or find_image(xml.stem, folders)
        if found is None:
            raise CosaDataError(f"{xml}: image {file_name!r} not found in {folders_text(folders)}; pass --images-dir.")
        names = []
        for obj in tree.findall("object"):
            name = (obj.findtext("name") or "").strip()
            if not name:
                raise CosaDataError(f"{xml}: an <object> without a <name>.")
            raw.setdefault(name, class_name(name, str(xml)))
            names.append(name)
        split = splits.get(xml.stem) if splits else None
        entries.append(
            ImportEntry(source=found, name=found.name, labels=normalise_labels(names, str(xml)), split=split)
        )
    classes = sorted({c for c in raw.values() if not is_background(c)})
    check_class_list(classes, str(xml_dir), raw)
    notes = ["split from ImageSets/Main/{train,val}.txt"] if splits else []
    return ImportPlan(classes=classes, entries=entries, source=str(root), format="voc-xml", notes=notes)

"""VOC 2012 and COCO 2014 loaders on tiny fake trees built on the fly."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from cosa_sdk.errors import CosaConfigError, CosaDataError
from cosa_sdk.training.data import build_dataset, data_summary, parse_data_spec, read_index, resolve_split
from cosa_sdk.training.data.classes import COCO_CLASSES, VOC_CLASSES

from .builders import make_coco, make_voc, noise_image


def test_voc_splits_classes_and_labels_from_masks(tmp_path: Path) -> None:
    voc = make_voc(tmp_path)
    train = build_dataset(f"voc:{tmp_path}?split=train", "train", crop_size=16)
    assert train.classes == list(VOC_CLASSES) and train.num_classes == 20  # palette: test_readers.py
    sample = train[1]
    assert sample["name"] == "2007_000002"
    assert torch.nonzero(sample["labels"]).flatten().tolist() == [0, 6]  # aeroplane, car
    aug = read_index(f"voc:{voc.parent}", "train_aug")
    assert [it.name for it in aug.items] == ["2007_000001", "2011_000005"]
    assert aug.items[1].mask.parent.name == "SegmentationClassAug"
    val = build_dataset(f"voc:{voc}", "val", eval_size=16)
    assert [it.mask.parent.name for it in val.items] == ["SegmentationClass"] * 2
    first = val[1]  # sample sizes: test_readers.py
    assert torch.nonzero(first["labels"]).flatten().tolist() == [11, 14]  # dog, person


def test_voc_official_label_file_takes_precedence(tmp_path: Path) -> None:
    voc = make_voc(tmp_path)
    table = {"2007_000001": np.eye(20, dtype=np.float32)[3], "2007_000002": np.eye(20, dtype=np.float32)[4]}
    np.save(voc / "cls_labels_onehot.npy", table, allow_pickle=True)
    index = read_index(f"voc:{voc}?split=train", "train")
    assert [it.labels for it in index.items] == [(3,), (4,)]


VOC_WARNING = "cosa_sdk.training.data.readers.voc"


def test_voc_training_role_prefers_train_aug(tmp_path: Path, caplog) -> None:
    voc = make_voc(tmp_path)
    with caplog.at_level(logging.WARNING, logger=VOC_WARNING):
        assert resolve_split(f"voc:{tmp_path}", "train") == "train_aug"
        train = build_dataset(f"voc:{tmp_path}", "train", crop_size=16)
    assert not caplog.records
    assert train.split == "train_aug" and train.index.split == "train_aug"
    assert [it.name for it in train.items] == ["2007_000001", "2011_000005"]
    assert train.index.source.endswith("(train_aug)")
    # the evaluation role keeps reading val
    assert resolve_split(f"voc:{voc}", "val") == "val"
    val = build_dataset(f"voc:{voc}", "val", eval_size=16)
    assert val.split == "val" and len(val) == 2
    # the list may also sit next to the masks (VOC2012/train_aug.txt)
    (voc / "ImageSets/Segmentation/train_aug.txt").rename(voc / "train_aug.txt")
    assert read_index(f"voc:{voc}", "train").split == "train_aug"


@pytest.mark.parametrize("drop", ["list", "masks"])
def test_voc_training_role_falls_back_to_train_with_a_warning(tmp_path: Path, caplog, drop: str) -> None:
    voc = make_voc(tmp_path)
    if drop == "list":
        (voc / "ImageSets/Segmentation/train_aug.txt").unlink()
    else:
        for png in (voc / "SegmentationClassAug").iterdir():
            png.unlink()
        (voc / "SegmentationClassAug").rmdir()
    with caplog.at_level(logging.WARNING, logger=VOC_WARNING):
        train = build_dataset(f"voc:{voc}", "train", crop_size=16)
    assert train.split == "train" and [it.name for it in train.items] == ["2007_000001", "2007_000002"]
    (record,) = [r for r in caplog.records if r.name == VOC_WARNING]
    message = record.getMessage()
    missing = "ImageSets/Segmentation/train_aug.txt" if drop == "list" else "SegmentationClassAug/"
    assert f"missing {missing}" in message and "SBD augmentation" in message
    assert f"voc:{voc}?split=train" in message
    assert data_summary(f"voc:{voc}", train) == f"data: voc:{voc} (split train, 2 images)"


def test_voc_pinned_split_wins_for_training_only(tmp_path: Path, caplog) -> None:
    voc = make_voc(tmp_path)
    spec = f"voc:{voc}?split=train"
    with caplog.at_level(logging.WARNING, logger=VOC_WARNING):
        assert resolve_split(spec, "train") == "train"
        train = build_dataset(spec, "train", crop_size=16)
    assert not caplog.records  # an explicit choice is not warned about
    assert train.split == "train" and len(train) == 2
    assert resolve_split(spec, "val") == "val"  # evaluation ignores the pin
    assert build_dataset(spec, "val", eval_size=16).split == "val"
    assert resolve_split(f"voc:{voc}?split=val", "train") == "val"
    # explicit split names pass through; a pin does not redirect them
    assert resolve_split(spec, "train_aug") == "train_aug"
    # a pinned train_aug that is missing fails with the SBD hint rather than falling back
    make_voc(tmp_path / "bare", with_aug=False)
    with pytest.raises(CosaDataError, match="train_aug needs the SBD augmentation"):
        read_index(f"voc:{tmp_path / 'bare'}?split=train_aug", "train")


def test_split_query_parses_validates_and_round_trips(tmp_path: Path) -> None:
    spec = parse_data_spec("voc:/data/VOCdevkit?split=train")
    assert (spec.kind, spec.path, spec.split) == ("voc", Path("/data/VOCdevkit"), "train")
    assert parse_data_spec("voc:/data/VOCdevkit").split is None
    assert parse_data_spec("coco:/data/coco?split=val").split == "val"
    for text in (
        "voc:/data/VOCdevkit",
        "voc:/data/VOCdevkit?split=train",
        "voc:/data/VOCdevkit?split=train_aug",
        "coco:/data/coco?split=train",
        "custom:/data/pets?split=val",
        "custom:/data/what?/pets?",  # a '?' in the path: an empty query after it
        "custom:/data/what?/pets?split=train",
        "synthetic:n_train=8",
    ):
        assert str(parse_data_spec(text)) == text
        assert parse_data_spec(str(parse_data_spec(text))) == parse_data_spec(text)
    assert parse_data_spec("custom:/data/what?/pets?").path == Path("/data/what?/pets")
    with pytest.raises(CosaConfigError, match=r"bad query 'splt=train'.*the only key is split.*end the spec with '\?'"):
        parse_data_spec("voc:/data/VOC?splt=train")
    with pytest.raises(CosaConfigError, match=r"bad query 'b/pets'"):
        parse_data_spec("custom:/data/a?b/pets")
    with pytest.raises(CosaConfigError, match=r"splits train, train_aug, val, not 'trainaug'; write voc:PATH\?split="):
        parse_data_spec("voc:/data/VOC?split=trainaug")
    with pytest.raises(CosaConfigError, match=r"coco datasets have the splits train, val, not 'train_aug'"):
        parse_data_spec("coco:/data/coco?split=train_aug")
    with pytest.raises(CosaConfigError, match="gives split twice"):
        parse_data_spec("voc:/data/VOC?split=train&split=val")
    with pytest.raises(CosaConfigError, match="has no path"):
        parse_data_spec("voc:?split=train")
    with pytest.raises(CosaConfigError, match="synthetic takes no"):
        parse_data_spec("synthetic:n_train=8?split=train")
    with pytest.raises(CosaConfigError, match="not 'test'"):
        resolve_split(f"voc:{tmp_path}", "test")


def test_coco_and_custom_training_role_reads_train(tmp_path: Path) -> None:
    root = make_coco(tmp_path / "coco")
    assert resolve_split(f"coco:{root}", "train") == "train"
    train = build_dataset(f"coco:{root}", "train", crop_size=16)
    assert data_summary(f"coco:{root}", train) == f"data: coco:{root} (split train, 2 images)"
    pinned = build_dataset(f"coco:{root}?split=val", "train", crop_size=16)
    assert pinned.split == "val" and len(pinned) == 1


def test_train_command_prints_the_data_line(tmp_path: Path, monkeypatch, capsys) -> None:
    import cosa_sdk.training.engine.trainer as engine
    from cosa_sdk.training import cli

    make_voc(tmp_path)
    spec = f"voc:{tmp_path}"

    class FakeTrainer:
        def __init__(self, config, *, data_spec, **kwargs) -> None:
            self.ctx = types.SimpleNamespace(is_main=True)
            self.train_set = build_dataset(data_spec, "train", crop_size=16)
            self.val_set = None  # the Trainer's val_set is None for data without masks
            self.resolution_note = None  # resolution=preset: nothing chosen from the data
            self.precision_note = "precision: float32 (amp=off)"

        def fit(self) -> dict:
            print("fit")
            return {"iterations": 1, "seconds": 1.0, "it_per_s": 1.0, "best_seg_miou": None}

    monkeypatch.setattr(engine, "Trainer", FakeTrainer)
    args = argparse.Namespace(
        preset="tiny", overrides=[], iters=None, backbone_weights=None, device=None, seed=None,
        out=str(tmp_path / "run"), data=spec, supervision="weak", resume=False, force=False,
    )  # fmt: skip
    assert cli.train_command(args) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"data: {spec} (split train_aug, 2 images)\nprecision: float32 (amp=off)\nfit\n")


def test_voc_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(CosaDataError, match="is not a VOC 2012 folder"):
        read_index(f"voc:{tmp_path}", "train")
    voc = make_voc(tmp_path, with_aug=False)
    with pytest.raises(CosaDataError, match="train_aug needs the SBD augmentation"):
        read_index(f"voc:{voc}", "train_aug")
    (voc / "ImageSets/Segmentation/val.txt").write_text("2007_000003\n2009_999999\n")
    with pytest.raises(CosaDataError, match=r"val\.txt:2: image .*2009_999999\.jpg is missing"):
        read_index(f"voc:{voc}", "val")
    noise_image(voc / "JPEGImages" / "2009_999999.jpg", 32, 24, 3)
    with pytest.raises(CosaDataError, match=r"val\.txt:2: no mask 2009_999999\.png"):
        read_index(f"voc:{voc}", "val")


def test_coco_masks_give_80_classes_and_labels(tmp_path: Path) -> None:
    root = make_coco(tmp_path / "coco")
    train = build_dataset(f"coco:{root}", "train", crop_size=16)
    assert train.num_classes == 80 and train.classes[0] == "person" and train.classes[-1] == "toothbrush"
    assert torch.nonzero(train[0]["labels"]).flatten().tolist() == [0, 79]
    assert train[1]["labels"][17] == 1.0  # dog


def test_coco_name_list_and_errors(tmp_path: Path) -> None:
    root = make_coco(tmp_path / "coco")
    (root / "train.txt").write_text("COCO_train2014_000000000025\nCOCO_train2014_000000000077\n")
    with pytest.raises(CosaDataError, match=r"train\.txt:2: image 'COCO_train2014_000000000077' not found"):
        read_index(f"coco:{root}", "train")
    (root / "train.txt").write_text("COCO_train2014_000000000025\n")
    assert [it.name for it in read_index(f"coco:{root}", "train").items] == ["COCO_train2014_000000000025"]
    empty = tmp_path / "empty"
    (empty / "val2014").mkdir(parents=True)
    with pytest.raises(CosaDataError, match=r"instances_val2014\.json to convert"):
        read_index(f"coco:{empty}", "val")


def _ann(category: int, crowd: int, area: float, polygon: list[int]) -> dict:
    return {"image_id": 1, "category_id": category, "iscrowd": crowd, "area": area, "segmentation": [polygon]}


def _instances(root: Path) -> None:
    (root / "val2014").mkdir(parents=True)
    (root / "annotations").mkdir()
    noise_image(root / "val2014" / "COCO_val2014_000000000001.jpg", 32, 24, 0)
    data = {
        "images": [{"id": 1, "file_name": "COCO_val2014_000000000001.jpg", "height": 24, "width": 32}],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 90, "name": "toothbrush"}],
        "annotations": [
            _ann(18, 0, 20.0, [8, 8, 14, 8, 14, 14, 8, 14]),
            _ann(1, 0, 300.0, [2, 2, 22, 2, 22, 20, 2, 20]),
            _ann(90, 1, 50.0, [20, 0, 31, 0, 31, 10, 20, 10]),
        ],
    }
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(data))


@pytest.mark.skipif(importlib.util.find_spec("pycocotools") is not None, reason="pycocotools is installed")
def test_coco_conversion_without_pycocotools_says_how_to_install(tmp_path: Path) -> None:
    _instances(tmp_path / "coco")
    with pytest.raises(CosaDataError, match="pip install pycocotools"):
        read_index(f"coco:{tmp_path / 'coco'}", "val")


def _polygon_mask_module() -> types.ModuleType:
    """A stand-in for pycocotools.mask covering polygons only (rasterised with PIL)."""
    module = types.ModuleType("pycocotools.mask")

    def fr_py_objects(polygons, height, width):
        return [{"poly": p, "size": (height, width)} for p in polygons]

    def merge(rles):
        return {"polys": [r["poly"] for r in rles], "size": rles[0]["size"]}

    def decode(rle):
        height, width = rle["size"]
        img = Image.new("L", (width, height), 0)
        for poly in rle["polys"]:
            ImageDraw.Draw(img).polygon(poly, fill=1)
        return np.asarray(img, dtype=np.uint8)

    module.frPyObjects, module.merge, module.decode = fr_py_objects, merge, decode
    return module


def test_coco_instances_convert_once_into_index_masks(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "coco"
    _instances(root)
    package = types.ModuleType("pycocotools")
    package.mask = _polygon_mask_module()
    monkeypatch.setitem(sys.modules, "pycocotools", package)
    monkeypatch.setitem(sys.modules, "pycocotools.mask", package.mask)
    index = read_index(f"coco:{root}", "val")
    mask = np.asarray(Image.open(index.items[0].mask))
    assert mask[10, 10] == COCO_CLASSES.index("dog") + 1  # small instance painted over the large one
    assert mask[4, 4] == 1  # person
    assert mask[5, 25] == 255 and mask[22, 5] == 0  # crowd region -> ignore, elsewhere background
    assert not list(root.joinpath("SegmentationClass").glob(".*"))  # no temp folder left behind
    monkeypatch.delitem(sys.modules, "pycocotools")
    assert len(read_index(f"coco:{root}", "val").items) == 1  # converted masks are reused

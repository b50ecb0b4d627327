"""Every dataset reader through the same checks (tests/training/data/conformance.py): one subclass per format.

To add a format: a `Test...(ReaderConformance)` class here whose `make` writes a tiny dataset of it (see
builders.py) and whose class attributes say what reading it must give.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from cosa_sdk.training.data.classes import COCO_CLASSES, VOC_CLASSES
from cosa_sdk.training.data.readers.synthetic_render import CLASS_NAMES

from .builders import CLASSES, make_coco, make_custom, make_voc
from .conformance import ReaderConformance


class TestVocReader(ReaderConformance):
    """VOC 2012 with the SBD augmentation: the training role reads train_aug."""

    kind = "voc"
    classes: ClassVar[list[str]] = list(VOC_CLASSES)
    splits: ClassVar[dict[str, list[str]]] = {
        "train": ["2007_000001", "2011_000005"],
        "val": ["2007_000003", "2008_000004"],
        "train_aug": ["2007_000001", "2011_000005"],
    }
    missing_folder_error = r"is not a VOC 2012 folder: expected VOCdevkit/VOC2012/JPEGImages .* Give voc:PATH"

    def make(self, root: Path) -> str:
        make_voc(root)
        return f"voc:{root}"


class TestCocoReader(ReaderConformance):
    """COCO 2014 with converted PNG masks under SegmentationClass."""

    kind = "coco"
    classes: ClassVar[list[str]] = list(COCO_CLASSES)
    splits: ClassVar[dict[str, list[str]]] = {
        "train": ["COCO_train2014_000000000009", "COCO_train2014_000000000025"],
        "val": ["COCO_val2014_000000000042"],
    }
    missing_folder_error = "COCO folder .* does not exist"

    def make(self, root: Path) -> str:
        return f"coco:{make_coco(root / 'coco')}"


class TestCustomReader(ReaderConformance):
    """The custom folder format: every labelled image trains, the masked ones evaluate."""

    kind = "custom"
    classes: ClassVar[list[str]] = CLASSES
    splits: ClassVar[dict[str, list[str]]] = {"train": ["a", "b", "c", "d"], "val": ["a", "c"]}
    crop_size = 32
    eval_size = 32
    missing_folder_error = "custom dataset folder .* does not exist"

    def make(self, root: Path) -> str:
        return f"custom:{make_custom(root / 'ds')}"


class TestSyntheticReader(ReaderConformance):
    """The embedded synthetic benchmark, generated on first use into the class's folder."""

    kind = "synthetic"
    classes: ClassVar[list[str]] = list(CLASS_NAMES)
    splits: ClassVar[dict[str, list[str]]] = {
        "train": ["train_00000", "train_00001", "train_00002", "train_00003"],
        "val": ["val_00000", "val_00001"],
    }
    crop_size = 32
    eval_size = 32
    test_missing_folder_is_named = None  # generated, not read from a folder: nothing can be missing

    def make(self, root: Path) -> str:
        return "synthetic:n_train=4,n_val=2,size=64,seed=3"

    def options(self, root: Path) -> dict[str, Any]:
        return {"cache_root": root}


def test_every_registered_reader_has_a_conformance_variant() -> None:
    from cosa_sdk.training.data.readers import READERS

    variants = {cls.kind for cls in ReaderConformance.__subclasses__()}
    assert variants == set(READERS), "add a ReaderConformance subclass for each new entry of READERS"

"""What every dataset reader must do, written once: `ReaderConformance`, in the manner of
segmentation_models_pytorch's `BaseModelTester`.

A variant is a subclass in tests/training/data/test_readers.py named `Test...` that writes a tiny dataset
of its format (`make`) and states what reading it must give (class attributes: the kind, the class table,
the item names of each split, the sample sizes); it inherits every `test_*` method here, so each check runs
once per format. Checks that only make sense for one format go into its subclass or the format's own test
file (test_voc_coco.py, test_custom.py, test_synthetic.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from cosa_sdk.errors import CosaDataError
from cosa_sdk.training.data import build_dataset, read_index
from cosa_sdk.training.data.common import IGNORE_INDEX, ItemIndex


def mask_classes(path: Path) -> set[int]:
    """The 0-based foreground classes an index mask shows (0 = background and 255 = ignore left out)."""
    with Image.open(path) as mask:
        values = np.unique(np.asarray(mask))
    return {int(v) - 1 for v in values if 0 < v < IGNORE_INDEX}


class ReaderConformance:
    kind: ClassVar[str] = ""  # the spec's kind: voc, coco, custom, synthetic
    classes: ClassVar[list[str]] = []  # the foreground class table, in order
    splits: ClassVar[dict[str, list[str]]] = {}  # split or role -> the item names read_index gives, in order
    crop_size: ClassVar[int] = 16  # training samples of this dataset are crop_size x crop_size
    eval_size: ClassVar[int] = 16  # evaluation images are resized to eval_size x eval_size
    missing_folder_error: ClassVar[str] = "does not exist"  # what reading a folder that is not there says

    # -- hooks ----------------------------------------------------------------------------------------
    def make(self, root: Path) -> str:
        """Write the tiny dataset under `root` (an empty folder) and return its spec."""
        raise NotImplementedError

    def options(self, root: Path) -> dict[str, Any]:
        """Extra keyword arguments of read_index and build_dataset (synthetic: where it is generated)."""
        return {}

    # -- fixtures and helpers -------------------------------------------------------------------------
    @pytest.fixture(scope="class")
    def root(self, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return tmp_path_factory.mktemp(f"{self.kind}-data")

    @pytest.fixture(scope="class")
    def spec(self, root: Path) -> str:
        return self.make(root)

    def index(self, spec: str, root: Path, split: str) -> ItemIndex:
        return read_index(spec, split, **self.options(root))

    def dataset(self, spec: str, root: Path, split: str, **kwargs: Any) -> Any:
        return build_dataset(spec, split, **self.options(root), **kwargs)

    # -- the checks -----------------------------------------------------------------------------------
    def test_index_reads_the_splits(self, spec: str, root: Path) -> None:
        for split, names in self.splits.items():
            index = self.index(spec, root, split)
            assert [it.name for it in index.items] == names, split
            assert index.classes == self.classes and index.split is not None

    def test_items_point_to_existing_files(self, spec: str, root: Path) -> None:
        for split in self.splits:
            for item in self.index(spec, root, split).items:
                assert item.image.is_file(), item
                assert item.mask is None or item.mask.is_file(), item
                assert item.labels is not None or item.mask is not None, f"{item}: no labels and no mask"
                assert item.labels is None or all(0 <= c < len(self.classes) for c in item.labels), item

    def test_class_table_and_palette(self, spec: str, root: Path) -> None:
        train = self.dataset(spec, root, "train", crop_size=self.crop_size)
        val = self.dataset(spec, root, "val", eval_size=self.eval_size)
        for ds in (train, val):
            assert ds.classes == self.classes and ds.num_classes == len(self.classes)
            assert len(ds.palette) == len(self.classes) + 1 and ds.palette[0] == [0, 0, 0]
        assert len(train) == len(self.splits["train"]) and len(val) == len(self.splits["val"])

    def test_image_labels_match_the_masks(self, spec: str, root: Path) -> None:
        for split in self.splits:
            for item in self.index(spec, root, split).items:
                if item.mask is not None and item.labels is not None:
                    assert set(item.labels) == mask_classes(item.mask), item
        val = self.dataset(spec, root, "val", eval_size=self.eval_size)
        for index in range(len(val)):
            sample = val[index]
            present = set(np.unique(sample["mask"].numpy()).tolist()) - {0, IGNORE_INDEX}
            assert torch.nonzero(sample["labels"]).flatten().tolist() == sorted(v - 1 for v in present), sample["name"]

    def test_training_samples(self, spec: str, root: Path) -> None:
        size, count = self.crop_size, len(self.classes)
        ds = self.dataset(spec, root, "train", crop_size=size)
        items = {it.name: it for it in ds.items}
        for key in range(len(ds)):
            sample = ds[key]
            item = items[sample["name"]]
            assert sample["weak"].shape == sample["strong"].shape == (3, size, size)
            assert sample["weak"].dtype == sample["strong"].dtype == torch.float32
            labels = sample["labels"]
            assert labels.dtype == torch.float32 and labels.shape == (count,)
            assert set(labels.unique().tolist()) <= {0.0, 1.0} and labels.sum() >= 1
            if item.labels is not None:
                assert torch.nonzero(labels).flatten().tolist() == sorted(set(item.labels))
            assert sample["box"].dtype == torch.int64 and sample["box"].shape == (4,)
            y0, y1, x0, x1 = sample["box"].tolist()
            assert 0 <= y0 < y1 <= size and 0 <= x0 < x1 <= size
            mask = sample["mask"]
            assert mask.dtype == torch.int64 and mask.shape == (size, size)
            assert set(mask.unique().tolist()) <= set(range(count + 1)) | {IGNORE_INDEX}
            outside = torch.ones(size, size, dtype=torch.bool)
            outside[y0:y1, x0:x1] = False
            assert (mask[outside] == IGNORE_INDEX).all(), "the padding around the crop is ignored"
            assert sample["has_mask"] is (item.mask is not None)
            if not sample["has_mask"]:
                assert (mask == IGNORE_INDEX).all()

    def test_evaluation_samples(self, spec: str, root: Path) -> None:
        ds = self.dataset(spec, root, "val", eval_size=self.eval_size)
        for index, item in enumerate(ds.items):
            sample = ds[index]
            with Image.open(item.image) as image:
                width, height = image.size
            assert sample["name"] == item.name
            assert sample["image"].shape == (3, self.eval_size, self.eval_size)
            assert sample["image"].dtype == torch.float32
            assert sample["mask"].shape == (height, width) and sample["mask"].dtype == torch.int64
            assert sample["raw"].shape == (height, width, 3) and sample["raw"].dtype == torch.uint8
            assert sample["labels"].shape == (len(self.classes),) and sample["labels"].dtype == torch.float32

    def test_missing_folder_is_named(self, tmp_path: Path) -> None:
        missing = tmp_path / "not-here"
        for split in ("train", "val"):
            with pytest.raises(CosaDataError, match=self.missing_folder_error) as info:
                read_index(f"{self.kind}:{missing}", split)
            assert str(missing) in str(info.value)

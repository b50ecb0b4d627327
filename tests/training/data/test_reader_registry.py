"""The dataset-format registry (`cosa_sdk.training.data.readers.READERS`): one entry adds a `--data` kind.

A format registered here only (monkeypatch.setitem) is parsed, resolves its splits, reads and builds
datasets and appears in the help of every spec error, with no other edit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cosa_sdk.errors import CosaConfigError
from cosa_sdk.training.data import build_dataset, data_summary, read_index, resolve_split
from cosa_sdk.training.data import spec as spec_mod
from cosa_sdk.training.data.common import Item, ItemIndex
from cosa_sdk.training.data.readers import READERS, DatasetReader
from cosa_sdk.training.data.spec import DataSpec, parse_data_spec

OLD_SPEC_HELP = (
    "use one of voc:PATH (VOCdevkit/VOC2012), coco:PATH (COCO 2014 + PNG masks), custom:PATH "
    "(classes.txt, images/, labels.csv), or synthetic (optionally synthetic:n_train=64,n_val=16,size=128,seed=0); "
    "append ?split=NAME to a PATH to pin the training split (e.g. voc:PATH?split=train)"
)
CLASSES = ("cat", "dog")


def read_folders(spec: DataSpec, split: str, cache_root: Path | None) -> ItemIndex:
    """A toy format: PATH/<split>/<class>/<stem>.jpg, with the mask <stem>.png beside it when there is one."""
    items = []
    for number, name in enumerate(CLASSES):
        for image in sorted((spec.path / split / name).glob("*.jpg")):
            mask = image.with_suffix(".png")
            items.append(Item(f"{name}-{image.stem}", image, mask=mask if mask.is_file() else None, labels=(number,)))
    return ItemIndex(classes=list(CLASSES), items=items, source=f"{spec} ({split})", split=split)


def folders_train_split(spec: DataSpec) -> str:
    """Train on the `extra` split when the folder has one."""
    return "extra" if (spec.path / "extra").is_dir() else "train"


FOLDERS = DatasetReader(
    splits=("train", "extra", "val"),
    help="folders:PATH (<split>/<class>/*.jpg)",
    read=read_folders,
    default_train_split=folders_train_split,
)


def make_folders(root: Path, splits=("train", "val")) -> Path:
    rng = np.random.default_rng(0)
    for split in splits:
        for number, name in enumerate(CLASSES, 1):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
                mask = np.zeros((24, 32), np.uint8)
                mask[6:18, 8:24] = number
                Image.fromarray(mask).save(folder / f"{i}.png")
    return root


@pytest.fixture
def folders(monkeypatch) -> DatasetReader:
    monkeypatch.setitem(READERS, "folders", FOLDERS)
    return FOLDERS


def test_builtin_kinds_and_help_are_unchanged() -> None:
    assert spec_mod.KINDS == ("voc", "coco", "custom", "synthetic")
    assert spec_mod.SPLITS == {
        "voc": ("train", "train_aug", "val"),
        "coco": ("train", "val"),
        "custom": ("train", "val"),
        "synthetic": ("train", "val"),
    }
    assert spec_mod.SPEC_HELP == OLD_SPEC_HELP
    assert [kind for kind, reader in READERS.items() if not reader.takes_path] == ["synthetic"]
    with pytest.raises(CosaConfigError, match=r"^unknown dataset spec 'nope:x': use one of voc:PATH"):
        parse_data_spec("nope:x")
    with pytest.raises(AttributeError):
        spec_mod.NOT_A_NAME  # noqa: B018


def test_a_registered_kind_parses_and_shows_in_the_help(folders, tmp_path: Path) -> None:
    spec = parse_data_spec(f"folders:{tmp_path}")
    assert spec == DataSpec(kind="folders", path=tmp_path)
    assert str(parse_data_spec(f"Folders:{tmp_path}?split=extra")) == f"folders:{tmp_path}?split=extra"
    assert "folders" in spec_mod.KINDS and spec_mod.SPLITS["folders"] == ("train", "extra", "val")
    assert spec_mod.SPEC_HELP.startswith("use one of voc:PATH (VOCdevkit/VOC2012), coco:PATH")
    assert ", or folders:PATH (<split>/<class>/*.jpg);" in spec_mod.SPEC_HELP
    with pytest.raises(CosaConfigError, match=r"unknown dataset spec 'nope:x': .*or folders:PATH \(<split>"):
        parse_data_spec("nope:x")
    with pytest.raises(CosaConfigError, match=r"folders datasets have the splits train, extra, val, not 'test'"):
        parse_data_spec(f"folders:{tmp_path}?split=test")
    with pytest.raises(CosaConfigError, match=r"has no path: write folders:PATH\."):
        parse_data_spec("folders:")


def test_a_registered_kind_resolves_reads_and_builds(folders, tmp_path: Path) -> None:
    root = make_folders(tmp_path / "pets")
    spec = f"folders:{root}"
    assert resolve_split(spec, "train") == "train" and resolve_split(spec, "val") == "val"
    assert resolve_split(f"{spec}?split=extra", "train") == "extra"
    with pytest.raises(CosaConfigError, match="folders datasets have the splits train, extra, val, not 'test'"):
        resolve_split(spec, "test")
    index = read_index(spec, "train")
    assert index.split == "train" and len(index.items) == 6 and index.classes == list(CLASSES)

    train = build_dataset(spec, "train", crop_size=16)
    sample = train[0]
    assert len(train) == 6 and tuple(sample["weak"].shape) == (3, 16, 16)
    assert sample["labels"].tolist() == [1.0, 0.0]  # the first item is a cat
    assert data_summary(spec, train) == f"data: folders:{root} (split train, 6 images)"
    evaluation = build_dataset(spec, "val", eval_size=16)
    assert len(evaluation) == 6 and evaluation.split == "val"
    assert evaluation[3]["mask"].max().item() == 2  # a dog, painted 2 in its mask

    make_folders(root, splits=("extra",))  # the kind's own default rule picks it up
    assert resolve_split(spec, "train") == "extra"
    assert build_dataset(spec, "train", crop_size=16).split == "extra"


def test_a_registered_kind_is_checked_by_cosa_data_check(folders, tmp_path: Path) -> None:
    from cosa_sdk.training.data.check.validate import validate_dataset

    root = make_folders(tmp_path / "pets")
    report = validate_dataset(f"folders:{root}", cache_dir=tmp_path / "cache")
    assert report.splits == {"train": "train", "val": "val"}
    assert len(report.items) == 12 and not report.problems


def test_a_kind_with_parameters_instead_of_a_path(monkeypatch, tmp_path: Path) -> None:
    def parse(text: str, spec: str) -> dict[str, int]:
        if "?" in spec:
            raise CosaConfigError(f"dataset spec {spec!r}: noise takes no ?query")
        return {key: int(value) for key, _, value in (p.partition("=") for p in text.split(",") if p)}

    root = make_folders(tmp_path / "generated")
    noise = DatasetReader(
        splits=("train", "val"),
        help="noise (optionally noise:n=4)",
        read=lambda spec, split, cache_root: read_folders(DataSpec("folders", path=root), split, cache_root),
        parse_params=parse,
        folder=lambda spec: root,
    )
    monkeypatch.setitem(READERS, "noise", noise)
    assert not noise.takes_path
    spec = parse_data_spec("noise:n=4")
    assert spec == DataSpec(kind="noise", params={"n": 4}) and str(spec) == "noise:n=4"
    assert str(parse_data_spec("noise")) == "noise"
    with pytest.raises(CosaConfigError, match="noise takes no"):
        parse_data_spec("noise?split=train")
    assert len(read_index("noise:n=4", "val").items) == 6
    assert ", or noise (optionally noise:n=4);" in spec_mod.SPEC_HELP
    # the pinned-split example names the first kind that takes a PATH
    assert spec_mod.SPEC_HELP.endswith("(e.g. voc:PATH?split=train)")

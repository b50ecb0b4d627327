"""The custom folder format, its error messages, and the train/eval datasets built on it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cosa_sdk.errors import CosaConfigError, CosaDataError, CosaInputError
from cosa_sdk.training.data import (
    DataSpec,
    TrainKeySampler,
    build_dataset,
    collate_eval,
    parse_data_spec,
    read_index,
    seed_worker,
)
from cosa_sdk.training.data.sampling import label_set_weights

from .builders import CLASSES, make_custom, write_image


@pytest.fixture
def custom(tmp_path: Path) -> Path:
    return make_custom(tmp_path / "ds")


def test_default_splits_every_labelled_image_trains_masked_images_evaluate(custom: Path) -> None:
    train = read_index(f"custom:{custom}", "train")  # the split names and classes: test_readers.py
    assert train.items[1].labels == (1, 2) and train.items[1].mask is None
    assert train.items[0].mask == custom / "masks" / "a.png"


def test_name_lists_define_held_out_splits(custom: Path) -> None:
    (custom / "val.txt").write_text("c\n")
    assert [it.name for it in read_index(f"custom:{custom}", "train").items] == ["a", "b", "d"]
    (custom / "train.txt").write_text("b.png\nd\n\n")
    assert [it.name for it in read_index(f"custom:{custom}", "train").items] == ["b", "d"]
    assert [it.name for it in read_index(f"custom:{custom}", "val").items] == ["c"]


def test_images_without_labels_are_left_out_of_training_and_counted(tmp_path: Path, caplog) -> None:
    root = make_custom(tmp_path / "ds", rows={"a": "cat", "b": "", "c": "bird"})
    with caplog.at_level(logging.WARNING):
        index = read_index(f"custom:{root}", "train")
    assert [it.name for it in index.items] == ["a", "c"]
    assert index.notes["unlabelled"] == 1
    assert "1 images have no labels" in caplog.text
    (root / "train.txt").write_text("a\nb\n")
    with pytest.raises(CosaDataError, match=r"train\.txt:2: 'b' has no labels \(labels\.csv line 3\)"):
        read_index(f"custom:{root}", "train")


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        ("e.png,cat,dog\n", r"labels\.csv:6: expected 2 fields"),
        ("a.png,dog\n", r"labels\.csv:6: duplicate row for 'a\.png' \(first at line 2\)"),
        ("e.png,cat horse\n", r"labels\.csv:6: unknown class 'horse'"),
        ("zz.jpg,cat\n", r"labels\.csv:6: image 'zz\.jpg' not found"),
        (",cat\n", r"labels\.csv:6: the image field is empty"),
    ],
)
def test_labels_csv_errors_name_file_and_line(tmp_path: Path, extra: str, pattern: str) -> None:
    root = make_custom(tmp_path / "ds", extra_lines=extra)
    write_image(root / "images" / "e.png", (40, 30), 9)
    with pytest.raises(CosaDataError, match=pattern):
        read_index(f"custom:{root}", "train")


def test_missing_files_and_folders_are_reported(custom: Path) -> None:
    (custom / "labels.csv").rename(custom / "labels.bak")
    with pytest.raises(CosaDataError, match=r"labels\.csv is missing: write a CSV with header `image,labels`"):
        read_index(f"custom:{custom}", "train")
    (custom / "labels.bak").rename(custom / "labels.csv")
    (custom / "classes.txt").unlink()
    with pytest.raises(CosaDataError, match=r"classes\.txt is missing"):
        read_index(f"custom:{custom}", "train")
    with pytest.raises(CosaDataError, match="does not exist"):
        read_index(f"custom:{custom / 'nope'}", "train")


def test_bad_header_classes_and_lists(custom: Path) -> None:
    text = (custom / "labels.csv").read_text()
    (custom / "labels.csv").write_text(text.replace("image,labels", "file,classes"))
    with pytest.raises(CosaDataError, match=r"labels\.csv:1: the header must be `image,labels`"):
        read_index(f"custom:{custom}", "train")
    (custom / "labels.csv").write_text(text)
    (custom / "classes.txt").write_text("cat\ndog\ncat\n")
    with pytest.raises(CosaDataError, match=r"classes\.txt:3: class 'cat' is listed twice \(first at line 1\)"):
        read_index(f"custom:{custom}", "train")
    (custom / "classes.txt").write_text("background\ncat\n")
    with pytest.raises(CosaDataError, match=r"classes\.txt:1: background is implicit"):
        read_index(f"custom:{custom}", "train")
    (custom / "classes.txt").write_text("\n".join(CLASSES))
    (custom / "train.txt").write_text("a\nzz\n")
    with pytest.raises(CosaDataError, match=r"train\.txt:2: image 'zz' not found"):
        read_index(f"custom:{custom}", "train")
    (custom / "train.txt").write_text("a\na\n")
    with pytest.raises(CosaDataError, match=r"train\.txt:2: 'a' is listed twice"):
        read_index(f"custom:{custom}", "train")
    (custom / "train.txt").unlink()
    (custom / "val.txt").write_text("a\nb\n")
    with pytest.raises(CosaDataError, match=r"val\.txt:2: 'b' has no mask"):
        read_index(f"custom:{custom}", "val")


def test_bad_masks_fail_with_the_mask_path(custom: Path) -> None:
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="L").save(custom / "masks" / "a.png")
    ds = build_dataset(f"custom:{custom}", "val")
    with pytest.raises(CosaDataError, match=r"a\.png: mask is 10x10 but its image is 40x30"):
        ds[0]
    Image.fromarray(np.full((30, 40), 7, np.uint8), mode="L").save(custom / "masks" / "a.png")
    with pytest.raises(CosaDataError, match=r"mask holds value 7 but the dataset has only 3 classes"):
        ds[0]
    Image.new("RGB", (40, 30)).save(custom / "masks" / "a.png")
    with pytest.raises(CosaDataError, match="mode 'RGB'; masks must be single-channel"):
        ds[0]


def _train(root: Path, **kwargs) -> torch.utils.data.Dataset:
    return build_dataset(f"custom:{root}", "train", crop_size=32, **kwargs)


def test_training_sample_layout(custom: Path) -> None:
    """The custom specifics; the layout every format shares (shapes, dtypes, padding) is in test_readers.py."""
    ds = _train(custom)
    assert ds.palette[1] == [128, 0, 0]  # VOC colours
    sample = ds[5]
    assert sample["name"] == "b" and sample["has_mask"] is False
    assert sample["labels"].tolist() == [0.0, 1.0, 1.0]
    masked = ds[0]
    y0, y1, x0, x1 = masked["box"].tolist()
    inside = masked["mask"][y0:y1, x0:x1]
    assert set(inside.unique().tolist()) <= {0, 1, 255} and (inside == 1).any()


def test_same_key_same_sample_across_instances_and_global_rng(custom: Path) -> None:
    first = _train(custom, seed=3)[6]
    np.random.seed(123)
    torch.manual_seed(123)
    again = _train(custom, seed=3)[6]
    for key in first:
        if isinstance(first[key], torch.Tensor):
            assert torch.equal(first[key], again[key]), key
        else:
            assert first[key] == again[key]
    other_seed = _train(custom, seed=4)[6]
    assert not torch.equal(first["weak"], other_seed["weak"])


def test_keys_pick_image_modulo_length_and_differ_in_augmentation(custom: Path) -> None:
    ds = _train(custom)
    samples = [ds[k] for k in (1, 5, 9)]
    assert {s["name"] for s in samples} == {"b"}
    assert not torch.equal(samples[0]["weak"], samples[1]["weak"])
    assert not torch.equal(samples[1]["weak"], samples[2]["weak"])
    with pytest.raises(CosaInputError, match="non-negative"):
        ds[-1]


def test_strong_view_differs_from_weak_for_most_keys(custom: Path) -> None:
    ds = _train(custom)
    differs = [not torch.equal(ds[k]["weak"], ds[k]["strong"]) for k in range(24)]
    assert 12 <= sum(differs) < 24  # identity is one of nine ops


def test_full_supervision_needs_every_mask(custom: Path) -> None:
    with pytest.raises(CosaDataError, match="supervision='full' needs a mask for every training image"):
        _train(custom, supervision="full")
    (custom / "train.txt").write_text("a\nc\n")
    assert len(_train(custom, supervision="full")) == 2


def test_eval_samples_and_collate(custom: Path) -> None:
    write_image(custom / "images" / "c.png", (24, 36), 5)
    mask = np.zeros((36, 24), np.uint8)
    mask[3:9, 3:9] = 3
    Image.fromarray(mask, mode="L").save(custom / "masks" / "c.png")
    ds = build_dataset(f"custom:{custom}", "val", eval_size=32)
    a, c = ds[0], ds[1]
    assert a["image"].shape == c["image"].shape == (3, 32, 32)
    assert a["mask"].shape == (30, 40) and c["mask"].shape == (36, 24) and c["mask"].dtype == torch.int64
    assert a["raw"].shape == (30, 40, 3) and a["raw"].dtype == torch.uint8
    assert a["labels"].tolist() == [1.0, 0.0, 0.0] and c["labels"].tolist() == [0.0, 0.0, 1.0]
    batch = collate_eval([a, c])
    assert batch["image"].shape == (2, 3, 32, 32) and batch["name"] == ["a", "c"]
    assert [m.shape for m in batch["mask"]] == [(30, 40), (36, 24)]
    native = build_dataset(f"custom:{custom}", "val")
    assert isinstance(collate_eval([native[0], native[1]])["image"], list)


def test_unreadable_images_are_skipped_replaced_and_reported(tmp_path: Path, caplog) -> None:
    root = tmp_path / "big"
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("cat\n")
    for i in range(120):
        write_image(root / "images" / f"im{i:03d}.png", (8, 8), i)
    data = (root / "images" / "im007.png").read_bytes()
    (root / "images" / "im007.png").write_bytes(data[: len(data) // 2])  # truncated
    rows = "\n".join(f"im{i:03d}.png,cat" for i in range(120))
    (root / "labels.csv").write_text("image,labels\n" + rows + "\n")
    ds = build_dataset(f"custom:{root}", "train", crop_size=8)
    with caplog.at_level(logging.WARNING):
        sample = ds[7]
    assert sample["name"] == "im008" and ds.bad_images == ["im007"]
    assert "im007.png" in caplog.text
    assert torch.equal(sample["weak"], build_dataset(f"custom:{root}", "train", crop_size=8)[7]["weak"])
    fresh = build_dataset(f"custom:{root}", "train", crop_size=8)
    assert fresh.check_images() == ["im007"] and fresh.bad_images == ["im007"]
    (root / "images" / "im050.png").write_bytes(b"not an image")
    with pytest.raises(CosaDataError, match=r"2 of 120 images .* cannot be read \(more than 1%"):
        build_dataset(f"custom:{root}", "train", crop_size=8).check_images()


def test_a_bad_image_in_a_small_set_raises(custom: Path) -> None:
    (custom / "images" / "b.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(CosaDataError, match=r"1 of 4 images .* cannot be read"):
        _train(custom)[1]


def test_dataloader_workers_reproduce_direct_access(custom: Path) -> None:
    ds = _train(custom)
    sampler = TrainKeySampler(len(ds), seed=0, num_keys=6)
    loader = DataLoader(ds, batch_size=3, sampler=sampler, num_workers=2, worker_init_fn=seed_worker)
    batches = list(loader)
    keys = list(sampler)
    direct = torch.stack([ds[k]["weak"] for k in keys])
    assert torch.equal(torch.cat([b["weak"] for b in batches]), direct)


def test_key_sampler_is_resumable_and_covers_each_epoch() -> None:
    sampler = TrainKeySampler(5, seed=1, num_keys=15)
    keys = list(sampler)
    assert len(keys) == len(set(keys)) == 15
    for epoch in range(3):
        assert sorted(k % 5 for k in keys[epoch * 5 : epoch * 5 + 5]) == list(range(5))
    assert list(TrainKeySampler(5, seed=1, start=7, num_keys=15)) == keys[7:]
    assert keys[9] == sampler.key(9)
    assert keys != list(TrainKeySampler(5, seed=2, num_keys=15))


def test_weighted_key_sampler_follows_weights_and_resumes() -> None:
    weights = np.array([0.7, 0.1, 0.1, 0.1, 0.0])
    sampler = TrainKeySampler(5, seed=3, num_keys=4000, weights=weights)
    keys = list(sampler)
    assert len(set(keys)) == len(keys), "keys must stay unique so every draw gets its own augmentation"
    counts = np.bincount([k % 5 for k in keys], minlength=5) / len(keys)
    np.testing.assert_allclose(counts, weights, atol=0.03)
    assert list(TrainKeySampler(5, seed=3, start=1234, num_keys=4000, weights=weights)) == keys[1234:]
    assert keys[:50] != list(TrainKeySampler(5, seed=4, num_keys=50, weights=weights))
    with pytest.raises(ValueError, match="non-negative"):
        TrainKeySampler(5, weights=np.array([1.0, -1.0, 0, 0, 0]))


def test_label_set_weights_favour_rare_label_sets() -> None:
    sets = [(0, 1)] * 8 + [(0,)] * 2 + [(1,), (1, 0)]  # (1, 0) is the same set as (0, 1)
    uniform = label_set_weights(sets, power=0.0)
    np.testing.assert_allclose(uniform, np.full(12, 1 / 12))
    flat = label_set_weights(sets, power=1.0)  # every distinct label set drawn equally often
    by_set = {}
    for labels, w in zip(sets, flat):
        by_set[tuple(sorted(labels))] = by_set.get(tuple(sorted(labels)), 0.0) + w
    np.testing.assert_allclose(sorted(by_set.values()), [1 / 3] * 3)
    half = label_set_weights(sets, power=0.5)
    assert half[10] > half[8] > half[0] and abs(half.sum() - 1) < 1e-12
    apart = sum(w for labels, w in zip(sets, half) if len(set(labels)) == 1)
    assert apart > 3 / 12, "sets where the pair appears apart must be drawn more often than their share"


def test_label_sets_come_from_labels_or_masks(custom: Path) -> None:
    ds = _train(custom)
    sets = ds.label_sets()
    assert len(sets) == len(ds)
    for key, labels in enumerate(sets):
        assert labels == tuple(int(c) for c in np.nonzero(ds[key]["labels"].numpy())[0])


def test_parse_data_spec_forms_and_errors(tmp_path: Path) -> None:
    assert parse_data_spec("voc:/data/VOC") == DataSpec("voc", Path("/data/VOC"))
    assert parse_data_spec("synthetic") == DataSpec("synthetic")
    spec = parse_data_spec("synthetic:n_train=8,n_val=4,size=96,seed=2")
    assert spec.params == {"n_train": 8, "n_val": 4, "size": 96, "seed": 2}
    assert str(spec) == "synthetic:n_train=8,n_val=4,seed=2,size=96"
    with pytest.raises(CosaConfigError, match="unknown dataset spec 'imagenet:/x'"):
        parse_data_spec("imagenet:/x")
    with pytest.raises(CosaConfigError, match="has no path: write coco:PATH"):
        parse_data_spec("coco:")
    with pytest.raises(CosaConfigError, match="write custom:"):
        parse_data_spec(str(tmp_path))
    with pytest.raises(CosaConfigError, match="bad synthetic parameter 'depth=3'"):
        parse_data_spec("synthetic:depth=3")
    with pytest.raises(CosaConfigError, match="must be an integer"):
        parse_data_spec("synthetic:size=big")


def test_build_dataset_option_errors(custom: Path) -> None:
    with pytest.raises(CosaConfigError, match="needs crop_size"):
        build_dataset(f"custom:{custom}", "train")
    with pytest.raises(CosaConfigError, match="splits train, val, not 'train_aug'"):
        build_dataset(f"custom:{custom}", "train_aug", crop_size=32)
    with pytest.raises(CosaConfigError, match="0-255 scale"):
        build_dataset(f"custom:{custom}", "train", crop_size=32, mean=(123.7, 116.3, 103.5))
    with pytest.raises(CosaConfigError, match="supervision must be 'weak' or 'full'"):
        build_dataset(f"custom:{custom}", "train", crop_size=32, supervision="semi")
    with pytest.raises(CosaDataError, match=r"2 evaluation images .* have no mask"):
        build_dataset(f"custom:{custom}", "train", mode="eval")
    (custom / "train.txt").write_text("a\nc\n")
    assert len(build_dataset(f"custom:{custom}", "train", mode="eval")) == 2

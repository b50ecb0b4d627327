"""The embedded synthetic benchmark: determinism, format, confounders, label statistics and caching."""

from __future__ import annotations

import json
import time
from collections import Counter
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from cosa_sdk.errors import CosaConfigError
from cosa_sdk.training.data import build_dataset, ensure_synthetic, generate_synthetic, read_index
from cosa_sdk.training.data.readers.synthetic import COMPLETE_MARKER, synthetic_name
from cosa_sdk.training.data.readers.synthetic_profiles import PROFILES
from cosa_sdk.training.data.readers.synthetic_render import (
    CLASS_NAMES,
    CONTEXT_CLASS,
    COOCCURRING_PAIR,
    render_image,
    sample_labels,
)

SMALL = {"n_train": 6, "n_val": 2, "size": 96, "seed": 0}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("synth") / "a", workers=1, **SMALL)


def _files(root: Path, pattern: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.glob(pattern))}


def test_generation_is_deterministic_for_a_seed(generated: Path, tmp_path: Path) -> None:
    again = generate_synthetic(tmp_path / "b", workers=1, **SMALL)
    assert _files(generated, "masks/*.png") == _files(again, "masks/*.png")
    for name in ("labels.csv", "train.txt", "val.txt", "classes.txt", "meta.json"):
        assert (generated / name).read_bytes() == (again / name).read_bytes()
    other = generate_synthetic(tmp_path / "c", workers=1, **{**SMALL, "seed": 1})
    assert _files(generated, "masks/*.png") != _files(other, "masks/*.png")


@pytest.mark.parametrize("version", [2, 4])
def test_process_pool_gives_the_same_files(tmp_path: Path, version: int) -> None:
    size = 48 if version == 2 else 0  # v4: each image draws its own size
    params = {"n_train": 64, "n_val": 1, "size": size, "seed": 2, "version": version}
    serial = generate_synthetic(tmp_path / "serial", workers=1, **params)
    pooled = generate_synthetic(tmp_path / "pooled", workers=2, **params)
    assert _files(serial, "masks/*.png") == _files(pooled, "masks/*.png")
    assert _files(serial, "*.csv") == _files(pooled, "*.csv")


def test_writes_the_custom_format_with_meta(generated: Path) -> None:
    assert (generated / COMPLETE_MARKER).is_file()
    assert (generated / "classes.txt").read_text().split() == list(CLASS_NAMES)
    assert len((generated / "train.txt").read_text().split()) == 6
    assert (generated / "val.txt").read_text().split() == ["val_00000", "val_00001"]
    meta = json.loads((generated / "meta.json").read_text())
    assert meta["params"] == {**SMALL, "version": 2} and meta["generator_version"] == 2
    assert meta["cooccurring_pair"] == list(COOCCURRING_PAIR) and meta["context_band_class"] == CONTEXT_CLASS
    rows = (generated / "labels.csv").read_text().splitlines()
    assert rows[0] == "image,labels" and len(rows) == 9
    for row in rows[1:]:
        stem, labels = row.split(",")
        names = labels.split()
        assert 1 <= len(names) <= 3 and set(names) <= set(CLASS_NAMES)
        image = Image.open(generated / "images" / stem)
        mask = np.asarray(Image.open(generated / "masks" / (Path(stem).stem + ".png")))
        assert image.format == "JPEG" and image.size == (96, 96) and mask.shape == (96, 96)
        present = {CLASS_NAMES[v - 1] for v in np.unique(mask) if 0 < v < 255}
        assert present == set(names), stem  # every labelled object stays visible, nothing unlabelled
        assert (mask == 255).any()


def test_loads_through_the_custom_loader(generated: Path) -> None:
    train = build_dataset(f"custom:{generated}", "train", crop_size=64)
    val = build_dataset(f"custom:{generated}", "val", eval_size=64)
    assert len(train) == 6 and len(val) == 2 and train.classes == list(CLASS_NAMES)
    sample = train[0]
    assert sample["has_mask"] is True and sample["weak"].shape == (3, 64, 64)
    assert val[0]["mask"].shape == (96, 96)


def test_boundary_band_is_about_two_pixels(generated: Path) -> None:
    mask = np.asarray(Image.open(generated / "masks" / "train_00000.png"))
    band = mask == 255
    eroded = ndimage.binary_erosion(band, structure=np.ones((3, 3)))
    assert band.any() and eroded.sum() < 0.2 * band.sum()  # thin: hardly any pixel survives erosion


def test_label_statistics_counts_and_cooccurrence() -> None:
    rng = np.random.default_rng(0)
    draws = [set(sample_labels(rng)) for _ in range(3000)]
    counts = Counter(len(d) for d in draws)
    assert set(counts) == {1, 2, 3}
    assert all(counts[k] > 300 for k in (1, 2, 3))
    a, b = (CLASS_NAMES.index(n) for n in COOCCURRING_PAIR)

    def together(x: int, y: int) -> float:
        either = [d for d in draws if x in d or y in d]
        return sum(x in d and y in d for d in either) / len(either)

    assert together(a, b) > 0.7
    others = [together(x, y) for x, y in combinations(range(len(CLASS_NAMES)), 2) if {x, y} != {a, b}]
    assert max(others) < 0.4
    per_class = Counter(c for d in draws for c in d)
    assert min(per_class.values()) > 0.5 * max(per_class.values())


@pytest.mark.parametrize("version", [2, 3])
def test_context_band_is_dark_and_background(version: int) -> None:
    profile = PROFILES[version]
    triangle = profile.classes.index(profile.context_class) + 1
    near, far, labelled_bg = [], [], []
    for index in range(40):
        image, mask, labels = render_image(np.random.default_rng([5, 0, index]), 160, profile)
        if triangle - 1 not in labels:
            continue
        dist = ndimage.distance_transform_edt(mask != triangle)
        gray = image.mean(axis=2)
        ring_near = (dist > 2) & (dist <= 4) & (mask == 0)
        ring_far = (dist > 14) & (dist <= 18) & (mask == 0)
        if ring_near.sum() > 20 and ring_far.sum() > 20:
            near.append(gray[ring_near].mean())
            far.append(gray[ring_far].mean())
            ring = (dist > 3) & (dist <= 6)  # outside the 255 boundary band
            labelled_bg.append((mask[ring] == 0).mean())
    assert len(near) >= 5
    assert np.median(np.array(near) / np.array(far)) < 0.6
    assert np.median(labelled_bg) > 0.7


def test_distractors_and_part_textures_are_background_or_on_objects() -> None:
    image, mask, labels = render_image(np.random.default_rng([0, 0, 3]), 128)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255} | {c + 1 for c in labels}


def test_cache_generates_once_with_marker_and_parameters_in_the_name(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COSA_CACHE_DIR", str(tmp_path / "cache"))
    spec = "synthetic:n_train=4,n_val=2,size=64,seed=3"
    index = read_index(spec, "train")
    root = tmp_path / "cache" / synthetic_name({"n_train": 4, "n_val": 2, "size": 64, "seed": 3})
    assert index.items[0].image.parent == root / "images" and (root / COMPLETE_MARKER).is_file()
    assert synthetic_name({"seed": 3}) != synthetic_name({"seed": 4})
    stamp = (root / "labels.csv").stat().st_mtime_ns
    assert ensure_synthetic({"n_train": 4, "n_val": 2, "size": 64, "seed": 3}) == root
    assert (root / "labels.csv").stat().st_mtime_ns == stamp
    (root / COMPLETE_MARKER).unlink()  # a tree without its marker is never trusted
    assert ensure_synthetic({"n_train": 4, "n_val": 2, "size": 64, "seed": 3}) == root
    assert (root / COMPLETE_MARKER).is_file()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [root.name]  # no temp folders left


def test_generation_option_errors(generated: Path) -> None:
    with pytest.raises(CosaConfigError, match="is not empty"):
        generate_synthetic(generated, **SMALL)
    with pytest.raises(CosaConfigError, match="n_train >= 1"):
        generate_synthetic(generated.parent / "x", n_train=0, n_val=1, size=64, seed=0)
    with pytest.raises(CosaConfigError, match="at least 32 pixels"):
        ensure_synthetic({"size": 8})


@pytest.mark.slow
def test_default_benchmark_generates_in_seconds(tmp_path: Path) -> None:
    start = time.perf_counter()
    root = generate_synthetic(tmp_path / "default")
    elapsed = time.perf_counter() - start
    assert len(list((root / "images").glob("*.jpg"))) == 1000
    assert elapsed < 90, f"default synthetic generation took {elapsed:.1f} s"
    masks = [np.asarray(Image.open(p)) for p in sorted((root / "masks").glob("val_*.png"))]
    foreground = np.mean([((m > 0) & (m < 255)).mean() for m in masks])
    assert 0.08 < foreground < 0.35

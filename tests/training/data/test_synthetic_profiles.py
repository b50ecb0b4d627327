"""The synthetic benchmark versions (synthetic_profiles.PROFILES): v1 and v2 reproduce their generators byte
for byte, and every version draws what its profile says (image sizes, object extents, instances, labels)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from cosa_sdk.errors import CosaConfigError
from cosa_sdk.training.data import build_dataset, ensure_synthetic, generate_synthetic, parse_data_spec
from cosa_sdk.training.data.readers.synthetic import synthetic_name
from cosa_sdk.training.data.readers.synthetic_profiles import PROFILES, SHAPES
from cosa_sdk.training.data.readers.synthetic_render import render_scene, sample_labels

from .conformance import ReaderConformance

# sha256 of every file of `synthetic:n_train=6,n_val=3,size=96,seed=0`, written by the generator before
# benchmark profiles existed (meta.json left out: it gained keys, checked below). JPEG bytes also depend
# on Pillow's libjpeg; if only the .jpg hashes change after a Pillow upgrade, compare decoded pixels.
V2_FILES = {
    "classes.txt": "addb6cbd22affaa7dd04d5cdb80c69bf4fc4636c9cb39b795b5ee6d18ba643ee",
    "images/train_00000.jpg": "b455e697f193c74159a8042eaad531d83bf4b056cdfb12f36e780c2cffc8591d",
    "images/train_00001.jpg": "1b70a3e988cf3cfea2417517f0a30533328a4d5aeb9b7f234b969d2585137b64",
    "images/train_00002.jpg": "003121ab2fda224ac18fd6f5361aa2c3660948ea02a11f18ef78449bc059f656",
    "images/train_00003.jpg": "3439014cf8d45a896c4671f894fd154dc7caae831ee50b8dc8442832dc7852a8",
    "images/train_00004.jpg": "eb5608a1c9890b5e0395cfe98f36282dcb56fe9c36e7afbe284575296696bb33",
    "images/train_00005.jpg": "fe3dafaa6fdcbc5e324da8aeac60ad7a0e306b71ecabfb458764414a7e111353",
    "images/val_00000.jpg": "fbca9e27fd695a881810b781f0f396929928fca14b040d1ef0a523b1127db1ad",
    "images/val_00001.jpg": "c6cd96e6a03c843ff939b17e1e7c6f232f713268bacdec68cb5b59a8bc86efec",
    "images/val_00002.jpg": "6832291d4f559f1a46222772c44e57e6c1aee8284496ffc3ed86be127c8fbd69",
    "labels.csv": "df2060f193697a1eecd48a4d95e9958cf972067646deeac4b60a7fea29c6dec7",
    "masks/train_00000.png": "f8a922b0aae95d6f6834893a5667aa7c3b953cae5975a5deddf9ec4be0a25088",
    "masks/train_00001.png": "31d9955d8fc045e9769304a8a0121012a31a1722d2e25d4f864592ea2c509c87",
    "masks/train_00002.png": "1805180f2ea353864f8ceb2e26d3725d0580e8915fd9fa3309827e165e4223cd",
    "masks/train_00003.png": "ac074f87ec625f29f2a90a36461d6568d036f09fa08ad0c7a3a644e77b2cbcf6",
    "masks/train_00004.png": "1a7b08dafa5827ed99a2efcf2e61e326bc75d79d48f79c873d289b1754490304",
    "masks/train_00005.png": "a2e2c577672f43777eb386d9815914899ec97b0727c4b66178e50e19f9dacc83",
    "masks/val_00000.png": "b75e47def9e3cdc8876b7f5a60a70c832fd691d7cd7f08a004c77f4798354a96",
    "masks/val_00001.png": "cede92568945394f685a84bbd3d4f58c1d7cbd41fa4dc1575bc007a99453e210",
    "masks/val_00002.png": "20d65dc8b1d384c35f106518463f3f2975352eb5b873fe16e436c4e6a4f94049",
    "train.txt": "c14c397fec9f891f6847f979dc462ce33f719a889ba37f26b8426f10320cdb9e",
    "val.txt": "ac28f76d68315a1fa742a0e92b430af177975693f6ea7652e1318b5571ca107f",
}
V2_META = {
    "generator": "cosa-sdk synthetic",
    "generator_version": 2,
    "classes": ["disk", "star", "ring", "cross", "crescent", "triangle"],
    "cooccurring_pair": ["crescent", "star"],
    "context_band_class": "triangle",
}
# The same for `synthetic:version=1,n_train=4,n_val=2,size=96,seed=0`, written by the generator of commit
# 5896c5d (GENERATOR_VERSION 1, before benchmark v2).
V1_FILES = {
    "classes.txt": "addb6cbd22affaa7dd04d5cdb80c69bf4fc4636c9cb39b795b5ee6d18ba643ee",
    "images/train_00000.jpg": "059f4b42413028c79e7a154b9483b1b2df8f5281f2b58cc38515e0db25c205d2",
    "images/train_00001.jpg": "4801c81f64b3e6dbdebff5e6abb5f1ef394a455b536e3061fe2f0267f7b0cfd0",
    "images/train_00002.jpg": "3334042112257dd615794a898898ea771ca58077451f95b3a854e6dc44d0c4e5",
    "images/train_00003.jpg": "a56039963e76ef513f5030ba4471cfea662cebcf4492313d6d82a89bdb9db6df",
    "images/val_00000.jpg": "feccc4d03320f5d33de084ebbdf2b20c68676cafb7d99a8b11bd22ae8fdbfa02",
    "images/val_00001.jpg": "6bfcdd0a06bbe5ec6bc6b88b54bb700de76b6b64af21aa261a429ecd3cd7ae23",
    "labels.csv": "62ba565e64f893b12e0206013a5eece04f02bc938ffba74cc11d306c09026492",
    "masks/train_00000.png": "d10f717bf106ba5a416ad185e9b4d9b9c1323d60c5acd7cd7a7b94bc9b3b0515",
    "masks/train_00001.png": "2325d3ca7e8c145b369d263114f46f8c16ac5eafdb1aafcf84d3d4bca1dd12e4",
    "masks/train_00002.png": "0c162598a653949cbc0b74758a56070aeeb9889b5d0e555eaca6bd08d6737616",
    "masks/train_00003.png": "1ddadfd884acde0691069259772dbcc8b8e5b5f62405835faf5c05d280a5f1e7",
    "masks/val_00000.png": "5a473492ec5c862c2367dd59a15bed131e310006c3bd71748f6df5cb2d64d697",
    "masks/val_00001.png": "46989990aae19db909b8c2ad7f701d14c138da27eeafe8934cf837dbad9e04b7",
    "train.txt": "a37c1bb5a888ee8275aff9d00656bad761fd9cc01a6ecf5efa0682563755d99a",
    "val.txt": "9065acead72ee09f99cfda2617cec1445ecd50bdc59366d2bca2f1f625199ec2",
}


def _hashes(root: Path) -> dict[str, str]:
    files = (p for p in sorted(root.rglob("*")) if p.is_file() and p.name not in ("meta.json", ".complete"))
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_benchmark_v2_is_byte_identical_to_the_generator_before_profiles(tmp_path: Path) -> None:
    root = ensure_synthetic({"n_train": 6, "n_val": 3, "size": 96, "seed": 0}, root=tmp_path)
    assert root.name == "synthetic-v2-train6-val3-size96-seed0"  # the cache name it always had
    assert _hashes(root) == V2_FILES
    meta = json.loads((root / "meta.json").read_text())
    assert {key: meta[key] for key in V2_META} == V2_META  # the old keys keep their values; others are added
    assert meta["params"] == {"n_train": 6, "n_val": 3, "size": 96, "seed": 0, "version": 2}


def test_benchmark_v1_is_byte_identical_to_the_first_generator(tmp_path: Path) -> None:
    root = generate_synthetic(tmp_path / "v1", n_train=4, n_val=2, size=96, seed=0, version=1, workers=1)
    assert _hashes(root) == V1_FILES


def test_default_spec_and_cache_names_are_unchanged() -> None:
    assert synthetic_name({}) == "synthetic-v2-train800-val200-size224-seed0"
    assert synthetic_name({"size": 224, "version": 2}) == synthetic_name({})
    names = {synthetic_name({"version": v}) for v in PROFILES}
    assert names == {
        "synthetic-v1-train800-val200-size224-seed0",
        "synthetic-v2-train800-val200-size224-seed0",
        "synthetic-v3-train800-val200-size128-seed0",
        "synthetic-v4-train800-val200-size96to512-seed0",
    }


def _largest_extents(mask: np.ndarray) -> dict[int, float]:
    """0-based class -> extent of its largest visible piece (bounding box side + the 1-px boundary band on
    each side) as a fraction of the shorter image side."""
    out = {}
    for value in np.unique(mask):
        if 0 < value < 255:
            pieces, _ = ndimage.label(mask == value, structure=np.ones((3, 3)))
            sides = [max(s.stop - s.start for s in box) for box in ndimage.find_objects(pieces)]
            out[int(value) - 1] = (max(sides) + 2) / min(mask.shape)
    return out


@pytest.mark.parametrize("version", sorted(PROFILES))
def test_each_version_draws_what_its_profile_says(version: int) -> None:
    profile = PROFILES[version]
    sides, largest, drawn, instances = [], [], [], Counter()
    for index in range(20):
        rng = np.random.default_rng([11, 1, index])
        shape = profile.image_shape(rng, 0)
        scene = render_scene(rng, shape, profile)
        assert scene.image.shape == (*shape, 3) and scene.mask.shape == shape
        sides += list(shape)
        present = {int(v) - 1 for v in np.unique(scene.mask) if 0 < v < 255}
        assert scene.labels == sorted(present) and scene.labels, index  # labels agree with the mask
        per_class = Counter(cls for cls, _ in scene.objects)
        assert set(per_class) >= set(scene.labels)
        assert max(per_class.values()) <= len(profile.instance_probs)
        instances.update(per_class.values())
        top = profile.object_top[min(len(scene.objects), len(profile.object_top)) - 1]
        for _, extent in scene.objects:  # placement may shrink an object 3 times by 0.85 to fit it in
            assert profile.object_min * 0.85**3 - 1e-9 <= extent <= top + 1e-9
        drawn += [extent for _, extent in scene.objects]
        single = [c for c, n in per_class.items() if n == 1]  # two instances of a class may touch in the mask
        largest += [e for c, e in _largest_extents(scene.mask).items() if c in single]
    lo, hi = profile.sides if profile.size == 0 else (profile.size, profile.size)
    assert lo <= min(sides) and max(sides) <= hi
    if profile.size == 0:
        assert max(sides) - min(sides) > (hi - lo) / 3 and len(set(sides)) > 10  # sizes vary, not square
    # measured on the masks: a shape fills up to 1.05 of its circle, stretched up to 1.15 by its aspect
    assert max(largest) <= max(profile.object_top) * 1.25
    assert profile.object_min <= np.median(largest) <= max(profile.object_top)
    assert profile.object_min <= np.median(drawn)
    assert set(instances) == set(range(1, len(profile.instance_probs) + 1))  # 2 instances happen where allowed


def test_profiles_differ_where_the_issue_asks() -> None:
    v2, v3, v4 = PROFILES[2], PROFILES[3], PROFILES[4]
    assert not set(v3.classes) & set(v2.classes) and v3.size == 128  # unseen shapes, small images
    assert (v3.object_min, max(v3.object_top)) == (0.15, 0.55) and len(v3.instance_probs) == 2
    assert v4.size == 0 and v4.sides == (96, 512) and v4.object_min == 0.1 and max(v4.object_top) == 0.7
    assert all(set(p.classes) <= set(SHAPES) for p in PROFILES.values())
    with pytest.raises(ValueError, match="pair and the context class"):
        dataclasses.replace(v2, context_class="hexagon")


def test_the_cooccurring_pair_of_v3_is_mostly_together() -> None:
    profile = PROFILES[3]
    rng = np.random.default_rng(0)
    draws = [set(sample_labels(rng, profile)) for _ in range(2000)]
    a, b = (profile.classes.index(name) for name in profile.cooccurring_pair)
    either = [d for d in draws if a in d or b in d]
    assert sum(a in d and b in d for d in either) / len(either) > 0.7
    assert Counter(len(d) for d in draws).keys() == {1, 2, 3}


@pytest.mark.parametrize("version", [3, 4])
def test_version_in_meta_classes_and_cache_path(tmp_path: Path, version: int) -> None:
    profile = PROFILES[version]
    root = ensure_synthetic({"n_train": 3, "n_val": 2, "version": version}, root=tmp_path)
    assert root.name.startswith(f"synthetic-v{version}-") and root.parent == tmp_path
    assert (root / "classes.txt").read_text().split() == list(profile.classes)
    meta = json.loads((root / "meta.json").read_text())
    assert meta["generator_version"] == meta["params"]["version"] == meta["benchmark"]["version"] == version
    assert meta["classes"] == list(profile.classes) and meta["cooccurring_pair"] == list(profile.cooccurring_pair)
    assert meta["benchmark"]["object_extent"] == [profile.object_min, max(profile.object_top)]
    for row in (root / "labels.csv").read_text().splitlines()[1:]:
        stem, labels = row.split(",")
        with Image.open(root / "images" / stem) as image:
            width, height = image.size
        mask = np.asarray(Image.open(root / "masks" / f"{Path(stem).stem}.png"))
        assert mask.shape == (height, width)
        assert {profile.classes[v - 1] for v in np.unique(mask) if 0 < v < 255} == set(labels.split())
    assert ensure_synthetic({"n_train": 3, "n_val": 2, "version": version}, root=tmp_path) == root


def test_size_overrides_the_profiles_image_size(tmp_path: Path) -> None:
    root = generate_synthetic(tmp_path / "v4", n_train=2, n_val=1, size=80, version=4, workers=1)
    assert {Image.open(p).size for p in (root / "images").iterdir()} == {(80, 80)}
    assert "size80" in synthetic_name({"size": 80, "version": 4})


def test_an_unknown_version_names_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(CosaConfigError, match=r"synthetic version 7 does not exist; valid versions: 1, 2, 3, 4"):
        ensure_synthetic({"version": 7}, root=tmp_path)
    with pytest.raises(CosaConfigError, match="valid versions: 1, 2, 3, 4"):
        parse_data_spec("synthetic:version=0")
    with pytest.raises(CosaConfigError, match="valid versions"):
        generate_synthetic(tmp_path / "x", n_train=1, n_val=1, version=5)
    assert list(tmp_path.iterdir()) == []


def test_varied_sizes_load_for_training_and_evaluation(tmp_path: Path) -> None:
    spec = "synthetic:n_train=3,n_val=3,seed=1,version=4"
    train = build_dataset(spec, "train", crop_size=48, cache_root=tmp_path)
    val = build_dataset(spec, "val", eval_size=48, cache_root=tmp_path)
    assert train[0]["weak"].shape == (3, 48, 48)
    shapes = {tuple(val[i]["mask"].shape) for i in range(3)}
    assert all(val[i]["image"].shape == (3, 48, 48) for i in range(3)) and len(shapes) == 3


def test_training_can_rescale_from_the_eval_square(tmp_path: Path) -> None:
    """128-px images fill a 200-px crop when rescaled from the eval square, as they are at inference; rescaled
    from their own size they fill 128 of its 200 pixels and the rest is padding."""
    spec = "synthetic:n_train=2,n_val=1,seed=1,version=3"
    kwargs = {"crop_size": 200, "rescale_range": (1.0, 1.0), "cache_root": tmp_path}
    own = build_dataset(spec, "train", **kwargs)
    square = build_dataset(spec, "train", base_size=200, **kwargs)
    for i in range(2):
        assert square[i]["box"].tolist() == [0, 200, 0, 200]
        y0, y1, x0, x1 = own[i]["box"].tolist()
        assert (y1 - y0, x1 - x0) == (128, 128)
    with pytest.raises(CosaConfigError, match="base_size must be a positive integer"):
        build_dataset(spec, "train", base_size=0, **kwargs)


class TestSyntheticV3Reader(ReaderConformance):
    """Benchmark v3 through every reader check: other classes, several instances per class."""

    kind = "synthetic"
    classes: ClassVar[list[str]] = list(PROFILES[3].classes)
    splits: ClassVar[dict[str, list[str]]] = {
        "train": ["train_00000", "train_00001", "train_00002"],
        "val": ["val_00000"],
    }
    crop_size = 32
    eval_size = 32
    test_missing_folder_is_named = None

    def make(self, root: Path) -> str:
        return "synthetic:n_train=3,n_val=1,seed=2,version=3"

    def options(self, root: Path) -> dict[str, Any]:
        return {"cache_root": root}


class TestSyntheticV4Reader(TestSyntheticV3Reader):
    """Benchmark v4 through every reader check: images of other sizes, not square."""

    classes: ClassVar[list[str]] = list(PROFILES[4].classes)

    def make(self, root: Path) -> str:
        return "synthetic:n_train=3,n_val=1,seed=2,version=4"

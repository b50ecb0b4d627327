"""Resolution from the data: small objects raise the side (within the compute budget), large ones keep it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cosa_sdk.errors import CosaConfigError
from cosa_sdk.training.config import preset
from cosa_sdk.training.data import read_index
from cosa_sdk.training.data.resolution import (
    COMPUTE_BUDGET,
    ObjectSizes,
    choose_resolution,
    measure_objects,
    resolve_resolution,
)

pytestmark = pytest.mark.usefixtures("cosa_cache")


def squares_dataset(root: Path, *, image_side: int, square: int, count: int = 6) -> str:
    """A custom dataset whose every image holds one `square`-pixel square of class "box"."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("box\n")
    rows = ["image,labels"]
    for i in range(count):
        image = np.full((image_side, image_side, 3), 90, np.uint8)
        mask = np.zeros((image_side, image_side), np.uint8)
        y = x = 2 + i
        image[y : y + square, x : x + square] = (200, 40, 40)
        mask[y : y + square, x : x + square] = 1
        Image.fromarray(image).save(root / "images" / f"im{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"im{i}.png")
        rows.append(f"im{i}.png,box")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / "train.txt").write_text("\n".join(f"im{i}" for i in range(count - 2)) + "\n")
    (root / "val.txt").write_text("\n".join(f"im{i}" for i in range(count - 2, count)) + "\n")
    return f"custom:{root}"


def test_object_extents_are_measured_from_the_masks(tmp_path: Path) -> None:
    spec = squares_dataset(tmp_path / "d", image_side=128, square=32)
    sizes = measure_objects([read_index(spec, "train"), read_index(spec, "val")])
    assert sizes.median_side == 128 and len(sizes.object_extents) == 6
    assert sizes.small_object() == pytest.approx(32 / 128, abs=0.01)


@pytest.mark.parametrize(
    ("extent", "expected"),
    [
        (0.5, 168),  # large objects: the preset's side already resolves them
        (0.2, 182),  # 2.5 cells of 14 px need 175 px, up to a multiple of 14
        (0.1, 224),  # would need 350 px: capped at sqrt(2) x 168 -> 224 (a multiple of 14)
    ],
)
def test_the_side_follows_the_small_objects_within_the_budget(extent: float, expected: int) -> None:
    sizes = ObjectSizes(image_sides=(128,) * 5, object_extents=(extent,) * 20)
    choice = choose_resolution(sizes, preset_side=168, stride=14)
    assert choice.crop_size == choice.eval_size == expected and expected % 14 == 0
    assert (expected / 168) ** 2 <= COMPUTE_BUDGET
    assert "median image side 128 px" in choice.reason


def test_without_masks_the_preset_side_stays() -> None:
    choice = choose_resolution(ObjectSizes((300, 500), ()), preset_side=168, stride=14)
    assert choice.crop_size == 168 and "no masks" in choice.reason


def test_auto_resolution_resizes_the_run_and_preset_leaves_it(tmp_path: Path) -> None:
    spec = squares_dataset(tmp_path / "d", image_side=128, square=20)
    config = dataclasses.replace(preset("tiny"), resolution="auto")
    sized, note = resolve_resolution(config, spec)
    assert sized.crop_size == sized.eval_size == 224 and note.startswith("resolution: crop 224, eval 224")
    assert note.endswith("; crops cut from images resized to 224 px")  # tiny rescales from the eval square
    _, released = resolve_resolution(dataclasses.replace(config, rescale_base="image"), spec)
    assert "resized to" not in released
    unchanged, none = resolve_resolution(dataclasses.replace(config, resolution="preset"), spec)
    assert unchanged.crop_size == 168 and unchanged.eval_size is None and none is None
    with pytest.raises(CosaConfigError, match="resolution must be one of preset, auto"):
        resolve_resolution(dataclasses.replace(config, resolution="big"), spec)


def test_the_trainer_records_the_chosen_side_and_resumes_with_it(tmp_path: Path) -> None:
    from tiny_training import tiny_config

    from cosa_sdk.training.engine.trainer import Trainer

    spec = squares_dataset(tmp_path / "d", image_side=64, square=8, count=8)
    config = tiny_config(resolution="auto", iters=3)
    trainer = Trainer(config, run_dir=tmp_path / "run", data_spec=spec)
    assert trainer.config.crop_size == 80 and trainer.run.eval_size == 80  # 64 * sqrt(2), down to 16 px
    assert trainer.resolution_note.startswith("resolution: crop 80, eval 80")
    trainer.fit(stop_after=1)
    resumed = Trainer(config, run_dir=tmp_path / "run", data_spec=spec, resume=True)
    assert resumed.step == 1 and resumed.config.crop_size == 80


def test_a_resumed_capped_run_keeps_its_side_instead_of_choosing_again(tmp_path: Path) -> None:
    """`cosa train --resume` starts from the run's own config: choosing again from the capped 80 px would
    grow it to 112 px and refuse the run's own checkpoint."""
    from tiny_training import tiny_config

    from cosa_sdk.training.config import TrainConfig
    from cosa_sdk.training.engine.run_dir import saved_run
    from cosa_sdk.training.engine.trainer import Trainer

    spec = squares_dataset(tmp_path / "d", image_side=64, square=8, count=8)
    Trainer(tiny_config(resolution="auto", iters=3), run_dir=tmp_path / "run", data_spec=spec).fit(stop_after=1)
    saved = TrainConfig.from_dict(saved_run(tmp_path / "run")["config"])
    assert saved.resolution == "auto" and saved.crop_size == saved.eval_size == 80
    resumed = Trainer(saved, run_dir=tmp_path / "run", data_spec=spec, resume=True)
    assert resumed.step == 1 and resumed.config.crop_size == resumed.config.eval_size == 80
    assert "kept: eval_size is set" in resumed.resolution_note


def test_a_given_eval_size_is_kept_under_auto(tmp_path: Path) -> None:
    spec = squares_dataset(tmp_path / "d", image_side=128, square=24)
    config = dataclasses.replace(preset("tiny"), resolution="auto", eval_size=196)
    kept, note = resolve_resolution(config, spec)
    assert (kept.crop_size, kept.eval_size) == (168, 196) and "eval_size is set" in note

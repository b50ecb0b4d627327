"""Image-level class scores beside the logits, and `drop_absent`: the numpy step, the Segmenter, the backends,
the bundle's default, one-output bundles from before class scores, and `cosa segment`."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from toy_bundle import cached_toy_bundle

import cosa_sdk
from cosa_sdk.backends.base import Backend
from cosa_sdk.bundle import read_bundle
from cosa_sdk.cli import build_parser
from cosa_sdk.errors import CosaConfigError, CosaInputError, CosaModelError
from cosa_sdk.preprocess import drop_absent_classes, logits_to_mask, sigmoid
from cosa_sdk.segment_cli import segment_command
from cosa_sdk.segmenter import Segmenter

from .scenes import blocks, need_network, noise

SIZE = 64


def red_only(height: int = 50, width: int = 60) -> np.ndarray:
    """A gray image with one red square: red is in it, green is not."""
    image = np.full((height, width, 3), 128, dtype=np.uint8)
    image[10:30, 10:30] = (230, 20, 20)
    return image


def faint_red(height: int = 48, width: int = 64) -> np.ndarray:
    """Gray with a faint red square: the colour model gives it red pixels, its class score calls red absent."""
    image = np.full((height, width, 3), 128, dtype=np.uint8)
    image[8:40, 8:40] = (170, 100, 100)
    return image


def quadrant_logits() -> np.ndarray:
    """(3, 64, 64): background 0; red +2 on the left half; green +3 on the top half; -1 elsewhere."""
    logits = np.full((3, SIZE, SIZE), -1.0, dtype=np.float32)
    logits[0] = 0.0
    logits[1, :, : SIZE // 2] = 2.0
    logits[2, : SIZE // 2] = 3.0
    return logits


class FakeBackend(Backend):
    """Fixed logits per image; class logits `first` for the first half of a batch, `second` for the rest
    (a TTA batch is [images, flipped images])."""

    def __init__(self, logits: np.ndarray, first: list[float] | None, second: list[float] | None = None) -> None:
        self.name = "fake"
        self.fixed_size = (SIZE, SIZE)
        self.logits = logits
        self.first, self.second = first, second if second is not None else first
        self.has_class_scores = first is not None

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.repeat(self.logits[None], len(batch), axis=0)

    def run_with_scores(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.first is None:
            return self.run(batch), None
        half = len(batch) // 2 if len(batch) > 1 else 1
        rows = [self.first] * half + [self.second] * (len(batch) - half)
        return self.run(batch), np.asarray(rows, dtype=np.float32)


def fake_segmenter(first: list[float] | None, second: list[float] | None = None, **bundle: object) -> Segmenter:
    return Segmenter(
        read_bundle(cached_toy_bundle(class_scores=True, **bundle)), FakeBackend(quadrant_logits(), first, second)
    )


@pytest.fixture(scope="module")
def scored() -> cosa_sdk.Segmenter:
    return cosa_sdk.load(cached_toy_bundle(class_scores=True), backend="onnxruntime")


@pytest.fixture(scope="module")
def old() -> cosa_sdk.Segmenter:
    """A one-output bundle, as exported before class scores."""
    return cosa_sdk.load(cached_toy_bundle(), backend="onnxruntime")


# -- the numpy step ---------------------------------------------------------------------------------
def test_drop_absent_masks_exactly_the_absent_classes() -> None:
    logits = quadrant_logits()
    dropped = drop_absent_classes(logits, np.array([0.9, 0.1], dtype=np.float32))
    np.testing.assert_array_equal(dropped[:2], logits[:2])  # background and the present class untouched
    assert np.isneginf(dropped[2]).all()
    np.testing.assert_array_equal(logits, quadrant_logits())  # the input is not modified
    mask = dropped.argmax(0)
    assert (mask[:, : SIZE // 2] == 1).all() and (mask[:, SIZE // 2 :] == 0).all()
    kept = drop_absent_classes(logits, np.array([0.5, 0.5]))  # at the threshold a class is present
    np.testing.assert_array_equal(kept, logits)


def test_every_class_absent_gives_background() -> None:
    dropped = drop_absent_classes(quadrant_logits(), np.array([0.2, 0.49]))
    assert (dropped.argmax(0) == 0).all() and np.isfinite(dropped[0]).all()


def test_drop_absent_on_a_batch_and_a_threshold() -> None:
    batch = np.stack([quadrant_logits(), quadrant_logits()])
    probs = np.array([[0.9, 0.1], [0.3, 0.7]])
    dropped = drop_absent_classes(batch, probs, threshold=0.8)
    assert np.isneginf(dropped[0, 2]).all() and np.isfinite(dropped[0, 1]).all()
    assert np.isneginf(dropped[1, 1:]).all()
    for i in range(2):
        np.testing.assert_array_equal(dropped[i], drop_absent_classes(batch[i], probs[i], threshold=0.8))


def test_drop_absent_refuses_mismatched_shapes() -> None:
    with pytest.raises(CosaInputError, match="K-1"):
        drop_absent_classes(quadrant_logits(), np.array([0.9, 0.1, 0.5]))
    with pytest.raises(CosaInputError, match="K-1"):
        drop_absent_classes(np.stack([quadrant_logits()] * 2), np.array([0.9, 0.1]))


def test_sigmoid_is_stable() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probs = sigmoid(np.array([-1000.0, -1.0, 0.0, 1.0, 1000.0]))
    np.testing.assert_allclose(probs, [0.0, 1 / (1 + np.e), 0.5, 1 / (1 + np.exp(-1)), 1.0], atol=1e-7)


def test_logits_to_mask_drops_after_the_resize() -> None:
    """Dropping before a bilinear resize would turn -inf into NaN; logits_to_mask drops band by band after it."""
    logits, probs = quadrant_logits(), np.array([0.9, 0.1])
    mask, scores = logits_to_mask(logits, (97, 131), with_scores=True, class_probs=probs)
    plain, _ = logits_to_mask(logits, (97, 131))
    assert scores is not None and np.isfinite(scores).all()
    assert (scores[2] == 0).all() and not (mask == 2).any() and (plain == 2).any()
    np.testing.assert_array_equal(scores.argmax(0), mask)
    np.testing.assert_allclose(scores.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(mask[plain != 2], plain[plain != 2])  # only the absent class's pixels change


# -- the Segmenter ------------------------------------------------------------------------------------
def test_segmenter_drops_absent_classes_with_hand_made_scores() -> None:
    seg = fake_segmenter([1.0, -1.0])  # red present, green absent
    image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    kept = seg.segment(image).mask
    dropped = seg.segment(image, drop_absent=True).mask
    top, left = slice(0, SIZE // 2), slice(0, SIZE // 2)
    right, bottom = slice(SIZE // 2, SIZE), slice(SIZE // 2, SIZE)
    assert (kept[top] == 2).all() and (kept[bottom, left] == 1).all() and (kept[bottom, right] == 0).all()
    assert (dropped[:, left] == 1).all() and (dropped[:, right] == 0).all()
    everything_absent = fake_segmenter([-1.0, -2.0]).segment(image, drop_absent=True)
    assert (everything_absent.mask == 0).all()
    assert everything_absent.class_scores == pytest.approx({"red": float(sigmoid(-1.0)), "green": float(sigmoid(-2.0))})


def test_tta_averages_the_sigmoids_of_the_passes() -> None:
    seg = fake_segmenter([2.0, 0.5], [-1.0, -1.5])  # the flipped pass disagrees
    result = seg.segment(np.zeros((SIZE, SIZE, 3), dtype=np.uint8), tta=True, drop_absent=True)
    expected = (sigmoid(np.array([2.0, 0.5])) + sigmoid(np.array([-1.0, -1.5]))) / 2
    assert list(result.class_scores) == ["red", "green"]
    np.testing.assert_allclose(list(result.class_scores.values()), expected, rtol=1e-6)
    assert not (result.mask == 2).any()  # green averages 0.40: dropped; red (0.57) stays
    assert (result.mask[:, : SIZE // 2] == 1).all()


def test_onnxruntime_gives_the_graph_class_scores(scored: cosa_sdk.Segmenter) -> None:
    result = scored.segment(red_only())
    assert scored.has_class_scores and scored.info()["has_class_scores"] is True
    assert set(result.class_scores) == {"red", "green"}
    assert result.class_scores["red"] > 0.5 > result.class_scores["green"]
    assert result.to_dict()["class_scores"] == {k: round(v, 6) for k, v in result.class_scores.items()}
    json.dumps(result.to_dict())
    batch = scored.segment([red_only(), blocks(40, 60)], batch_size=2)
    assert batch[0].class_scores == pytest.approx(result.class_scores, abs=1e-6)
    assert min(batch[1].class_scores.values()) > 0.5  # red and green blocks: both present


def test_drop_absent_changes_only_absent_class_pixels(scored: cosa_sdk.Segmenter) -> None:
    kept = scored.segment(faint_red(), return_scores=True)
    dropped = scored.segment(faint_red(), drop_absent=True, return_scores=True)
    assert kept.class_scores["red"] < 0.5 and (kept.mask == 1).mean() > 0.2
    assert (dropped.mask == 0).all() and (dropped.scores[1:] == 0).all()
    image = blocks(80, 120)
    image[30:50, 50:70] = (170, 100, 100)  # faint red inside the gray: red is present all the same
    both = scored.segment(image, drop_absent=True)
    assert min(both.class_scores.values()) > 0.5
    np.testing.assert_array_equal(both.mask, scored.segment(image).mask)


def test_the_bundle_sets_the_default(tmp_path: Path) -> None:
    seg = fake_segmenter([1.0, -1.0], drop_absent=True)
    image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    assert seg.drop_absent_setting() is True and seg.info()["postprocess"] == {
        "drop_absent": True,
        "edge_aware": False,
        "class_threshold": 0.5,
    }
    assert not (seg.segment(image).mask == 2).any()
    assert (seg.segment(image, drop_absent=False).mask == 2).any()
    assert fake_segmenter([1.0, -1.0]).drop_absent_setting() is False  # no "postprocess" key: off
    with pytest.raises(CosaInputError, match="drop_absent must be True, False or None"):
        seg.segment(image, drop_absent="yes")


def test_lone_onnx_file_with_class_scores(tmp_path: Path) -> None:
    lone = shutil.copy(cached_toy_bundle(class_scores=True) / "model.onnx", tmp_path / "model.onnx")
    seg = cosa_sdk.load(lone)
    assert seg.has_class_scores and seg.segment(red_only()).class_scores["red"] > 0.5


def test_int8_model_carries_the_class_scores(scored: cosa_sdk.Segmenter) -> None:
    with cosa_sdk.load(cached_toy_bundle(class_scores=True, int8=True), backend="onnxruntime-int8") as q8:
        assert q8.has_class_scores
        scores = q8.segment(red_only()).class_scores
    assert scores == pytest.approx(scored.segment(red_only()).class_scores, abs=0.02)


@pytest.mark.parametrize("class_scores", [True, False])
def test_torch_backend_class_scores_equal_onnxruntime(class_scores: bool) -> None:
    need_network()
    bundle = cached_toy_bundle(with_torch=True, class_scores=class_scores)
    image = noise(45, 70, seed=3)
    with cosa_sdk.load(bundle, backend="torch") as torch_seg, cosa_sdk.load(bundle, backend="onnxruntime") as ort_seg:
        assert torch_seg.has_class_scores is ort_seg.has_class_scores is class_scores
        a, b = torch_seg.segment(image), ort_seg.segment(image)
    np.testing.assert_array_equal(a.mask, b.mask)
    if class_scores:
        assert a.class_scores == pytest.approx(b.class_scores, abs=1e-4)
    else:
        assert a.class_scores is None and b.class_scores is None


# -- bundles from before class scores --------------------------------------------------------------
def test_one_output_bundle_segments_as_before(old: cosa_sdk.Segmenter, scored: cosa_sdk.Segmenter) -> None:
    image = blocks(70, 90)
    result = old.segment(image, return_scores=True)
    assert not old.has_class_scores and result.class_scores is None and "class_scores" not in result.to_dict()
    assert old.drop_absent_setting() is False
    same = scored.segment(image, return_scores=True)  # the same colour logits, plus scores
    np.testing.assert_array_equal(result.mask, same.mask)
    np.testing.assert_allclose(result.scores, same.scores, atol=1e-6)
    np.testing.assert_array_equal(old.segment(image, drop_absent=False).mask, result.mask)


def test_drop_absent_on_a_one_output_bundle_says_to_re_export(old: cosa_sdk.Segmenter) -> None:
    for call in (
        lambda: old.segment(blocks(20, 20), drop_absent=True),
        lambda: old.segment([blocks(20, 20)], drop_absent=True),
    ):
        with pytest.raises(CosaConfigError, match=r"re-export the bundle with `cosa export`"):
            call()


def test_a_default_the_model_cannot_follow_is_refused_at_load(tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(cached_toy_bundle(), tmp_path / "b"))
    config = json.loads((bundle / "cosa.json").read_text())
    config["postprocess"] = {"drop_absent": True}
    (bundle / "cosa.json").write_text(json.dumps(config))
    with pytest.raises(CosaModelError, match="gives no class scores"):
        cosa_sdk.load(bundle, backend="onnxruntime")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"postprocess": {"drop_absent": "yes"}}, "'drop_absent' must be true or false"),
        ({"postprocess": {"class_threshold": 1.5}}, "'class_threshold' must be a probability"),
        ({"postprocess": [True]}, "must be an object"),
        ({"onnx": {"outputs": ["class_scores"]}}, "must include the logits output"),
    ],
)
def test_bad_postprocess_and_outputs_name_the_key(entry: dict, message: str, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(cached_toy_bundle(class_scores=True), tmp_path / "b"))
    config = {**json.loads((bundle / "cosa.json").read_text()), **entry}
    (bundle / "cosa.json").write_text(json.dumps(config))
    with pytest.raises(CosaModelError, match=message):
        read_bundle(bundle)


def test_bundle_reads_outputs_and_postprocess() -> None:
    bundle = read_bundle(cached_toy_bundle(class_scores=True, drop_absent=True))
    assert bundle.onnx.outputs == ("logits", "class_scores") and bundle.onnx.class_scores == "class_scores"
    assert bundle.postprocess.drop_absent is True and bundle.postprocess.class_threshold == 0.5
    legacy = read_bundle(cached_toy_bundle())
    assert legacy.onnx.outputs == ("logits",) and legacy.postprocess.drop_absent is False


# -- cosa segment -----------------------------------------------------------------------------------
def segment_args(bundle: Path, image: Path, out: Path, drop_absent: bool | None, json_out: Path | None = None):
    """`cosa segment` arguments from the real parser, with the value --drop-absent / --keep-absent give."""
    argv = ["segment", str(image), "--model", str(bundle), "--out", str(out)]
    args = build_parser().parse_args([*argv, *(["--json", str(json_out)] if json_out else [])])
    args.drop_absent = drop_absent
    return args


@pytest.mark.parametrize("drop_absent", [True, False, None])
def test_segment_cli_drop_absent_round_trip(drop_absent: bool | None, tmp_path: Path) -> None:
    image = tmp_path / "photo.png"
    Image.fromarray(red_only()).save(image)
    report = tmp_path / "r.json"
    bundle = cached_toy_bundle(class_scores=True, drop_absent=True)
    assert segment_command(segment_args(bundle, image, tmp_path / "out", drop_absent, report)) == 0
    summary = json.loads(report.read_text())
    assert summary["drop_absent"] is (drop_absent is not False)  # None: the bundle's default (on)
    assert summary["images"][0]["class_scores"]["red"] > 0.5
    assert summary["has_class_scores"] is True


def test_segment_cli_refuses_drop_absent_without_class_scores(tmp_path: Path) -> None:
    image = tmp_path / "photo.png"
    Image.fromarray(red_only()).save(image)
    with pytest.raises(CosaConfigError, match="cosa export"):
        segment_command(segment_args(cached_toy_bundle(), image, tmp_path / "out", True))
    assert not (tmp_path / "out").exists()  # refused before anything was written

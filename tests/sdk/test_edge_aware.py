"""`edge_aware`: the Segmenter's guided-filter upsampling (`cosa_sdk.upsample`) against the model's own logits,
the bundle's default, bad values, scores, together with `drop_absent`, and the `cosa segment` / `cosa export` flags."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from toy_bundle import cached_toy_bundle

import cosa_sdk
from cosa_sdk.backends.base import Backend
from cosa_sdk.bundle import bundle_from_config, read_bundle
from cosa_sdk.cli import build_parser
from cosa_sdk.errors import CosaInputError, CosaModelError
from cosa_sdk.export.cli import options_from_args, report_lines
from cosa_sdk.export.pipeline import postprocess_entry
from cosa_sdk.preprocess import argmax_channels, logits_to_mask
from cosa_sdk.segment_cli import segment_command
from cosa_sdk.segmenter import Segmenter
from cosa_sdk.upsample import edge_aware_mask

from .scenes import blocks

SIZE = 64
HEIGHT, WIDTH = 75, 100


def truth(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """The classes `blocks` paints: red (1) on the left third, green (2) on the right third, background between."""
    label = np.zeros((height, width), dtype=np.uint8)
    label[:, : width // 3] = 1
    label[:, 2 * width // 3 :] = 2
    return label


def faint_red(height: int = 48, width: int = 64) -> np.ndarray:
    """Gray with a faint red square: the colour model gives it red pixels, its class score calls red absent."""
    image = np.full((height, width, 3), 128, dtype=np.uint8)
    image[8:40, 8:40] = (170, 100, 100)
    return image


def model_logits(seg: Segmenter, image: np.ndarray, *, tta: bool = False) -> np.ndarray:
    """(K, h, w) logits at the input size, through the Segmenter's own normalisation and backend."""
    logits, _ = seg._infer(seg._normalizer(Image.fromarray(image))[None], tta=tta)
    return logits[0]


def cell(seg: Segmenter, height: int, width: int) -> float:
    """One feature-grid cell in image pixels: patch size times the geometric mean of the two ratios."""
    in_h, in_w = seg.input_size
    return seg.bundle.patch_size * math.sqrt(height / in_h * width / in_w)


def with_postprocess(tmp_path: Path, postprocess: dict, **bundle: object) -> Path:
    """A copy of a toy bundle whose cosa.json carries `postprocess`."""
    root = Path(shutil.copytree(cached_toy_bundle(**bundle), tmp_path / "bundle"))
    config = json.loads((root / "cosa.json").read_text())
    config["postprocess"] = postprocess
    (root / "cosa.json").write_text(json.dumps(config))
    return root


class AbsentBackend(Backend):
    """The colour logits of a blocks image for every input, and class logits that call every class absent."""

    def __init__(self, logits: np.ndarray) -> None:
        self.name = "fake"
        self.fixed_size = (SIZE, SIZE)
        self.logits = logits
        self.has_class_scores = True

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.repeat(self.logits[None], len(batch), axis=0)

    def run_with_scores(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return self.run(batch), np.full((len(batch), 2), -3.0, dtype=np.float32)


@pytest.fixture(scope="module")
def seg() -> cosa_sdk.Segmenter:
    return cosa_sdk.load(cached_toy_bundle(class_scores=True), backend="onnxruntime")


# -- the Segmenter ------------------------------------------------------------------------------------
def test_edge_aware_is_the_guided_filter_of_the_models_logits(seg: cosa_sdk.Segmenter) -> None:
    image = blocks(HEIGHT, WIDTH)
    result = seg.segment(image, edge_aware=True)
    expected = edge_aware_mask(model_logits(seg, image), image, cell=cell(seg, HEIGHT, WIDTH))
    np.testing.assert_array_equal(result.mask, expected)
    bilinear = seg.segment(image).mask
    assert (result.mask != truth()).sum() < (bilinear != truth()).sum()  # the boundaries moved onto the edges
    other = blocks(40, 130, seed=1)
    batch = seg.segment([image, other], edge_aware=True, batch_size=2)
    np.testing.assert_array_equal(batch[0].mask, result.mask)
    expected_other = edge_aware_mask(model_logits(seg, other), other, cell=cell(seg, 40, 130))
    np.testing.assert_array_equal(batch[1].mask, expected_other)
    fused = edge_aware_mask(model_logits(seg, image, tta=True), image, cell=cell(seg, HEIGHT, WIDTH))
    np.testing.assert_array_equal(seg.segment(image, tta=True, edge_aware=True).mask, fused)


def test_edge_aware_off_is_the_bilinear_path(seg: cosa_sdk.Segmenter) -> None:
    image = blocks(HEIGHT, WIDTH)
    off = seg.segment(image, edge_aware=False, return_scores=True)
    default = seg.segment(image, return_scores=True)
    mask, scores = logits_to_mask(model_logits(seg, image), (HEIGHT, WIDTH), with_scores=True)
    np.testing.assert_array_equal(off.mask, default.mask)
    np.testing.assert_array_equal(off.mask, mask)
    np.testing.assert_array_equal(off.scores, scores)
    assert seg.edge_aware_setting() is False and seg.info()["postprocess"]["edge_aware"] is False


def test_scores_are_the_filtered_probabilities(seg: cosa_sdk.Segmenter) -> None:
    image = blocks(HEIGHT, WIDTH)
    result = seg.segment(image, edge_aware=True, return_scores=True)
    assert result.scores is not None and result.scores.shape == (3, HEIGHT, WIDTH)
    assert result.scores.dtype == np.float32 and np.isfinite(result.scores).all()
    np.testing.assert_allclose(result.scores.sum(0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(argmax_channels(result.scores), result.mask)
    np.testing.assert_array_equal(result.mask, seg.segment(image, edge_aware=True).mask)
    assert set(result.timings) >= {"postprocess"} and result.timings["postprocess"] > 0


def test_the_bundle_sets_the_default(tmp_path: Path, seg: cosa_sdk.Segmenter) -> None:
    image = blocks(HEIGHT, WIDTH)
    with cosa_sdk.load(with_postprocess(tmp_path, {"edge_aware": True}), backend="onnxruntime") as edgy:
        assert edgy.edge_aware_setting() is True and edgy.edge_aware_setting(False) is False
        assert edgy.info()["postprocess"]["edge_aware"] is True
        assert edgy.bundle.postprocess.drop_absent is False  # the other keys keep their defaults
        np.testing.assert_array_equal(edgy.segment(image).mask, seg.segment(image, edge_aware=True).mask)
        np.testing.assert_array_equal(edgy.segment(image, edge_aware=False).mask, seg.segment(image).mask)
        listed = list(edgy.iter_segment([image]))
        np.testing.assert_array_equal(listed[0].mask, seg.segment(image, edge_aware=True).mask)


@pytest.mark.parametrize("value", ["yes", 1, "true"])
def test_bad_values_are_refused(value: object, seg: cosa_sdk.Segmenter) -> None:
    image = blocks(20, 20)
    for call in (
        lambda: seg.segment(image, edge_aware=value),
        lambda: seg.segment([image], edge_aware=value),
        lambda: seg.edge_aware_setting(value),
    ):
        with pytest.raises(CosaInputError, match=r"edge_aware must be True, False or None \(the bundle's default\)"):
            call()


def test_absent_classes_lose_after_the_filter(seg: cosa_sdk.Segmenter) -> None:
    logits = model_logits(seg, blocks(SIZE, SIZE))
    absent = Segmenter(read_bundle(cached_toy_bundle(class_scores=True)), AbsentBackend(logits))
    image = blocks(HEIGHT, WIDTH)
    assert (absent.segment(image, edge_aware=True).mask != 0).any()  # kept, the classes take pixels
    for result in (
        absent.segment(image, edge_aware=True, drop_absent=True),
        absent.segment(image, edge_aware=True, drop_absent=True, return_scores=True),
    ):
        assert (result.mask == 0).all()
        assert max(result.class_scores.values()) < 0.5
    scores = absent.segment(image, edge_aware=True, drop_absent=True, return_scores=True).scores
    assert scores is not None and np.isfinite(scores).all() and (scores[1:] == 0).all()
    dropped = seg.segment(faint_red(), edge_aware=True, drop_absent=True)  # the real classifier: red absent
    assert max(dropped.class_scores.values()) < 0.5 and (dropped.mask == 0).all()
    assert (seg.segment(faint_red(), edge_aware=True).mask == 1).any()


# -- cosa.json --------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_a_bad_edge_aware_entry_is_refused_at_load(value: object, tmp_path: Path) -> None:
    bundle = with_postprocess(tmp_path, {"edge_aware": value})
    with pytest.raises(CosaModelError, match=r"'edge_aware' must be true or false, got .*re-create the bundle"):
        read_bundle(bundle)


def test_export_records_the_flag_and_the_reader_follows_it(tmp_path: Path) -> None:
    config = json.loads((cached_toy_bundle() / "cosa.json").read_text())
    for argv, expected in ((["--edge-aware"], True), (["--no-edge-aware"], False), ([], False)):
        args = build_parser().parse_args(["export", "best.pt", "--out", str(tmp_path / "b"), *argv])
        options = options_from_args(args)
        assert options.edge_aware is expected
        entry = postprocess_entry(options)
        assert entry["edge_aware"] is expected and entry["drop_absent"] is False
        bundle = bundle_from_config({**config, "postprocess": entry}, source=tmp_path / "cosa.json", root=tmp_path)
        assert bundle.postprocess.edge_aware is expected


def test_the_export_report_says_edge_aware() -> None:
    for value, word in ((True, "on"), (False, "off")):
        result = SimpleNamespace(  # the fields report_lines reads on an export without parity, INT8 or TensorRT
            config={
                "artifacts": {"onnx": "model.onnx"},
                "metrics": {},
                "postprocess": {"drop_absent": False, "class_threshold": 0.5, "edge_aware": value},
            },
            source=SimpleNamespace(input_size=(64, 64), backbone="toy", network="teacher", classes=["a", "b"]),
            onnx=SimpleNamespace(dynamic=False, opset=17, exporter="torchscript", notes=[]),
            parity=None,
            int8=None,
            sizes={},
            path=Path("b"),
        )
        line = next(line for line in report_lines(result) if "postprocess:" in line)
        assert "drop_absent off by default" in line and f"edge_aware {word}" in line


# -- cosa segment -----------------------------------------------------------------------------------
def test_segment_flags_parse() -> None:
    base = ["segment", "a.png", "--model", "m", "--out", "o"]
    assert build_parser().parse_args([*base, "--edge-aware"]).edge_aware is True
    assert build_parser().parse_args([*base, "--bilinear"]).edge_aware is False
    assert build_parser().parse_args(base).edge_aware is None
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--edge-aware", "--bilinear"])


@pytest.mark.parametrize(("flag", "expected"), [("--edge-aware", True), ("--bilinear", False), (None, True)])
def test_segment_cli_edge_aware_round_trip(
    flag: str | None, expected: bool, tmp_path: Path, seg: cosa_sdk.Segmenter
) -> None:
    image = tmp_path / "photo.png"
    Image.fromarray(blocks(HEIGHT, WIDTH)).save(image)
    bundle = with_postprocess(tmp_path, {"edge_aware": True}, class_scores=True)  # the default: on
    report, out = tmp_path / "r.json", tmp_path / "out"
    argv = ["segment", str(image), "--model", str(bundle), "--out", str(out), "--json", str(report)]
    assert segment_command(build_parser().parse_args([*argv, *([flag] if flag else [])])) == 0
    summary = json.loads(report.read_text())
    assert summary["edge_aware"] is expected and summary["postprocess"]["edge_aware"] is True
    written = np.asarray(Image.open(out / "photo.png"))
    np.testing.assert_array_equal(written, seg.segment(image, edge_aware=expected).mask)

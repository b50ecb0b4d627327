"""SegmentationResult views: palette image, overlay, files, JSON summary and its mask encodings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cosa_sdk.errors import CosaInputError
from cosa_sdk.result import SegmentationResult, decode_hf, decode_mask, encode_rle

CLASSES = ["background", "cat", "dog"]
PALETTE = [(0, 0, 0), (200, 0, 0), (0, 0, 240)]


def make_result(keep_image: bool = True) -> SegmentationResult:
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[5:15, 5:25] = 1  # 200 px
    mask[20:25, 30:40] = 2  # 50 px
    image = Image.fromarray(np.full((30, 40, 3), 100, dtype=np.uint8))
    timings = {"decode": 0.001, "preprocess": 0.002, "model": 0.01, "postprocess": 0.003}
    return SegmentationResult(
        mask=mask,
        classes=CLASSES,
        palette=PALETTE,
        backend="onnxruntime",
        timings=timings,
        image=image if keep_image else None,
    )


def test_present_holds_fractions_largest_first() -> None:
    result = make_result()
    assert list(result.present) == ["background", "cat", "dog"]
    assert result.present["cat"] == pytest.approx(200 / 1200)
    assert result.present["dog"] == pytest.approx(50 / 1200)
    assert result.size == (40, 30)
    assert result.total_time == pytest.approx(0.016)


def test_colorized_is_a_palette_image_of_class_indices() -> None:
    image = make_result().colorized()
    assert image.mode == "P" and image.size == (40, 30)
    np.testing.assert_array_equal(np.asarray(image), make_result().mask)
    assert image.convert("RGB").getpixel((10, 10)) == (200, 0, 0)
    assert image.getpalette()[6:9] == [0, 0, 240]


def test_overlay_blends_foreground_and_keeps_background() -> None:
    overlay = np.asarray(make_result().overlay(alpha=0.25)).astype(int)
    assert overlay.shape == (30, 40, 3)
    assert overlay[0, 0].tolist() == [100, 100, 100]  # background untouched
    assert overlay[10, 10].tolist() == pytest.approx([125, 75, 75], abs=1)  # 0.75 * 100 + 0.25 * (200, 0, 0)
    assert overlay[22, 35].tolist() == pytest.approx([75, 75, 135], abs=1)
    with pytest.raises(CosaInputError, match="alpha"):
        make_result().overlay(alpha=2)
    with pytest.raises(CosaInputError, match="does not hold its image"):
        make_result(keep_image=False).overlay()


def test_save_writes_masks_losslessly_and_overlays_as_jpeg(tmp_path: Path) -> None:
    result = make_result()
    result.save(tmp_path / "mask.png")
    with Image.open(tmp_path / "mask.png") as saved:
        assert saved.mode == "P"
        np.testing.assert_array_equal(np.asarray(saved), result.mask)
    result.save(tmp_path / "view.jpg")
    with Image.open(tmp_path / "view.jpg") as saved:
        assert saved.format == "JPEG" and saved.mode == "RGB" and saved.size == (40, 30)
    result.save(tmp_path / "overlay.png", kind="overlay")
    with Image.open(tmp_path / "overlay.png") as saved:
        assert saved.mode == "RGB"
    with pytest.raises(CosaInputError, match="lossless"):
        result.save(tmp_path / "mask.jpg", kind="mask")
    with pytest.raises(CosaInputError, match="cannot save"):
        result.save(tmp_path / "mask.txt")


def test_to_dict_is_json_and_mask_encodings_round_trip() -> None:
    result = make_result()
    summary = result.to_dict()
    json.dumps(summary)
    assert summary["width"] == 40 and summary["height"] == 30
    assert summary["backend"] == "onnxruntime" and set(summary["timings"]) == set(result.timings)
    assert summary["present"]["dog"] == pytest.approx(50 / 1200, abs=1e-6)
    assert "mask" not in summary
    for encoding in ("rle", "png"):
        encoded = json.loads(json.dumps(result.to_dict(mask=encoding)))["mask"]
        np.testing.assert_array_equal(decode_mask(encoded), result.mask)
    with pytest.raises(CosaInputError, match="'png' or 'rle'"):
        result.to_dict(mask="bmp")


def test_rle_counts_runs_row_major() -> None:
    mask = np.array([[0, 0, 1], [1, 1, 0]], dtype=np.uint8)
    assert encode_rle(mask) == {"encoding": "rle", "size": [2, 3], "values": [0, 1, 0], "counts": [2, 3, 1]}
    empty = np.zeros((0, 4), dtype=np.uint8)
    np.testing.assert_array_equal(decode_mask(encode_rle(empty)), empty)


def test_repr_is_short_and_readable() -> None:
    text = repr(make_result())
    assert text.startswith("SegmentationResult(40x30, present={'background': 0.79, 'cat': 0.17, 'dog': 0.04}")
    assert "backend='onnxruntime'" in text and "16.0 ms" in text


def transformers_semantic_output(segmentation: np.ndarray, id2label: dict[int, str]) -> list[dict]:
    """What transformers' ImageSegmentationPipeline.postprocess does for subtask "semantic" (its code, torch-free)."""
    annotation = []
    for label in np.unique(segmentation):
        mask = Image.fromarray(((segmentation == label) * 255).astype(np.uint8), mode="L")
        annotation.append({"score": None, "label": id2label[label], "mask": mask})
    return annotation


def test_to_hf_is_the_pipeline_output_for_a_semantic_model() -> None:
    result = make_result()
    segments = result.to_hf()
    assert [s["label"] for s in segments] == ["background", "cat", "dog"], "class-index order, background kept"
    expected = transformers_semantic_output(result.mask, dict(enumerate(CLASSES)))
    assert [list(s) for s in segments] == [list(e) for e in expected] == [["score", "label", "mask"]] * 3
    for segment, reference in zip(segments, expected):
        assert segment["score"] is None and segment["label"] == reference["label"]
        mask = segment["mask"]
        assert isinstance(mask, Image.Image) and mask.mode == "L" and mask.size == (40, 30)
        np.testing.assert_array_equal(np.asarray(mask), np.asarray(reference["mask"]))
    cat = np.asarray(segments[1]["mask"])
    assert set(np.unique(cat)) == {0, 255} and (cat == 255).sum() == 200
    assert (cat[5:15, 5:25] == 255).all()
    union = sum(np.asarray(s["mask"], dtype=np.int64) for s in segments)
    assert (union == 255).all(), "the segments tile the image exactly once"


def test_to_hf_lists_only_present_classes() -> None:
    mask = np.full((4, 6), 2, dtype=np.uint8)  # only "dog", no background pixel at all
    result = SegmentationResult(mask=mask, classes=CLASSES, palette=PALETTE, backend="onnxruntime")
    (segment,) = result.to_hf()
    assert segment["label"] == "dog" and np.asarray(segment["mask"]).min() == 255


def test_to_hf_encoded_is_json_and_decodes_to_the_pil_form() -> None:
    result = make_result()
    encoded = json.loads(json.dumps(result.to_hf(encode=True)))
    assert all(isinstance(s["mask"], str) and s["score"] is None for s in encoded)
    decoded = decode_hf(encoded)
    for got, want in zip(decoded, result.to_hf()):
        assert got["label"] == want["label"] and got["mask"].mode == "L"
        np.testing.assert_array_equal(np.asarray(got["mask"]), np.asarray(want["mask"]))


def test_to_hf_needs_neither_torch_nor_transformers() -> None:
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from cosa_sdk.result import SegmentationResult\n"
        "r = SegmentationResult(mask=np.eye(4, dtype=np.uint8), classes=['background', 'x'],"
        " palette=[(0, 0, 0), (9, 9, 9)], backend='onnxruntime')\n"
        "assert [s['label'] for s in r.to_hf()] == ['background', 'x'] and r.to_hf(encode=True)\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"

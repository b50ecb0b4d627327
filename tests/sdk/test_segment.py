"""Segmenter behaviour on the toy colour model: masks, TTA, input kinds, padding, laziness, threads, timings.

What every backend must do (sizes, scores, batching, input errors, agreement) is in conformance.py, run for each
backend by test_backends.py.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from toy_bundle import cached_toy_bundle

import cosa_sdk

from .scenes import blocks, torch_reference


@pytest.fixture(scope="module")
def seg() -> cosa_sdk.Segmenter:
    return cosa_sdk.load(cached_toy_bundle())


@pytest.fixture(scope="module")
def dynamic_seg() -> cosa_sdk.Segmenter:
    return cosa_sdk.load(cached_toy_bundle(dynamic=True))


def test_mask_segments_colours_at_the_original_size(seg: cosa_sdk.Segmenter) -> None:
    result = seg.segment(blocks())
    assert result.mask.shape == (333, 517) and result.mask.dtype == np.uint8
    assert (result.mask[:, :140] == 1).all()
    assert (result.mask[:, 200:310] == 0).all()
    assert (result.mask[:, 380:] == 2).all()
    assert list(result.present) == ["red", "green", "background"] or set(result.present) == {
        "red",
        "green",
        "background",
    }
    assert sum(result.present.values()) == pytest.approx(1.0)
    assert result.classes == ["background", "red", "green"]
    assert result.backend == "onnxruntime"


def test_multiscale_tta_follows_the_official_recipe(dynamic_seg: cosa_sdk.Segmenter) -> None:
    sizes = dynamic_seg.tta_sizes()
    assert sizes == [(64, 64), (32, 32), (96, 96), (48, 48), (80, 80)]
    image = blocks(120, 90, seed=4)
    result = dynamic_seg.segment(image, tta=True, return_scores=True)
    reference = torch_reference(image, sizes=sizes)
    np.testing.assert_allclose(result.scores, reference.numpy(), atol=1e-4)
    assert (result.mask == reference.argmax(0).numpy()).mean() > 0.999
    plain = dynamic_seg.segment(image, return_scores=True)
    assert not np.allclose(plain.scores, result.scores, atol=1e-3)  # TTA really changed the logits


def test_fixed_graph_tta_is_flip_only(seg: cosa_sdk.Segmenter) -> None:
    assert not seg.dynamic and seg.tta_sizes() == [(64, 64)]
    image = blocks(50, 70, seed=5)
    result = seg.segment(image, tta=True, return_scores=True)
    np.testing.assert_allclose(result.scores, torch_reference(image, sizes=[(64, 64)]).numpy(), atol=1e-4)


def test_every_input_kind_gives_the_same_mask(seg: cosa_sdk.Segmenter, tmp_path: Path) -> None:
    array = blocks(80, 120)
    path = tmp_path / "img.png"
    Image.fromarray(array).save(path)
    expected = seg.segment(array).mask
    for source in (str(path), path, path.read_bytes(), io.BytesIO(path.read_bytes()), Image.fromarray(array)):
        np.testing.assert_array_equal(seg.segment(source).mask, expected)
    rgba = np.concatenate([array, np.zeros((80, 120, 1), np.uint8)], axis=2)
    np.testing.assert_array_equal(seg.segment(rgba).mask, expected)
    assert (seg.segment(Image.fromarray(array).convert("L")).mask == 0).all()  # no colour, no class


def test_fixed_batch_graphs_are_padded() -> None:
    fixed = cosa_sdk.load(cached_toy_bundle(fixed_batch=2))
    free = cosa_sdk.load(cached_toy_bundle())
    assert fixed.info()["fixed_batch"] == 2
    images = [blocks(30 + i, 50, seed=i) for i in range(3)]
    for a, b in zip(fixed.segment(images, batch_size=3, tta=True), free.segment(images, tta=True)):
        np.testing.assert_array_equal(a.mask, b.mask)


def test_iter_segment_reads_lazily(seg: cosa_sdk.Segmenter) -> None:
    pulled: list[int] = []

    def source():
        for i in range(5):
            pulled.append(i)
            yield blocks(20, 20, seed=i)

    stream = seg.iter_segment(source(), batch_size=2)
    next(stream)
    assert pulled == [0, 1]
    assert len(list(stream)) == 4


def test_concurrent_calls_give_the_sequential_answers(seg: cosa_sdk.Segmenter) -> None:
    images = [blocks(50 + 9 * i, 70 + 5 * i, seed=i) for i in range(8)]
    expected = [seg.segment(image).mask for image in images]
    failures: list[str] = []

    def worker(index: int) -> None:
        for call in range(4):
            order = (index + call) % len(images)
            batch = seg.segment([images[order], images[(order + 1) % 8]], tta=call % 2 == 1)
            for offset, result in enumerate(batch):
                if not np.array_equal(result.mask, expected[(order + offset) % 8]):
                    failures.append(f"thread {index} call {call}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_timings_and_benchmark(seg: cosa_sdk.Segmenter) -> None:
    result = seg.segment(blocks())
    assert set(result.timings) == {"decode", "preprocess", "model", "postprocess"}
    assert all(v >= 0 for v in result.timings.values()) and result.timings["model"] > 0
    report = seg.benchmark(batch_size=2, runs=2, warmup=1)
    assert report["backend"] == "onnxruntime" and report["images_per_s"] > 0
    assert set(report["per_image_s"]) == set(result.timings)
    assert 0.0 <= report["outside_model_fraction"] <= 1.0
    json.dumps(report)
    json.dumps(seg.info())


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_import_and_segment_never_import_torch() -> None:
    heavy = "('torch', 'timm', 'onnx', 'bentoml', 'safetensors')"
    after_import = run_python(f"import sys, cosa_sdk; print([m for m in {heavy} if m in sys.modules])")
    assert after_import == "[]"
    code = (
        "import sys, numpy as np, cosa_sdk\n"
        f"seg = cosa_sdk.load({str(cached_toy_bundle())!r})\n"
        "seg.segment(np.zeros((20, 20, 3), np.uint8), tta=True)\n"
        f"print([m for m in {heavy} if m in sys.modules])"
    )
    assert run_python(code) == "[]"

"""Segmenter behaviour on the toy colour model: masks, sizes, TTA, scores, batching, threads, backends."""

from __future__ import annotations

import importlib
import io
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from toy_bundle import MEAN, STD, ColourNet, cached_toy_bundle

import cosa_sdk
from cosa_sdk.errors import CosaInputError


def blocks(height: int = 333, width: int = 517, seed: int = 0) -> np.ndarray:
    """Red on the left, gray in the middle, green on the right, with a little noise."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 128, dtype=np.int16)
    image[:, : width // 3] = (220, 30, 30)
    image[:, 2 * width // 3 :] = (20, 210, 40)
    image += rng.integers(-10, 11, image.shape, dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def seg() -> cosa_sdk.Segmenter:
    return cosa_sdk.load(cached_toy_bundle())


@pytest.fixture(scope="module")
def dynamic_seg() -> cosa_sdk.Segmenter:
    return cosa_sdk.load(cached_toy_bundle(dynamic=True))


def torch_reference(image: np.ndarray, *, sizes: list[tuple[int, int]] | None) -> torch.Tensor:
    """The official recipe in torch: normalise, resize to 64; per TTA size run image + flip and sum the
    logits at 64 (no TTA: `sizes=None`); resize to the image size; softmax."""
    net = ColourNet(3).eval()
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        if sizes is None:
            total = net(x)
        else:
            total = torch.zeros(1, 3, 64, 64)
            for size in sizes:
                scaled = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
                out = net(scaled) + net(scaled.flip(-1)).flip(-1)
                total += F.interpolate(out, size=(64, 64), mode="bilinear", align_corners=False)
    logits = F.interpolate(total, size=image.shape[:2], mode="bilinear", align_corners=False)
    return torch.softmax(logits, 1)[0]


def need_network() -> None:
    pytest.importorskip("timm")
    pytest.importorskip("safetensors")
    try:
        importlib.import_module("cosa_sdk.training.model.network")
    except ImportError as err:
        pytest.skip(f"training/model/network.py does not import: {err}")


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


def test_scores_are_probabilities_matching_torch(seg: cosa_sdk.Segmenter) -> None:
    image = blocks(97, 131)
    result = seg.segment(image, return_scores=True)
    assert result.scores is not None and result.scores.shape == (3, 97, 131) and result.scores.dtype == np.float32
    np.testing.assert_allclose(result.scores.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(result.scores.argmax(0), result.mask)
    reference = torch_reference(image, sizes=None)
    np.testing.assert_allclose(result.scores, reference.numpy(), atol=1e-4)
    assert seg.segment(image).scores is None


@pytest.mark.parametrize("shape", [(1, 1), (3, 700), (517, 333), (64, 64)])
def test_odd_sizes_keep_their_size(seg: cosa_sdk.Segmenter, shape: tuple[int, int]) -> None:
    assert seg.segment(blocks(*shape)).mask.shape == shape


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


def test_batches_equal_one_by_one(seg: cosa_sdk.Segmenter) -> None:
    images = [blocks(40 + 13 * i, 90 - 7 * i, seed=i) for i in range(5)]
    batched = seg.segment(images, batch_size=2, return_scores=True)
    assert isinstance(batched, list) and len(batched) == 5
    for image, result in zip(images, batched):
        single = seg.segment(image, return_scores=True)
        np.testing.assert_array_equal(result.mask, single.mask)
        np.testing.assert_allclose(result.scores, single.scores, atol=1e-6)
    stacked = np.stack([blocks(30, 30, seed=i) for i in range(3)])
    assert len(seg.segment(stacked)) == 3  # a 4-D array is a batch
    assert seg.segment([]) == []
    assert len(seg.segment(tuple(images[:2]))) == 2


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


def test_batch_errors_name_the_bad_item(seg: cosa_sdk.Segmenter, tmp_path: Path) -> None:
    with pytest.raises(CosaInputError, match="image 1 of the batch has dtype float64"):
        seg.segment([blocks(10, 10), np.zeros((10, 10, 3))])
    with pytest.raises(CosaInputError, match=r"missing\.png"):
        seg.segment([blocks(10, 10), tmp_path / "missing.png"])
    with pytest.raises(CosaInputError, match="max_pixels"):
        seg.segment(blocks(100, 100), max_pixels=5000)
    with pytest.raises(CosaInputError, match="batch_size"):
        seg.segment([blocks(10, 10)], batch_size=0)
    with pytest.raises(CosaInputError, match="cannot segment a generator"):
        seg.segment(x for x in [blocks(10, 10)])


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


def test_int8_model_agrees_with_fp32() -> None:
    bundle = cached_toy_bundle(int8=True)
    fp32 = cosa_sdk.load(bundle).segment(blocks())
    int8 = cosa_sdk.load(bundle, backend="onnxruntime-int8").segment(blocks())
    assert int8.backend == "onnxruntime-int8"
    assert (int8.mask == fp32.mask).mean() > 0.97


def test_torch_backend_matches_onnxruntime() -> None:
    need_network()
    bundle = cached_toy_bundle(with_torch=True)
    on_torch = cosa_sdk.load(bundle, backend="torch")
    assert on_torch.backend == "torch" and on_torch.device == "cpu"
    image = np.random.default_rng(7).integers(0, 256, (71, 93, 3), dtype=np.uint8)
    a = on_torch.segment(image, return_scores=True)
    b = cosa_sdk.load(bundle, backend="onnxruntime").segment(image, return_scores=True)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
    assert (a.mask == b.mask).mean() > 0.999


def test_torch_backend_refuses_a_mismatched_state_dict(tmp_path: Path) -> None:
    need_network()
    from safetensors.torch import save_file

    bundle = Path(shutil.copytree(cached_toy_bundle(with_torch=True), tmp_path / "b"))
    save_file({"unrelated": torch.zeros(2)}, str(bundle / "model.safetensors"))
    with pytest.raises(cosa_sdk.CosaModelError, match="does not match model_config"):
        cosa_sdk.load(bundle, backend="torch")


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

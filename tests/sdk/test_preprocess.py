"""The numpy resizes and normalisation match torch's bilinear (align_corners=False) exactly enough."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cosa_sdk import preprocess
from cosa_sdk.preprocess import (
    Normalizer,
    argmax_channels,
    logits_to_mask,
    reduce_for,
    resize_bilinear,
    softmax,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def torch_resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return F.interpolate(tensor[None], size=size, mode="bilinear", align_corners=False)[0].numpy()


@pytest.mark.parametrize(
    ("source", "target"),
    [((64, 64), (333, 517)), ((448, 448), (375, 500)), ((33, 17), (8, 40)), ((5, 7), (1, 1)), ((1, 1), (4, 3))],
)
def test_resize_matches_torch_bilinear(source: tuple[int, int], target: tuple[int, int]) -> None:
    x = np.random.default_rng(0).standard_normal((4, *source)).astype(np.float32)
    np.testing.assert_allclose(resize_bilinear(x, target), torch_resize(x, target), atol=2e-5 * 4)


def test_resize_on_channels_last_uint8_axes() -> None:
    image = np.random.default_rng(1).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    out = resize_bilinear(image, (64, 64), axes=(0, 1))
    assert out.shape == (64, 64, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out.transpose(2, 0, 1), torch_resize(image.transpose(2, 0, 1), (64, 64)), atol=1e-3)


def test_normalizer_matches_normalise_then_resize() -> None:
    image = np.random.default_rng(2).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    chw = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    reference = (chw - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    expected = torch_resize(reference.numpy(), (200, 320))  # under 2x: the exact path
    got = Normalizer(size=(200, 320), mean=MEAN, std=STD)(Image.fromarray(image))
    assert got.shape == (3, 200, 320) and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_large_images_are_box_reduced_before_the_bilinear_step() -> None:
    image = Image.new("RGB", (2000, 900))
    assert reduce_for(image, (448, 448)).size == (1000, 900)  # width / 2, height untouched
    small = Image.new("RGB", (500, 375))
    assert reduce_for(small, (448, 448)) is small
    # a fine stripe pattern averages to gray instead of aliasing into stripes
    stripes = np.zeros((1792, 1792, 3), dtype=np.uint8)
    stripes[:, ::2] = 255
    out = Normalizer(size=(448, 448), mean=(0, 0, 0), std=(1, 1, 1))(Image.fromarray(stripes))
    assert out.std() < 0.05 and abs(out.mean() - 0.5) < 0.05


def test_argmax_and_mask_match_numpy_and_torch() -> None:
    logits = np.random.default_rng(3).standard_normal((21, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(argmax_channels(logits), logits.argmax(0))
    ties = np.zeros((3, 2, 2), dtype=np.float32)
    assert (argmax_channels(ties) == 0).all()  # first maximum wins, as np.argmax
    mask, scores = logits_to_mask(logits, (45, 70), with_scores=True)
    reference = torch_resize(logits, (45, 70))
    assert (mask == reference.argmax(0)).mean() > 0.999
    np.testing.assert_allclose(scores, torch.softmax(torch.from_numpy(reference), 0).numpy(), atol=1e-5)
    untouched = logits.copy()
    logits_to_mask(logits, (32, 32), with_scores=True)
    np.testing.assert_array_equal(logits, untouched)  # same-size path must not softmax the caller's array


def reference_mask(logits: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The unbanded path: full (K, H, W) resize, argmax, then softmax of a copy."""
    resized = np.array(resize_bilinear(logits, size), dtype=np.float32)
    return argmax_channels(resized), softmax(resized, axis=0)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ((28, 28), (333, 517)),  # upsampling, height pass first
        ((28, 28), (517, 333)),  # upsampling, width pass first
        ((448, 448), (77, 100)),  # downsampling, height pass first
        ((448, 448), (100, 77)),  # downsampling, width pass first: bands read scattered input rows
        ((40, 64), (301, 20)),  # up in height, down in width
        ((28, 28), (28, 101)),  # one axis unchanged
        ((28, 28), (28, 28)),  # same size: no resize at all
        ((5, 7), (1, 1)),
        ((1, 1), (4, 3)),
    ],
)
@pytest.mark.parametrize("band_rows", [1, 7, None])
def test_banded_mask_and_scores_equal_the_full_size_path_exactly(
    monkeypatch: pytest.MonkeyPatch, source: tuple[int, int], target: tuple[int, int], band_rows: int | None
) -> None:
    logits = np.random.default_rng(4).standard_normal((21, *source)).astype(np.float32)
    if band_rows is not None:  # 7 leaves a remainder band for every height above
        monkeypatch.setattr(preprocess, "_band_rows", lambda channels, width: band_rows)
    expected_mask, expected_scores = reference_mask(logits, target)
    mask, scores = logits_to_mask(logits, target, with_scores=True)
    assert mask.shape == target and mask.dtype == np.uint8 and scores is not None
    np.testing.assert_array_equal(mask, expected_mask)
    np.testing.assert_array_equal(scores, expected_scores)
    only_mask, no_scores = logits_to_mask(logits, target)
    assert no_scores is None
    np.testing.assert_array_equal(only_mask, expected_mask)


def test_banded_mask_on_float64_logits_matches_the_float32_full_path() -> None:
    logits = np.random.default_rng(5).standard_normal((6, 28, 28))
    for target in [(333, 517), (28, 28)]:
        mask, _ = logits_to_mask(logits, target)
        np.testing.assert_array_equal(mask, argmax_channels(resize_bilinear(logits, target)))


def test_mask_of_a_large_image_never_materialises_the_full_logits() -> None:
    logits = np.random.default_rng(6).standard_normal((21, 28, 28)).astype(np.float32)
    full_bytes = 21 * 3000 * 4000 * 4  # ~1 GB: what the unbanded path allocated (twice)
    tracemalloc.start()
    try:
        mask, _ = logits_to_mask(logits, (3000, 4000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert mask.shape == (3000, 4000)
    assert peak - mask.nbytes < full_bytes / 50, f"extra peak {(peak - mask.nbytes) / 2**20:.1f} MiB"


def test_scores_path_allocates_little_beyond_its_output() -> None:
    logits = np.random.default_rng(7).standard_normal((21, 28, 28)).astype(np.float32)
    tracemalloc.start()
    try:
        mask, scores = logits_to_mask(logits, (600, 800), with_scores=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert scores is not None and scores.shape == (21, 600, 800)
    assert peak - mask.nbytes - scores.nbytes < scores.nbytes / 4  # the full path held two more copies

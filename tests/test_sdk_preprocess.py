"""The numpy resizes and normalisation match torch's bilinear (align_corners=False) exactly enough."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cosa_sdk.preprocess import Normalizer, argmax_channels, logits_to_mask, reduce_for, resize_bilinear

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

"""CoSA augmentation: shared geometry, zero padding and its box, strong ops, normalisation, eval resize."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cosa_sdk.training.data.transforms import (
    STRONG_OPS,
    AugParams,
    apply_geometry,
    eval_image,
    normalize,
    sample_params,
    strong_op,
    valid_box,
    weak_strong_views,
)


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(1, 256, (height, width, 3), dtype=np.uint8))


def _params(**overrides) -> AugParams:
    base = AugParams(1.0, False, 0, 0, 0, 0, False, 1.0, "identity", 5, (10, 10))
    return dataclasses.replace(base, **overrides)


def test_sample_params_is_a_function_of_the_rng_seed() -> None:
    a = sample_params(np.random.default_rng([3, 7]), (50, 40), crop_size=32)
    b = sample_params(np.random.default_rng([3, 7]), (50, 40), crop_size=32)
    c = sample_params(np.random.default_rng([3, 8]), (50, 40), crop_size=32)
    assert a == b
    assert a != c


def test_sample_params_ranges() -> None:
    rng = np.random.default_rng(0)
    draws = [sample_params(rng, (100, 60), crop_size=64, rescale_range=(0.5, 2.0)) for _ in range(400)]
    scales = np.array([p.scale for p in draws])
    assert scales.min() >= 0.5 and scales.max() <= 2.0 and scales.std() > 0.3
    assert all(p.scaled_size == (int(p.scale * 100), int(p.scale * 60)) for p in draws)
    assert 0.4 < np.mean([p.flip for p in draws]) < 0.6
    assert 0.4 < np.mean([p.blur for p in draws]) < 0.6
    assert all(0.1 <= p.blur_radius <= 2.0 for p in draws)
    assert {p.strong_op for p in draws} == set(STRONG_OPS)
    assert {p.magnitude for p in draws} == set(range(1, 10))
    narrow = sample_params(rng, (100, 60), crop_size=64, rescale_range=(1.0, 1.0))
    assert narrow.scaled_size == (100, 60)


def test_a_base_size_rescales_the_eval_square_not_the_image() -> None:
    rng = np.random.default_rng(1)
    draws = [sample_params(rng, (100, 60), crop_size=64, rescale_range=(0.5, 2.0), base_size=80) for _ in range(50)]
    assert all(p.scaled_size == (int(p.scale * 80), int(p.scale * 80)) for p in draws)
    same = sample_params(np.random.default_rng(2), (100, 60), crop_size=64, rescale_range=(1.0, 1.0), base_size=80)
    assert same.scaled_size == (80, 80)


def test_crop_larger_than_image_pads_with_zeros_and_box_marks_the_image() -> None:
    image = _image(10, 6)
    mask = np.arange(60, dtype=np.uint8).reshape(6, 10) % 5
    params = _params(scaled_size=(10, 6), pad_y=5, pad_x=3)
    crop, mask_crop = apply_geometry(image, mask, params, crop_size=16)
    y0, y1, x0, x1 = valid_box(params, 16)
    assert (y0, y1, x0, x1) == (5, 11, 3, 13)
    np.testing.assert_array_equal(crop[y0:y1, x0:x1], np.asarray(image))
    np.testing.assert_array_equal(mask_crop[y0:y1, x0:x1], mask)
    outside = np.ones((16, 16), bool)
    outside[y0:y1, x0:x1] = False
    assert (crop[outside] == 0).all()
    assert (mask_crop[outside] == 255).all()


def test_crop_inside_a_large_image_has_full_box_and_cuts_at_offset() -> None:
    image = _image(40, 30)
    params = _params(scaled_size=(40, 30), crop_y=7, crop_x=11)
    crop, _ = apply_geometry(image, None, params, crop_size=16)
    assert valid_box(params, 16) == (0, 16, 0, 16)
    np.testing.assert_array_equal(crop, np.asarray(image)[7:23, 11:27])


def test_partial_overlap_box_and_flip() -> None:
    image = _image(20, 12)
    mask = np.tile(np.arange(20, dtype=np.uint8), (12, 1))
    params = _params(scaled_size=(20, 12), flip=True, pad_y=2, crop_x=8)
    crop, mask_crop = apply_geometry(image, mask, params, crop_size=16)
    assert valid_box(params, 16) == (2, 14, 0, 12)
    flipped = np.asarray(image)[:, ::-1]
    np.testing.assert_array_equal(crop[2:14, 0:12], flipped[:, 8:20])
    np.testing.assert_array_equal(mask_crop[2:14, 0:12], mask[:, ::-1][:, 8:20])
    assert (crop[:2] == 0).all() and (crop[:, 12:] == 0).all()


def test_rescale_uses_bilinear_for_images_and_nearest_for_masks() -> None:
    image = _image(8, 8)
    mask = np.array([[0, 3], [255, 1]], dtype=np.uint8).repeat(4, 0).repeat(4, 1)
    params = _params(scale=2.0, scaled_size=(16, 16))
    crop, mask_crop = apply_geometry(image, mask, params, crop_size=16)
    np.testing.assert_array_equal(crop, np.asarray(image.resize((16, 16), Image.BILINEAR)))
    assert set(np.unique(mask_crop)) == {0, 1, 3, 255}


def test_weak_and_strong_share_geometry_and_differ_photometrically() -> None:
    image = _image(30, 20)
    mask = (np.asarray(image)[..., 0] > 128).astype(np.uint8)
    params = _params(scaled_size=(30, 20), pad_y=4, pad_x=1, strong_op="solarize", magnitude=4, blur=True)
    weak, strong, mask_crop = weak_strong_views(image, mask, params, crop_size=24)
    crop, mask_geo = apply_geometry(image, mask, params, crop_size=24)
    np.testing.assert_array_equal(mask_crop, mask_geo)
    assert not np.array_equal(weak, crop)  # blurred
    assert not np.array_equal(weak, strong)
    np.testing.assert_array_equal(strong, np.asarray(strong_op(Image.fromarray(weak), "solarize", 4)))
    identity = dataclasses.replace(params, strong_op="identity")
    weak2, strong2, _ = weak_strong_views(image, mask, identity, crop_size=24)
    np.testing.assert_array_equal(weak2, strong2)
    np.testing.assert_array_equal(weak, weak2)


@pytest.mark.parametrize("op", [op for op in STRONG_OPS if op != "identity"])
def test_every_strong_op_changes_a_textured_image(op: str) -> None:
    image = _image(24, 24)
    out = strong_op(image, op, 3)
    assert out.size == image.size and out.mode == "RGB"
    assert not np.array_equal(np.asarray(out), np.asarray(image))


def test_strong_op_magnitudes_follow_the_spec() -> None:
    image = Image.fromarray(np.array([[[200, 100, 20]]], dtype=np.uint8))
    assert np.asarray(strong_op(image, "solarize", 5)).tolist() == [[[55, 100, 20]]]  # threshold 128
    posterized = np.asarray(strong_op(_image(16, 16), "posterize", 9))  # 4 - int(3.6) = 1 bit
    assert set(np.unique(posterized)) <= {0, 128}
    dark = np.asarray(strong_op(Image.new("RGB", (4, 4), (100, 100, 100)), "brightness", 1))
    assert dark[0, 0, 0] == 28  # factor 1 * 0.18 + 0.1
    with pytest.raises(ValueError, match="unknown strong op"):
        strong_op(image, "rotate", 3)


def test_normalize_uses_0_1_scale_mean_and_std() -> None:
    pixels = np.full((2, 3, 3), 255, dtype=np.uint8)
    out = normalize(pixels, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    assert out.shape == (3, 2, 3) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([2.0, 1.0, 0.5]))


def test_eval_image_squashes_to_eval_size_like_the_official_eval() -> None:
    pixels = np.asarray(_image(40, 20))
    out = eval_image(pixels, (0.4, 0.4, 0.4), (0.2, 0.2, 0.2), 32)
    assert out.shape == (3, 32, 32)
    expected = F.interpolate(normalize(pixels, (0.4,) * 3, (0.2,) * 3)[None], size=(32, 32), mode="bilinear")
    torch.testing.assert_close(out, expected[0])
    assert eval_image(pixels, (0.4,) * 3, (0.2,) * 3, None).shape == (3, 20, 40)

"""Edge-aware upsampling: the guided filter matches its published math, and boundaries move onto image edges."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from cosa_sdk.errors import CosaConfigError, CosaInputError
from cosa_sdk.preprocess import logits_to_mask, resize_bilinear
from cosa_sdk.upsample import default_radius, edge_aware_mask, edge_aware_upsample, guided_filter, working_size

GRID, MODEL_SIZE = 16, 224
COLOURS = np.array([(200, 60, 50), (40, 90, 170), (60, 170, 60), (230, 210, 40)], dtype=np.int16)


def direct_box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the clipped (2r+1)^2 window of the last two axes by summing every offset, in float64."""
    height, width = x.shape[-2:]
    padded = np.pad(x.astype(np.float64), [(0, 0)] * (x.ndim - 2) + [(radius, radius)] * 2)
    inside = np.pad(np.ones((height, width)), radius)
    total, count = np.zeros(x.shape), np.zeros((height, width))
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            total += padded[..., dy : dy + height, dx : dx + width]
            count += inside[dy : dy + height, dx : dx + width]
    return total / count


def reference_colour_filter(guide: np.ndarray, plane: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He, Sun and Tang's colour guided filter in float64, with a 3x3 solve per pixel."""
    image = guide.transpose(2, 0, 1).astype(np.float64)
    mean_image, mean_plane = direct_box_mean(image, radius), direct_box_mean(plane, radius)
    sigma = direct_box_mean(image[:, None] * image[None], radius) - mean_image[:, None] * mean_image[None]
    sigma += eps * np.eye(3)[:, :, None, None]
    cov = direct_box_mean(image * plane, radius) - mean_image * mean_plane
    a = np.linalg.solve(sigma.transpose(2, 3, 0, 1), cov.transpose(1, 2, 0)[..., None])[..., 0].transpose(2, 0, 1)
    b = mean_plane - (a * mean_image).sum(0)
    return (direct_box_mean(a, radius) * image).sum(0) + direct_box_mean(b, radius)


def reference_grey_filter(guide: np.ndarray, plane: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """The scalar guided filter in float64."""
    mean_guide, mean_plane = direct_box_mean(guide, radius), direct_box_mean(plane, radius)
    variance = direct_box_mean(guide.astype(np.float64) ** 2, radius) - mean_guide**2
    a = (direct_box_mean(guide * plane.astype(np.float64), radius) - mean_guide * mean_plane) / (variance + eps)
    b = mean_plane - a * mean_guide
    return direct_box_mean(a, radius) * guide + direct_box_mean(b, radius)


def paint(label: np.ndarray, seed: int = 0) -> np.ndarray:
    """A uint8 RGB image of `label`: one colour per class, with noise."""
    noise = np.random.default_rng(seed).integers(-12, 13, (*label.shape, 3), dtype=np.int16)
    return np.clip(COLOURS[label] + noise, 0, 255).astype(np.uint8)


def coarse_logits(label: np.ndarray, classes: int, grow: int = 0) -> np.ndarray:
    """What a coarse model outputs: the one-hot label, objects grown by `grow` px, averaged over a
    16x16 grid and resized bilinearly to the model's input size."""
    planes = []
    for k in range(1, classes):
        plane = Image.fromarray(((label == k) * 255).astype(np.uint8))
        if grow:
            plane = plane.filter(ImageFilter.MaxFilter(2 * grow + 1))
        plane = Image.fromarray(np.asarray(plane, np.float32) / 255, "F")
        planes.append(np.asarray(plane.resize((GRID, GRID), Image.Resampling.BOX), np.float32))
    objects = np.stack(planes)
    background = np.clip(1 - objects.sum(0, keepdims=True), 0, 1)
    return resize_bilinear(8 * np.concatenate([background, objects]), (MODEL_SIZE, MODEL_SIZE))


def iou(mask: np.ndarray, label: np.ndarray, k: int = 1) -> float:
    return float(((mask == k) & (label == k)).sum() / ((mask == k) | (label == k)).sum())


def two_regions(kind: str, size: int = 128) -> np.ndarray:
    """Label map of one object on background: the right part of the image, or a disc."""
    label = Image.new("L", (size, size), 0)
    if kind == "edge":
        ImageDraw.Draw(label).rectangle([61, 0, size, size], fill=1)
    else:
        ImageDraw.Draw(label).ellipse([42, 38, 86, 82], fill=1)
    return np.asarray(label)


def shapes(height: int, width: int) -> np.ndarray:
    """Label map with discs, a bar and a rectangle of three classes."""
    label = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(label)
    draw.ellipse([0.1 * width, 0.15 * height, 0.3 * width, 0.45 * height], fill=1)
    draw.line([(0.45 * width, 0.1 * height), (0.9 * width, 0.3 * height)], fill=2, width=max(6, height // 40))
    draw.rectangle([0.5 * width, 0.55 * height, 0.8 * width, 0.9 * height], fill=3)
    draw.ellipse([0.15 * width, 0.6 * height, 0.3 * width, 0.8 * height], fill=2)
    return np.asarray(label)


@pytest.mark.parametrize("colour", [True, False])
def test_constant_source_stays_constant(colour: bool) -> None:
    rng = np.random.default_rng(0)
    guide = rng.random((20, 30, 3) if colour else (20, 30), dtype=np.float32)
    source = np.stack([np.full((20, 30), v, np.float32) for v in (0.0, 0.3, 1.0)])
    np.testing.assert_allclose(guided_filter(guide, source, radius=3, eps=1e-3), source, atol=1e-5)


@pytest.mark.parametrize("radius", [1, 3, 40])
def test_flat_guide_gives_the_box_mean_of_window_means(radius: int) -> None:
    """No colour to fit: every window's fit is its mean, and each pixel averages the windows covering it."""
    source = np.random.default_rng(1).random((2, 20, 30), dtype=np.float32)
    expected = direct_box_mean(direct_box_mean(source, radius), radius)
    out = guided_filter(np.full((20, 30, 3), 0.4, np.float32), source, radius=radius, eps=1e-3)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_huge_eps_ignores_the_guide() -> None:
    rng = np.random.default_rng(2)
    source = rng.random((1, 15, 18), dtype=np.float32)
    out = guided_filter(rng.random((15, 18, 3), dtype=np.float32), source, radius=2, eps=1e6)
    np.testing.assert_allclose(out, direct_box_mean(direct_box_mean(source, 2), 2), atol=1e-5)


@pytest.mark.parametrize(("radius", "eps"), [(1, 1e-2), (2, 1e-3), (4, 1e-4)])
def test_colour_filter_matches_the_published_formula(radius: int, eps: float) -> None:
    rng = np.random.default_rng(radius)
    guide = rng.random((14, 17, 3), dtype=np.float32)
    guide[:, 9:] *= 0.3  # an edge, so the fits are not all flat
    source = rng.random((2, 14, 17), dtype=np.float32)
    out = guided_filter(guide, source, radius=radius, eps=eps)
    for k in range(2):
        np.testing.assert_allclose(out[k], reference_colour_filter(guide, source[k], radius, eps), atol=1e-5)


@pytest.mark.parametrize(("radius", "eps"), [(1, 1e-2), (3, 1e-4)])
def test_grey_filter_matches_the_published_formula(radius: int, eps: float) -> None:
    rng = np.random.default_rng(radius)
    guide = rng.random((13, 16), dtype=np.float32)
    source = rng.random((2, 13, 16), dtype=np.float32)
    out = guided_filter(guide, source, radius=radius, eps=eps)
    for k in range(2):
        np.testing.assert_allclose(out[k], reference_grey_filter(guide, source[k], radius, eps), atol=1e-5)


def test_box_sums_keep_float32_accuracy_on_large_windows() -> None:
    """Cumulative sums over a long axis in float32 would lose digits; the filter's must not."""
    source = np.full((1, 6, 4000), 0.7, np.float32)
    source[0, :, ::2] = 0.1
    out = guided_filter(np.full((6, 4000), 0.5, np.float32), source, radius=1000, eps=1e-3)
    interior = out[0, :, 2000:2001]
    np.testing.assert_allclose(interior, 0.4, atol=1e-6)


@pytest.mark.parametrize(("kind", "grow"), [("edge", 2), ("disc", 2), ("edge", 0), ("disc", 0)])
def test_boundary_moves_onto_the_image_edge(kind: str, grow: int) -> None:
    """Coarse logits blur the boundary (and put it `grow` px out): the default filter pulls it onto the edge."""
    label = two_regions(kind)
    image, logits = paint(label), coarse_logits(label, 2, grow)
    bilinear = logits_to_mask(logits, label.shape)[0]
    snapped = edge_aware_mask(logits, image, cell=128 / GRID)
    assert iou(snapped, label) > iou(bilinear, label) + 0.01
    assert (snapped != label).mean() < 0.5 * (bilinear != label).mean()


@pytest.mark.parametrize("kind", ["edge", "disc"])
def test_a_wider_window_reaches_a_boundary_further_out(kind: str) -> None:
    label = two_regions(kind)
    image, logits = paint(label), coarse_logits(label, 2, grow=4)
    assert iou(logits_to_mask(logits, label.shape)[0], label) < 0.95
    reach = edge_aware_mask(logits, image, cell=128 / GRID, radius=16)
    assert iou(reach, label) > 0.998
    assert (reach != label).mean() < 0.001


def test_upsample_returns_probabilities_whose_argmax_is_the_mask() -> None:
    label = shapes(90, 120)
    image, logits = paint(label), coarse_logits(label, 4, grow=3)
    for max_side in (1024, 60):
        probabilities = edge_aware_upsample(logits, image, cell=120 / GRID, max_side=max_side)
        assert probabilities.shape == (4, 90, 120) and probabilities.dtype == np.float32
        np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-4)
        mask = edge_aware_mask(logits, image, cell=120 / GRID, max_side=max_side)
        assert mask.shape == (90, 120) and mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, probabilities.argmax(0))


def test_greyscale_image_and_a_single_class() -> None:
    label = two_regions("disc", 64)
    grey = paint(label)[..., 0]
    logits = coarse_logits(label, 2, grow=2)
    assert edge_aware_mask(logits, grey, cell=4).shape == (64, 64)
    assert iou(edge_aware_mask(logits, grey, cell=4, radius=4), label) > iou(logits_to_mask(logits, (64, 64))[0], label)
    one = np.zeros((1, 8, 8), np.float32)
    np.testing.assert_array_equal(edge_aware_upsample(one, grey, cell=4), 1.0)
    assert not edge_aware_mask(one, grey, cell=4).any()


def test_logits_of_the_image_size_are_not_changed() -> None:
    label = two_regions("disc", 64)
    logits = np.ascontiguousarray(resize_bilinear(coarse_logits(label, 2), (64, 64)))
    before = logits.copy()
    edge_aware_upsample(logits, paint(label), cell=4)
    np.testing.assert_array_equal(logits, before)


def test_default_radius_follows_the_cell() -> None:
    assert default_radius(0.4) == 1
    assert default_radius(16) == 8
    label = two_regions("disc")
    image, logits = paint(label), coarse_logits(label, 2, grow=4)
    np.testing.assert_array_equal(
        edge_aware_mask(logits, image, cell=16), edge_aware_mask(logits, image, cell=16, radius=default_radius(16))
    )


def test_working_size() -> None:
    assert working_size((3000, 2000), 1024) == (1024, 683)
    assert working_size((375, 500), 1024) == (375, 500)
    assert working_size((1, 5000), 100) == (1, 100)


def test_big_image_path_agrees_with_the_full_one() -> None:
    label = shapes(300, 420)
    image, logits = paint(label, seed=3), coarse_logits(label, 4, grow=6)
    cell = 420 / GRID
    full = edge_aware_mask(logits, image, cell=cell)
    small = edge_aware_mask(logits, image, cell=cell, max_side=180)
    assert small.shape == full.shape == label.shape
    assert (small != full).mean() < 0.02
    assert iou(small, label, 3) > iou(logits_to_mask(logits, label.shape)[0], label, 3)


def test_big_image_mask_never_holds_full_size_class_planes() -> None:
    classes, size = 16, (900, 1200)
    label = np.asarray(Image.fromarray(shapes(150, 200)).resize(size[::-1], Image.Resampling.NEAREST))
    image, logits = paint(label), coarse_logits(label, 4, grow=2)
    logits = np.concatenate([logits, np.full((classes - 4, MODEL_SIZE, MODEL_SIZE), -5, np.float32)])
    tracemalloc.start()
    try:
        mask = edge_aware_mask(logits, image, cell=1200 / GRID, max_side=200)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert mask.shape == size
    assert peak < classes * size[0] * size[1] * 4 / 4


GUIDE, SOURCE = np.zeros((8, 8, 3), np.float32), np.zeros((2, 8, 8), np.float32)
IMAGE, LOGITS = np.zeros((8, 8, 3), np.uint8), np.zeros((2, 4, 4), np.float32)


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: guided_filter(GUIDE, SOURCE, radius=0, eps=1e-3), CosaConfigError, "radius must be an integer >= 1"),
        (lambda: guided_filter(GUIDE, SOURCE, radius=2.5, eps=1e-3), CosaConfigError, "radius"),
        (lambda: guided_filter(GUIDE, SOURCE, radius=1, eps=0.0), CosaConfigError, "eps must be a finite number > 0"),
        (lambda: guided_filter(GUIDE, SOURCE, radius=1, eps=float("nan")), CosaConfigError, "eps"),
        (lambda: guided_filter(GUIDE, SOURCE[0], radius=1, eps=1e-3), CosaInputError, "(K, H, W)"),
        (lambda: guided_filter(GUIDE, SOURCE[:0], radius=1, eps=1e-3), CosaInputError, "K >= 1"),
        (lambda: guided_filter(GUIDE, SOURCE.astype(int), radius=1, eps=1e-3), CosaInputError, "float"),
        (lambda: guided_filter(GUIDE[..., :2], SOURCE, radius=1, eps=1e-3), CosaInputError, "(H, W, 3)"),
        (lambda: guided_filter(IMAGE, SOURCE, radius=1, eps=1e-3), CosaInputError, "divide a uint8 image by 255"),
        (lambda: guided_filter(GUIDE[:4], SOURCE, radius=1, eps=1e-3), CosaInputError, "4x8 but source is 8x8"),
        (lambda: edge_aware_mask(LOGITS[0], IMAGE, cell=4), CosaInputError, "(K, h, w)"),
        (lambda: edge_aware_mask(LOGITS[:0], IMAGE, cell=4), CosaInputError, "K >= 1"),
        (lambda: edge_aware_mask(LOGITS.astype(int), IMAGE, cell=4), CosaInputError, "float"),
        (lambda: edge_aware_mask(LOGITS, GUIDE, cell=4), CosaInputError, "image must be uint8"),
        (lambda: edge_aware_mask(LOGITS, IMAGE[..., :2], cell=4), CosaInputError, "(H, W, 3) RGB or (H, W)"),
        (lambda: edge_aware_mask(LOGITS, IMAGE[:0], cell=4), CosaInputError, "image must be"),
        (lambda: edge_aware_mask(LOGITS, IMAGE, cell=0), CosaConfigError, "cell must be a number > 0"),
        (lambda: edge_aware_mask(LOGITS, IMAGE, cell=float("inf")), CosaConfigError, "cell"),
        (lambda: edge_aware_mask(LOGITS, IMAGE, cell=4, radius=0), CosaConfigError, "or None to derive it"),
        (lambda: edge_aware_mask(LOGITS, IMAGE, cell=4, eps=-1.0), CosaConfigError, "eps"),
        (lambda: edge_aware_mask(LOGITS, IMAGE, cell=4, max_side=0), CosaConfigError, "max_side"),
        (lambda: edge_aware_upsample(LOGITS, IMAGE, cell=4, max_side=True), CosaConfigError, "max_side"),
        (lambda: edge_aware_mask(np.zeros((300, 4, 4), np.float32), IMAGE, cell=4), CosaInputError, "256 classes"),
    ],
)
def test_bad_arguments_raise_clear_errors(call: Callable[[], object], error: type[Exception], words: str) -> None:
    with pytest.raises(error) as caught:
        call()
    assert words in str(caught.value)

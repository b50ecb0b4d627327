"""Dense-CRF loss: bilateral-grid filter against the exact dense Gaussian filter, and the loss itself.

Stated tolerance of the grid approximation (defaults: cells of 0.75 sigma in space, 1 sigma in colour,
2 offset grids): relative L2 error of the filtered map < 8 %, energy within 5 % of the exact filter.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cosa_sdk.errors import CosaInputError
from cosa_sdk.training.method.crf_loss import (
    DenseCRFLoss,
    bilateral_features,
    dense_gaussian_filter,
    grid_gaussian_filter,
    lattice_features,
)
from cosa_sdk.training.method.permutohedral import lattice_filter

STEPS = DenseCRFLoss().steps


def _piecewise_image(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Flat colour regions plus mild noise: the hard case for a grid (many pixels at one colour)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, 3, 3, 3, generator=g) * 255
    img = F.interpolate(coarse, size=(h, w), mode="nearest") + torch.randn(b, 3, h, w, generator=g) * 3
    return img.clamp(0, 255)


def _probs(b: int, k: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.randn(b, k, 4, 4, generator=g) * 3, size=(h, w), mode="bilinear").softmax(1)


@pytest.mark.parametrize("sigma_xy", [50.0, 6.0])
def test_grid_filter_matches_exact_dense_filter(sigma_xy: float) -> None:
    img = _piecewise_image(2, 32, 32)
    feats = bilateral_features(img, sigma_xy=sigma_xy, sigma_rgb=15.0)
    values = _probs(2, 3, 32, 32).reshape(2, 3, -1)
    exact = dense_gaussian_filter(feats, values)
    approx = grid_gaussian_filter(feats, values, steps=STEPS)
    assert ((approx - exact).norm() / exact.norm()).item() < 0.08
    energy_err = ((values * approx).sum((1, 2)) - (values * exact).sum((1, 2))) / (values * exact).sum((1, 2))
    assert energy_err.abs().max().item() < 0.05
    # A single grid is clearly worse on flat colour regions: the offset grids are doing real work.
    single = grid_gaussian_filter(feats, values, steps=STEPS, shifts=1)
    assert (single - exact).norm() > (approx - exact).norm()


def test_colour_decorrelation_keeps_distances() -> None:
    img = _piecewise_image(1, 12, 10)
    values = _probs(1, 2, 12, 10).reshape(1, 2, -1)
    a = dense_gaussian_filter(bilateral_features(img, sigma_xy=5.0, sigma_rgb=15.0), values)
    b = dense_gaussian_filter(bilateral_features(img, sigma_xy=5.0, sigma_rgb=15.0, decorrelate=False), values)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_dense_filter_of_identical_pixels_counts_them() -> None:
    feats = torch.zeros(1, 5, 7)
    out = dense_gaussian_filter(feats, torch.ones(1, 1, 7))
    torch.testing.assert_close(out, torch.full((1, 1, 7), 7.0))


def _explicit_energy(img, probs, roi, cpl, weight, sigma_xy, sigma_rgb):
    """-(w/B) sum_k (R Q_k)^T [G * W (R Q_k)] with a dense kernel matrix, at half resolution."""
    small_img = img[:, :, ::2, ::2]
    q = F.interpolate(probs, scale_factor=0.5, mode="bilinear", recompute_scale_factor=True)
    r, lab = roi[:, ::2, ::2], cpl[:, ::2, ::2]
    gate = (r - q.amax(1)).masked_fill(lab == 255, 1.0).clamp_min(0).detach()
    b, k = q.shape[:2]
    feats = bilateral_features(small_img, sigma_xy=sigma_xy * 0.5, sigma_rgb=sigma_rgb, decorrelate=False)
    s = (q * r[:, None]).reshape(b, k, -1)
    total = 0
    for i in range(b):
        kernel = torch.exp(-0.5 * torch.cdist(feats[i].T, feats[i].T) ** 2)
        total = total + (s[i] * ((s[i] @ kernel) * gate[i].reshape(1, -1))).sum()
    return -weight * total / b


def test_loss_value_and_gradient_match_the_explicit_quadratic_form() -> None:
    img, probs = _piecewise_image(2, 16, 16), _probs(2, 3, 16, 16)
    roi = torch.ones(2, 16, 16)
    roi[1, :, 12:] = 0
    cpl = torch.randint(0, 3, (2, 16, 16))
    cpl[:, :5] = 255
    loss_fn = DenseCRFLoss(weight=1e-3, sigma_xy=20.0, filter="exact")
    expected = _explicit_energy(img, probs, roi, cpl, 1e-3, 20.0, 15.0)
    assert loss_fn(img, probs, roi, cpl).item() == pytest.approx(expected.item(), rel=1e-4)

    # With the gate uniform (all CPL ignored, full ROI) the official gradient is the true gradient.
    all_ignored = torch.full((2, 16, 16), 255)
    full_roi = torch.ones(2, 16, 16)
    p1 = probs.clone().requires_grad_(True)
    loss_fn(img, p1, full_roi, all_ignored).backward()
    p2 = probs.clone().requires_grad_(True)
    _explicit_energy(img, p2, full_roi, all_ignored, 1e-3, 20.0, 15.0).backward()
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-3, atol=1e-9)

    # The grid filter gives nearly the same loss.
    grid = DenseCRFLoss(weight=1e-3, sigma_xy=20.0, filter="grid")(img, probs, roi, cpl)
    assert grid.item() == pytest.approx(expected.item(), rel=0.05)


def test_loss_is_zero_outside_the_roi_and_checks_shapes() -> None:
    img, probs = _piecewise_image(1, 8, 8), _probs(1, 2, 8, 8)
    zero = DenseCRFLoss()(img, probs, torch.zeros(1, 8, 8), torch.zeros(1, 8, 8, dtype=torch.long))
    assert zero.item() == 0.0
    with pytest.raises(CosaInputError, match="roi"):
        DenseCRFLoss()(img, probs, torch.zeros(1, 4, 4), torch.zeros(1, 8, 8))
    with pytest.raises(CosaInputError, match="filter"):
        DenseCRFLoss(filter="bilateral")


def _smooth_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    coarse = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(seed)) * 255
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


def test_lattice_filters_all_classes_as_the_extension_filters_each() -> None:
    """The extension runs the lattice once per class channel; filtering K channels at once is the same map."""
    img = _smooth_image(13, 7)  # 91 pixels: the extension's padding of the last block of 4 takes part
    feats = lattice_features(img, sigma_xy=5.0, sigma_rgb=15.0)
    values = _probs(1, 3, 13, 7).reshape(1, 3, -1)
    together = lattice_filter(feats, values)
    for k in range(3):
        alone = lattice_filter(feats, values[:, k : k + 1])
        torch.testing.assert_close(together[:, k : k + 1], alone, rtol=1e-6, atol=1e-7)


def test_lattice_response_is_a_fraction_of_the_exact_gaussian() -> None:
    """The released kernel's energy is about 0.5-0.6x an exact Gaussian's on smooth natural-like images."""
    img = _smooth_image(48, 48, seed=3)
    feats = lattice_features(img, sigma_xy=50.0, sigma_rgb=15.0)
    values = _probs(1, 4, 48, 48).reshape(1, 4, -1)
    ratio = (values * lattice_filter(feats, values)).sum() / (values * dense_gaussian_filter(feats, values)).sum()
    assert 0.4 < float(ratio) < 0.7


def test_lattice_loss_is_the_default_and_differs_from_the_exact_one() -> None:
    img, probs = _smooth_image(32, 32), _probs(1, 3, 32, 32)
    roi, cpl = torch.ones(1, 32, 32), torch.zeros(1, 32, 32, dtype=torch.long)
    assert DenseCRFLoss().filter == "lattice"
    lattice = DenseCRFLoss()(img, probs, roi, cpl).item()
    exact = DenseCRFLoss(filter="exact")(img, probs, roi, cpl).item()
    assert lattice < 0 and exact < 0 and 1.3 < exact / lattice < 2.5

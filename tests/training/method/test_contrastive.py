"""Contrastive separation of co-existing classes."""

from __future__ import annotations

import itertools

import pytest
import torch

from cosa_sdk.errors import CosaInputError
from cosa_sdk.training.method.contrastive import contrastive_separation_loss


def _two_class_image(separation: float, d: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of a 4 x 4 image whose left half is class 1 and right half class 2."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(d, generator=g), torch.randn(d, generator=g)
    shared = (a + b) / 2
    feats = torch.empty(1, d, 4, 4)
    feats[0, :, :, :2] = (shared + separation * (a - shared))[:, None, None]
    feats[0, :, :, 2:] = (shared + separation * (b - shared))[:, None, None]
    feats = feats + 0.05 * torch.randn(1, d, 4, 4, generator=g)
    labels = torch.ones(1, 4, 4, dtype=torch.long)
    labels[0, :, 2:] = 2
    return feats, labels


def test_zero_not_nan_when_no_image_has_two_classes() -> None:
    feats = torch.randn(2, 8, 4, 4, requires_grad=True)
    cams = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.ones(2, 4, 4, dtype=torch.long)  # one class per image
    loss = contrastive_separation_loss(feats, cams, labels, torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(feats.grad).all() and torch.isfinite(cams.grad).all()


def test_feature_term_falls_as_the_two_classes_separate() -> None:
    cams = torch.zeros(1, 2, 4, 4)
    losses = []
    for sep in (0.05, 0.5, 1.0, 3.0):
        feats, labels = _two_class_image(sep)
        losses.append(contrastive_separation_loss(feats, cams, labels, torch.ones(1, 2), cam_weight=0.0).item())
    assert all(a > b for a, b in itertools.pairwise(losses))


def test_cam_term_penalises_co_activation() -> None:
    feats, labels = _two_class_image(1.0)
    overlapping = torch.ones(1, 2, 4, 4)
    separated = torch.zeros(1, 2, 4, 4)
    separated[0, 0, :, :2] = 3.0
    separated[0, 1, :, 2:] = 3.0
    lo = contrastive_separation_loss(feats, separated, labels, torch.ones(1, 2))
    hi = contrastive_separation_loss(feats, overlapping, labels, torch.ones(1, 2))
    assert lo.item() < hi.item()
    cams = overlapping.clone().requires_grad_(True)
    contrastive_separation_loss(feats, cams, labels, torch.ones(1, 2)).backward()
    assert torch.all(cams.grad[0, 0, :, :2] < 0) and torch.all(cams.grad[0, 1, :, :2] > 0)


def test_absent_classes_background_and_ignore_do_not_take_part() -> None:
    feats, labels = _two_class_image(1.0)
    cams = torch.zeros(1, 2, 4, 4)
    # class 2 is not in the image labels: no co-existence, loss 0
    assert contrastive_separation_loss(feats, cams, labels, torch.tensor([[1.0, 0.0]])).item() == 0.0
    base = contrastive_separation_loss(feats, cams, labels, torch.ones(1, 2))
    noisy = labels.clone()
    noisy[0, 0, 0] = 0
    noisy[0, 3, 3] = 255
    feats2 = feats.clone()
    feats2[0, :, 0, 0] = 100.0  # a background and an ignored pixel with wild features
    feats2[0, :, 3, 3] = -100.0
    other = contrastive_separation_loss(feats2, cams, noisy, torch.ones(1, 2))
    assert torch.isfinite(other) and abs(other.item() - base.item()) < 0.5


def test_accepts_spl_probabilities_at_a_finer_grid_and_checks_shapes() -> None:
    feats, labels = _two_class_image(1.0)
    probs = torch.zeros(1, 3, 8, 8)
    probs[0, 1, :, :4] = 1.0
    probs[0, 2, :, 4:] = 1.0
    cams = torch.zeros(1, 2, 4, 4)
    a = contrastive_separation_loss(feats, cams, probs, torch.ones(1, 2))
    b = contrastive_separation_loss(feats, cams, labels, torch.ones(1, 2))
    torch.testing.assert_close(a, b)
    with pytest.raises(CosaInputError, match="grid"):
        contrastive_separation_loss(feats, torch.zeros(1, 2, 2, 2), labels, torch.ones(1, 2))

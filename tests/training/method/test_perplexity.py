"""Soft perplexity-based pixel weights."""

from __future__ import annotations

import pytest
import torch

from cosa_sdk.errors import CosaInputError
from cosa_sdk.training.method.losses import balanced_seg_loss
from cosa_sdk.training.method.perplexity import perplexity_weights


def test_one_hot_cam_pixels_get_weight_one() -> None:
    cams = torch.zeros(1, 3, 2, 2)
    cams[0, 0, 0, 0] = 1.0
    cams[0, 2, 1, 1] = 1.0
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    w = perplexity_weights(cams, labels, bg_threshold=0.5)
    assert w[0, 0, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert w[0, 1, 1].item() == pytest.approx(1.0, abs=1e-6)
    assert torch.all(w > 0) and torch.all(w <= 1)


def test_weights_fall_as_the_distribution_flattens() -> None:
    t = 0.5
    levels = torch.linspace(0.0, 1.0, 6)  # the second class rises to meet the first
    cams = torch.zeros(1, 2, 1, 6)
    cams[0, 0] = 1.0
    cams[0, 1, 0] = levels
    w = perplexity_weights(cams, torch.tensor([[1.0, 1.0]]), bg_threshold=t)[0, 0]
    assert torch.all(w[1:] < w[:-1])
    # Fully flat (every logit equal to the threshold): the lowest weight, PP_ref / K.
    flat = perplexity_weights(torch.full((1, 2, 1, 1), t), torch.tensor([[1.0, 1.0]]), bg_threshold=t)
    q_ref = torch.softmax(torch.tensor([t, 1.0, 0.0]) / 0.1, dim=0)
    pp_ref = torch.exp(-(q_ref * q_ref.log()).sum())
    assert flat.item() == pytest.approx(pp_ref.item() / 3, rel=1e-5)
    assert flat.item() < w.min().item()
    for beta, smaller in ((2.0, True), (0.5, False)):
        wb = perplexity_weights(cams, torch.tensor([[1.0, 1.0]]), bg_threshold=t, beta=beta)[0, 0]
        assert bool(torch.all(wb[1:] < w[1:])) is smaller


def test_absent_classes_do_not_count() -> None:
    cams = torch.zeros(1, 3, 1, 1)
    cams[0, 0] = 1.0
    cams[0, 1] = 1.0  # absent: would make the pixel ambiguous if counted
    w = perplexity_weights(cams, torch.tensor([[1.0, 0.0, 0.0]]), bg_threshold=0.5)
    assert w.item() == pytest.approx(1.0, abs=1e-6)
    no_class = perplexity_weights(torch.rand(1, 2, 3, 3), torch.zeros(1, 2), bg_threshold=0.5)
    torch.testing.assert_close(no_class, torch.ones(1, 3, 3))


def test_threshold_maps_and_use_as_loss_weights() -> None:
    cams = torch.rand(2, 3, 4, 4)
    labels = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    w_float = perplexity_weights(cams, labels, bg_threshold=0.4)
    w_map = perplexity_weights(cams, labels, bg_threshold=torch.full((2, 4, 4), 0.4))
    torch.testing.assert_close(w_float, w_map)
    logits = torch.randn(2, 4, 4, 4, requires_grad=True)
    seg_labels = torch.randint(0, 4, (2, 4, 4))
    weighted = balanced_seg_loss(logits, seg_labels, pixel_weights=w_float)
    assert weighted.item() < balanced_seg_loss(logits, seg_labels).item()
    weighted.backward()
    with pytest.raises(CosaInputError, match="bg_threshold"):
        perplexity_weights(cams, labels, bg_threshold=torch.zeros(3, 5))

"""Classification loss, balanced seg loss (L_bal / L_c2s) and seg-to-CAM loss (L_s2c)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cosa_sdk.errors import CosaInputError
from cosa_sdk.training.method.losses import balanced_seg_loss, classification_loss, seg_to_cam_loss


def test_all_ignore_batch_gives_zero_with_finite_gradients() -> None:
    logits = torch.randn(2, 4, 5, 5, requires_grad=True)
    labels = torch.full((2, 5, 5), 255)
    loss = balanced_seg_loss(logits, labels)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.isfinite(logits.grad).all() and torch.all(logits.grad == 0)


def test_balanced_loss_weighs_background_and_foreground_means() -> None:
    logits = torch.randn(1, 3, 4, 4)
    labels = torch.tensor([[[0, 0, 0, 0], [0, 0, 0, 255], [1, 2, 0, 0], [0, 0, 0, 0]]])
    ce = F.cross_entropy(logits, labels.clamp(max=2), reduction="none")[0]
    bg = ce[labels[0] == 0].mean()
    fg = ce[(labels[0] == 1) | (labels[0] == 2)].mean()
    for alpha in (0.5, 0.2):
        expected = (1 - alpha) * bg + alpha * fg
        assert balanced_seg_loss(logits, labels, fg_alpha=alpha).item() == pytest.approx(expected.item(), rel=1e-5)


def test_pixel_weights_scale_each_pixel_but_not_the_counts() -> None:
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    plain = balanced_seg_loss(logits, labels)
    torch.testing.assert_close(balanced_seg_loss(logits, labels, pixel_weights=torch.ones(2, 4, 4)), plain)
    torch.testing.assert_close(balanced_seg_loss(logits, labels, pixel_weights=torch.full((2, 4, 4), 0.5)), plain / 2)
    assert balanced_seg_loss(logits, labels, pixel_weights=torch.zeros(2, 4, 4)).item() == 0.0
    with pytest.raises(CosaInputError, match="pixel_weights"):
        balanced_seg_loss(logits, labels, pixel_weights=torch.ones(4, 4))


def test_seg_loss_rejects_labels_outside_the_classes() -> None:
    logits = torch.randn(1, 3, 2, 2)
    with pytest.raises(CosaInputError, match="outside"):
        balanced_seg_loss(logits, torch.tensor([[[0, 1], [7, 255]]]))
    with pytest.raises(CosaInputError, match="B x H x W"):
        balanced_seg_loss(logits, torch.zeros(1, 4, 4, dtype=torch.long))


def test_classification_loss_is_mean_binary_cross_entropy() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    expected = (
        -math.log(torch.sigmoid(torch.tensor(2.0)).item())
        - math.log(1 - torch.sigmoid(torch.tensor(-1.0)).item())
        + math.log(2)
    ) / 3
    assert classification_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(CosaInputError):
        classification_loss(logits, labels[:, :2])


def test_seg_to_cam_loss_pushes_the_spl_class_up_and_others_down() -> None:
    cams = torch.full((1, 2, 2, 2), 0.5, requires_grad=True)
    spl = torch.zeros(1, 3, 4, 4)
    spl[:, 1] = 1.0  # every pixel belongs to class 1
    seg_to_cam_loss(cams, spl).backward()
    assert torch.all(cams.grad[0, 0] < 0)  # raising class 1's CAM lowers the loss
    assert torch.all(cams.grad[0, 1] > 0)
    # Negative CAMs are ReLU'd: no gradient, and the loss cannot go below ln 2 per negative entry.
    neg = torch.full((1, 2, 2, 2), -3.0, requires_grad=True)
    loss = seg_to_cam_loss(neg, torch.zeros(1, 3, 2, 2))
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)
    loss.backward()
    assert torch.all(neg.grad == 0)
    with pytest.raises(CosaInputError, match="C \\+ 1"):
        seg_to_cam_loss(cams, torch.zeros(1, 2, 4, 4))

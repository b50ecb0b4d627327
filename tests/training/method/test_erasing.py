"""CAM erasing: each labelled class must also score at the best cell beside its erased strongest cells."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from cosa_sdk.errors import CosaConfigError, CosaInputError  # noqa: E402
from cosa_sdk.training.config import TrainConfig  # noqa: E402
from cosa_sdk.training.method.erasing import erased_cam_loss  # noqa: E402
from cosa_sdk.training.method.step import CoSALosses  # noqa: E402

from .test_step import _setup  # noqa: E402


def _cam() -> torch.Tensor:
    """One image, two classes on a 1 x 8 strip: class 0 peaks at cell 2 (4.0), with 3.0 beside it at cell 3,
    1.0 at cell 5 and 2.5 far away at cell 7; class 1 is negative everywhere."""
    cam = torch.full((1, 2, 1, 8), -1.0)
    cam[0, 0, 0] = torch.tensor([-1.0, 0.5, 4.0, 3.0, -1.0, 1.0, -1.0, 2.5])
    return cam


@pytest.mark.parametrize(("reach", "best"), [(1, 0.5), (3, 1.0), (0, 2.5)])
def test_the_best_cell_left_within_reach_is_scored(reach, best):
    cam = _cam().requires_grad_(True)
    labels = torch.tensor([[1.0, 0.0]])
    # threshold 0.7 of the peak 4.0 erases cells 2 and 3 (4.0 and 3.0); reach 1 leaves cells 1 and 4
    loss = erased_cam_loss(cam, labels, threshold=0.7, reach=reach)
    assert loss.item() == pytest.approx(F.softplus(torch.tensor(-best)).item(), rel=1e-6)
    loss.backward()
    grad = cam.grad[0, 0, 0]
    assert grad[2] == 0 and grad[3] == 0  # erased cells learn nothing from this loss
    assert (grad != 0).sum() == 1 and grad[cam[0, 0, 0].detach() == best].item() < 0
    assert (cam.grad[0, 1] == 0).all()  # an absent class is not asked to score


def test_a_lower_threshold_erases_more():
    labels = torch.tensor([[1.0, 0.0]])
    # at 0.5 of 4.0 the far cell (2.5) is erased too; cell 5 (1.0) is the best one left
    loss = erased_cam_loss(_cam(), labels, threshold=0.5, reach=0)
    assert loss.item() == pytest.approx(F.softplus(torch.tensor(-1.0)).item(), rel=1e-6)


def test_padding_is_neither_erased_nor_scored():
    labels = torch.tensor([[1.0, 0.0]])
    valid = torch.ones(1, 1, 8, dtype=torch.bool)
    valid[0, 0, 7] = False  # the far cell is padding
    loss = erased_cam_loss(_cam(), labels, threshold=0.7, reach=0, valid=valid)
    assert loss.item() == pytest.approx(F.softplus(torch.tensor(-1.0)).item(), rel=1e-6)


def test_nothing_to_score_gives_zero_with_a_graph():
    cam = _cam().requires_grad_(True)
    for labels in (torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 1.0]])):  # no label; a class never positive
        loss = erased_cam_loss(cam, labels)
        assert loss.item() == 0.0 and loss.requires_grad
    flat = torch.full((1, 1, 2, 2), 3.0)  # every cell at the peak: all erased, none left
    assert erased_cam_loss(flat, torch.ones(1, 1)).item() == 0.0


def test_bad_shapes_and_reach_are_named():
    with pytest.raises(CosaInputError, match="B x C x h x w CAMs and B x C labels"):
        erased_cam_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4))
    with pytest.raises(CosaInputError, match="reach must be 0"):
        erased_cam_loss(torch.zeros(1, 1, 4, 4), torch.ones(1, 1), reach=-1)


def test_the_step_adds_the_weighted_term_from_the_first_step():
    cfg, network, batch = _setup(0.0)
    cfg = dataclasses.replace(cfg, loss_warmup_iters=5, cam_erase=2.0, cam_erase_reach=0)
    with torch.no_grad():
        cam = network(batch["strong"]).cam
        expected = erased_cam_loss(cam, batch["labels"], threshold=cfg.cam_erase_threshold, reach=0).item()
        for step in (1, 6):  # in the classification warm-up and after it
            total, terms, _ = CoSALosses(cfg, grid_size=4, batch_size=2)(network, network, batch, step=step)
            off = CoSALosses(dataclasses.replace(cfg, cam_erase=0.0), grid_size=4, batch_size=2)
            total_off, terms_off, _ = off(network, network, batch, step=step)
            assert "erase" not in terms_off
            assert expected > 0 and terms["erase"] == pytest.approx(expected, rel=1e-5)
            assert total.item() == pytest.approx(total_off.item() + 2.0 * expected, rel=1e-5)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("cam_erase", -1.0, "cam_erase must be a loss weight >= 0"),
        ("cam_erase", "on", "cam_erase must be a loss weight >= 0"),
        ("cam_erase_threshold", 0.0, "cam_erase_threshold must be in \\(0, 1\\]"),
        ("cam_erase_threshold", 1.5, "cam_erase_threshold must be in \\(0, 1\\]"),
        ("cam_erase_reach", -1, "cam_erase_reach must be a whole number"),
        ("cam_erase_reach", 1.5, "cam_erase_reach must be a whole number"),
    ],
)
def test_bad_erase_settings_are_named(key, value, message):
    with pytest.raises(CosaConfigError, match=message):
        TrainConfig(**{key: value})


def test_erase_settings_matter_only_when_erasing_is_on():
    base = TrainConfig()
    assert base.differences(dataclasses.replace(base, cam_erase_reach=5)) == {}
    on = dataclasses.replace(base, cam_erase=1.0)
    assert set(on.differences(dataclasses.replace(on, cam_erase_reach=5))) == {"cam_erase_reach"}

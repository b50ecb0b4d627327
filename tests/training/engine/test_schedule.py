"""Learning-rate schedule and the two-group AdamW."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cosa_sdk.errors import CosaConfigError
from cosa_sdk.training.engine.schedule import build_optimizer, poly_warmup_lr, set_lr


class TinyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.backbone.register_parameter("frozen", nn.Parameter(torch.zeros(3), requires_grad=False))
        self.classifier = nn.Linear(4, 2, bias=False)
        self.decoder = nn.Linear(4, 3)


def test_schedule_warms_up_linearly_then_decays_to_zero() -> None:
    kw = {"warmup_iter": 10, "max_iter": 100, "warmup_ratio": 0.0, "power": 1.0}
    assert poly_warmup_lr(0, 1.0, **kw) == 0.0
    assert poly_warmup_lr(5, 1.0, **kw) == pytest.approx(0.5)
    assert poly_warmup_lr(10, 1.0, **kw) == pytest.approx(0.9)
    assert poly_warmup_lr(100, 1.0, **kw) == 0.0
    assert poly_warmup_lr(150, 1.0, **kw) == 0.0  # floored, no complex numbers past max_iter
    with pytest.raises(CosaConfigError):
        poly_warmup_lr(0, 1.0, max_iter=0)


def test_build_optimizer_splits_backbone_and_heads() -> None:
    model = TinyModel()
    opt = build_optimizer(model, lr=6e-5)
    assert isinstance(opt, torch.optim.AdamW)
    backbone, heads = opt.param_groups
    assert backbone["lr"] == backbone["base_lr"] == 6e-5
    assert heads["lr"] == pytest.approx(6e-4) and heads["base_lr"] == pytest.approx(6e-4)
    assert {id(p) for p in backbone["params"]} == {id(p) for p in model.backbone.parameters() if p.requires_grad}
    assert len(heads["params"]) == 3  # classifier weight, decoder weight + bias
    assert all(g["weight_decay"] == 0.01 and g["betas"] == (0.9, 0.999) for g in opt.param_groups)
    with pytest.raises(CosaConfigError, match="backbone"):
        build_optimizer(nn.Linear(2, 2), lr=1e-3)


def test_set_lr_uses_each_groups_base_lr() -> None:
    opt = build_optimizer(TinyModel(), lr=1e-4, head_lr_mult=5.0)
    lrs = set_lr(opt, 50, warmup_iter=10, max_iter=100, warmup_ratio=1e-6, power=0.9)
    expected = [poly_warmup_lr(50, base, warmup_iter=10, max_iter=100) for base in (1e-4, 5e-4)]
    assert lrs == pytest.approx(expected)
    assert [g["lr"] for g in opt.param_groups] == lrs
    assert [g["base_lr"] for g in opt.param_groups] == pytest.approx([1e-4, 5e-4])

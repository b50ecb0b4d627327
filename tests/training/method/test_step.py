"""CoSALosses: how L_c2s mixes the pseudo-labels of the main and the auxiliary CAM (`aux_cpl_weight`)."""

from __future__ import annotations

import dataclasses
import json

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from cosa_sdk.errors import CosaConfigError  # noqa: E402
from cosa_sdk.training.config import TrainConfig, apply_overrides, preset  # noqa: E402
from cosa_sdk.training.method.losses import balanced_seg_loss  # noqa: E402
from cosa_sdk.training.method.step import CoSALosses  # noqa: E402
from cosa_sdk.training.model.network import CoSANetwork  # noqa: E402

SIZE = 56
SMALL = [
    "backbone_weights=none",
    "backbone_kwargs=" + json.dumps({"embed_dim": 48, "depth": 3, "num_heads": 3}),
    "freeze_blocks=0",
    "aux_layer=-2",
    "decoder_channels=8",
    f"crop_size={SIZE}",
    "loss_warmup_iters=0",
]


def _setup(aux_cpl_weight: float):
    cfg = dataclasses.replace(apply_overrides(preset("tiny"), SMALL), aux_cpl_weight=aux_cpl_weight)
    torch.manual_seed(0)
    network = CoSANetwork.from_train_config(cfg, num_classes=3).eval()
    g = torch.Generator().manual_seed(1)
    image = torch.randn(2, 3, SIZE, SIZE, generator=g)
    batch = {
        "weak": image,
        "strong": image,
        "labels": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]),
        "box": torch.tensor([[0, SIZE, 0, SIZE], [0, SIZE, 0, SIZE]]),
    }
    return cfg, network, batch


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_c2s_takes_the_aux_cams_pseudo_label_at_its_weight(beta):
    cfg, network, batch = _setup(beta)
    losses = CoSALosses(cfg, grid_size=4, batch_size=2)
    with torch.no_grad():
        _, terms, pseudo = losses(network, network, batch, step=1)
        seg = F.interpolate(network(batch["strong"]).seg, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        main = balanced_seg_loss(seg, pseudo.cpl, fg_alpha=cfg.fg_alpha).item()
        aux = balanced_seg_loss(seg, pseudo.cpl_aux, fg_alpha=cfg.fg_alpha).item()
    assert not torch.equal(pseudo.cpl, pseudo.cpl_aux)  # two heads, two pseudo-labels: the weight matters
    assert terms["c2s"] == pytest.approx((1 - beta) * main + beta * aux, rel=1e-5)


@pytest.mark.parametrize("value", [-0.1, 1.5, True, "half"])
def test_an_aux_weight_outside_0_to_1_is_named(value):
    with pytest.raises(CosaConfigError, match="aux_cpl_weight must be in \\[0, 1\\]"):
        TrainConfig(aux_cpl_weight=value)

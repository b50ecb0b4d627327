"""Every preset's recipe: what it states (tags, batch, loss set, selection rule) and a few bf16-autocast
iterations of it on the CPU at a small size, so dtype errors surface before a GPU run does."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

torch = pytest.importorskip("torch")

from cosa_sdk.errors import CosaConfigError  # noqa: E402
from cosa_sdk.training.config import BEST_METRICS, PRESETS, apply_overrides, preset  # noqa: E402
from cosa_sdk.training.engine.iteration import TrainingIteration, per_process_batch  # noqa: E402
from cosa_sdk.training.model.network import CoSANetwork  # noqa: E402

SMALL = {
    "backbone_weights": "none",
    "backbone_kwargs": json.dumps({"embed_dim": 48, "depth": 3, "num_heads": 3}),
    "freeze_blocks": "0",
    "aux_layer": "-2",
    "decoder_channels": "8",
    "crop_size": "48",
    "batch_size": "2",
    "iters": "4",
    "loss_warmup_iters": "1",
    "lr_warmup_iters": "1",
    "amp": "true",
}


@pytest.mark.parametrize("name", ["official", "voc", "coco"])
def test_gpu_presets_name_the_released_weights_and_loss_set(name):
    cfg = preset(name)
    assert cfg.backbone == "vit_base_patch16_224.orig_in21k_ft_in1k"  # timm's copy of jx_vit_base_p16_224
    assert cfg.backbone_weights == "timm"
    assert not (cfg.perplexity or cfg.contrastive or cfg.dynamic_threshold)
    assert cfg.crf_loss and cfg.crf_filter == "lattice" and cfg.warmup_zero_terms
    assert cfg.batch_size == (8 if name == "coco" else 4)


def test_official_selects_checkpoints_by_the_released_rule():
    assert (preset("official").best_metric, preset("official").eval_tta) == ("seg_miou_gt_filtered", True)
    assert all(preset(n).best_metric in BEST_METRICS for n in PRESETS)


def test_global_batch_splits_over_processes_or_says_how_to_fix_it():
    assert per_process_batch(4, 2) == 2 and per_process_batch(8, 1) == 8
    with pytest.raises(CosaConfigError, match="does not split over 3 processes"):
        per_process_batch(4, 3)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_few_bf16_autocast_iterations_of_each_preset_on_cpu(name):
    """Warm-up and co-training iterations (CRF loss, EMA, every switch the preset turns on) under autocast."""
    base = preset(name)
    changes = dict(SMALL)
    if base.backbone.startswith("vit_small_patch14"):
        changes["crop_size"] = "56"
    cfg = apply_overrides(base, [f"{k}={v}" for k, v in changes.items()])
    cfg = dataclasses.replace(cfg, pseudo_scales=cfg.pseudo_scales[:2])
    torch.manual_seed(0)
    online = CoSANetwork.from_train_config(cfg, num_classes=3)
    iteration = TrainingIteration.build(cfg, online)
    size = cfg.crop_size
    g = torch.Generator().manual_seed(1)
    before = {k: v.clone() for k, v in online.state_dict().items()}
    for step in range(3):
        batch = {
            "weak": torch.randn(2, 3, size, size, generator=g),
            "strong": torch.randn(2, 3, size, size, generator=g),
            "labels": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]),
            "box": torch.tensor([[0, size, 0, size], [4, size - 8, 2, size]]),
        }
        result = iteration(batch, step)
        assert math.isfinite(float(result.loss))
        assert all(math.isfinite(v) for v in result.terms.values())
    assert {"c2s", "s2c"} <= set(result.terms)
    if cfg.crf_loss:
        assert "reg" in result.terms
    changed = [k for k, v in online.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("decoder.") for k in changed)
    assert all(p.dtype == torch.float32 for p in online.parameters())


@pytest.mark.parametrize("name", ["official", "voc", "coco", "tiny"])  # the presets older than ADDED_KEYS
def test_a_run_saved_before_the_new_keys_still_means_what_it_meant(name):
    """Older records lack crf_filter / warmup_zero_terms / best_metric / eval_tta: they read back as the
    behaviour of the code that wrote them, so `tiny` runs resume and GPU-preset runs name the change."""
    from cosa_sdk.training.config import ADDED_KEYS, TrainConfig

    current = preset(name)
    old = {k: v for k, v in current.to_dict().items() if k not in ADDED_KEYS}
    differences = TrainConfig.from_dict(old).differences(current)
    if name == "tiny":
        # the one change of meaning since: tiny now rescales from the eval square, and an old run says so
        assert differences == {"rescale_base": ("image", "eval")}
        current = dataclasses.replace(current, rescale_base="image")
        assert TrainConfig.from_dict(old).differences(current) == {}
        assert TrainConfig.from_dict(old).differences(current, supervision="full") == {}
        # a fully supervised run that trained no classifier, resumed with one, says so
        changed = dataclasses.replace(current, full_class_loss=True)
        assert TrainConfig.from_dict(old).differences(changed, supervision="full") == {"full_class_loss": (False, True)}
        assert TrainConfig.from_dict(old).differences(changed) == {}  # weakly supervised: it changes nothing
        assert TrainConfig.from_dict(old).rescale_base_size is None  # images rescaled from their own size
    else:
        assert "warmup_zero_terms" in differences and "crf_filter" in differences


def test_rescale_base_picks_the_side_training_rescales_from():
    tiny = preset("tiny")
    assert dataclasses.replace(tiny, rescale_base="image").rescale_base_size is None
    assert dataclasses.replace(tiny, rescale_base="eval", eval_size=None).rescale_base_size == tiny.crop_size
    assert dataclasses.replace(tiny, rescale_base="eval", eval_size=252).rescale_base_size == 252
    with pytest.raises(CosaConfigError, match=r"rescale_base must be 'image'.*or 'eval'"):
        dataclasses.replace(tiny, rescale_base="native")


def test_the_cpu_presets_drop_the_aux_cams_pseudo_label_and_the_gpu_presets_keep_it():
    """`tiny` and `cpu` train the seg stream on the main CAM's pseudo-label alone
    (docs/benchmarks.md, "Half of what the seg stream learned came from the weaker CAM (`aux_cpl_weight`)");
    the GPU presets keep the released mix."""
    assert all(preset(name).aux_cpl_weight == 0.0 for name in ("tiny", "cpu"))
    assert all(preset(name).aux_cpl_weight == 0.5 for name in ("official", "voc", "coco"))

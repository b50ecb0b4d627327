"""A tiny training run for tests that train: a small, fast variant of the `tiny` preset on generated data.

Used by the engine tests (tests/training/engine/test_trainer.py), the ablation tests, the demo tests and the
data tests that train; request the `cosa_cache` fixture (tests/conftest.py) so the generated data stays
in the session's temporary folder.
"""

from __future__ import annotations

import dataclasses

from cosa_sdk.training.config import preset

DATA = "synthetic:n_train=12,n_val=4,size=64,seed=3"
# A small, fast variant of the tiny preset: random-init ViT-Tiny, 64 px crops, pseudo-labels from step 3.
TINY = {
    "backbone": "vit_tiny_patch16_224",
    "backbone_weights": None,
    "freeze_blocks": 0,
    "crop_size": 64,
    "batch_size": 2,
    "loss_warmup_iters": 2,
    "lr_warmup_iters": 2,
    "eval_every": 3,
    "checkpoint_every": 3,
    "sample_every": 3,
    "num_workers": 0,
    "decoder_channels": 16,
    "dilation": 2,
    "progress": False,
    "log_every": 1,
    "pseudo_scales": (1.0, 0.5),
}


def _as_override(key: str, value) -> str:
    """The `key=value` text `cosa train` accepts for one TINY entry."""
    if value is None:
        text = "none"
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, tuple):
        text = ",".join(str(v) for v in value)
    else:
        text = str(value)
    return f"{key}={text}"


TINY_OVERRIDES = [_as_override(key, value) for key, value in TINY.items()]


def tiny_config(**changes):
    return dataclasses.replace(preset("tiny"), **{**TINY, "iters": 6, **changes})

"""The rows of benchmarks/ablation.py: each row is the preset with a few config keys changed.

Its module docstring says what every row stands for; `row_config` turns a row into the config of one run.
"""

from __future__ import annotations

import dataclasses

from cosa_sdk.training.config import TrainConfig

ROWS: dict[str, dict] = {
    "cam-baseline": {"loss_warmup_iters": 10**9},
    "released": {},
    "+dynamic": {"dynamic_threshold": True},
    "+perplexity": {"perplexity": True},
    "+contrastive": {"contrastive": True},
    "ppl+csc": {"perplexity": True, "contrastive": True},
    "all-three": {"dynamic_threshold": True, "perplexity": True, "contrastive": True},
    "uniform": {"label_set_balance": 0.0},
    "+affinity": {"cam_refine": True},
    "+crf-loss": {"crf_loss": True},
    "no-crf-loss": {"crf_loss": False},
    "+aux-cpl": {"aux_cpl_weight": 0.5},
    "no-aux-cpl": {"aux_cpl_weight": 0.0},
    "+detail": {"detail_channels": 32},
    "avg-pool": {"cam_pool": "avg"},
    "+class-paste": {"class_paste": 0.5},
    "+erase": {"cam_erase": 1.0},
    "full": {},
    "full+detail": {"detail_channels": 32},
}
TECHNIQUES = ("dynamic_threshold", "perplexity", "contrastive")


def row_config(row: str, base: TrainConfig, seed: int) -> TrainConfig:
    off = dict.fromkeys(TECHNIQUES, False)
    return dataclasses.replace(
        base, **{**off, **ROWS[row]}, seed=seed, progress=False, eval_every=base.iters, sample_every=10**9
    )

"""Datasets: VOC, COCO, custom weakly labelled folders and the embedded synthetic benchmark.

`build_dataset(spec, split, ...)` is the one entry point the engine uses; training splits give
seeded weak/strong views (`TrainDataset`), "val" gives evaluation samples (`EvalDataset`).
`resolve_split(spec, "train")` says which split training reads (VOC: train_aug when present, or the
one pinned by `voc:PATH?split=NAME`).
"""

from __future__ import annotations

from cosa_sdk.constants import IMAGENET_MEAN, IMAGENET_STD
from cosa_sdk.training.data.build import build_dataset, data_summary, read_index, resolve_split
from cosa_sdk.training.data.common import IGNORE_INDEX, Item, ItemIndex, seed_worker
from cosa_sdk.training.data.datasets import EvalDataset, TrainDataset, collate_eval
from cosa_sdk.training.data.readers.synthetic import ensure_synthetic, generate_synthetic
from cosa_sdk.training.data.sampling import TrainKeySampler
from cosa_sdk.training.data.spec import DataSpec, parse_data_spec

__all__ = [
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataSpec",
    "EvalDataset",
    "Item",
    "ItemIndex",
    "TrainDataset",
    "TrainKeySampler",
    "build_dataset",
    "collate_eval",
    "data_summary",
    "ensure_synthetic",
    "generate_synthetic",
    "parse_data_spec",
    "read_index",
    "resolve_split",
    "seed_worker",
]

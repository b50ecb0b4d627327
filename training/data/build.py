"""`build_dataset`: from a spec string and a split to a ready torch Dataset.

The `split` argument of `read_index` / `build_dataset` is a *role* when it is "train" or "val":
"train" (the training role) reads the split pinned by `?split=NAME` in the spec, else the kind's
default (VOC: `train_aug` when the SBD augmentation is present, else `train` with a warning);
"val" (the evaluation role) always reads `val`, a pinned split applies to training only. Any
other split name of the kind (e.g. "train_aug") is read as is. `resolve_split` gives the answer.
A kind's splits, default training split and reader are its entry in `readers.READERS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cosa_sdk.constants import IMAGENET_MEAN, IMAGENET_STD
from cosa_sdk.errors import CosaConfigError
from cosa_sdk.training.data.common import ItemIndex
from cosa_sdk.training.data.datasets import EvalDataset, TrainDataset
from cosa_sdk.training.data.readers import READERS
from cosa_sdk.training.data.spec import DataSpec, parse_data_spec


def resolve_split(spec: str | DataSpec, role: str) -> str:
    """The split that `role` ("train": training, "val": evaluation, or a split name) reads from `spec`.

    For VOC without a pinned split this looks at the folder, and logs a warning when the training
    role falls back from `train_aug` to `train`.
    """
    spec = parse_data_spec(spec) if isinstance(spec, str) else spec
    reader = READERS[spec.kind]
    if role not in reader.splits:
        raise CosaConfigError(f"{spec.kind} datasets have the splits {', '.join(reader.splits)}, not {role!r}.")
    if role != "train":
        return role
    if spec.split is not None:
        return spec.split
    return reader.default_train_split(spec)


def data_summary(spec: str | DataSpec, dataset: TrainDataset | EvalDataset) -> str:
    """The line `cosa train` prints before training: `data: voc:/path (split train_aug, 10582 images)`."""
    spec = parse_data_spec(spec) if isinstance(spec, str) else spec
    return f"data: {spec} (split {dataset.split}, {len(dataset)} images)"


def read_index(spec: str | DataSpec, split: str, *, cache_root: Path | None = None) -> ItemIndex:
    """Resolve the items of one split or role (see `resolve_split`; no decoding).

    Generates the synthetic benchmark on first use. `ItemIndex.split` names the split read.
    """
    spec = parse_data_spec(spec) if isinstance(spec, str) else spec
    split = resolve_split(spec, split)
    return READERS[spec.kind].read(spec, split, cache_root)


def build_dataset(
    spec: str | DataSpec,
    split: str,
    *,
    crop_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    seed: int = 0,
    supervision: str = "weak",
    rescale_range: tuple[float, float] = (0.5, 2.0),
    base_size: int | None = None,
    eval_size: int | None = None,
    mode: str | None = None,
    blur_prob: float = 0.5,
    cache_root: Path | None = None,
) -> TrainDataset | EvalDataset:
    """Build the dataset of one split or role ("train" resolves as in `resolve_split`).

    The dataset's `split` attribute names the split read and `len()` its images.
    `mode` picks the sample type: "train" (weak/strong views, needs crop_size) or "eval" (image at
    eval_size + mask at the original size); by default "eval" for split "val", else "train".
    `mean`/`std` are on the 0-1 scale. `cache_root` overrides where `synthetic` is generated.
    """
    mode = mode or ("eval" if split == "val" else "train")
    if mode not in ("train", "eval"):
        raise CosaConfigError(f"mode must be 'train' or 'eval', got {mode!r}.")
    if mode == "train" and crop_size is None:
        raise CosaConfigError("a training dataset needs crop_size (e.g. 448 for ViT-B/16, 224 for the CPU demo).")
    index = read_index(spec, split, cache_root=cache_root)
    if mode == "eval":
        return EvalDataset(index, mean=mean, std=std, eval_size=eval_size)
    return TrainDataset(
        index,
        crop_size=crop_size,
        mean=mean,
        std=std,
        seed=seed,
        rescale_range=rescale_range,
        base_size=base_size,
        blur_prob=blur_prob,
        supervision=supervision,
    )

"""`build_dataset`: from a spec string and a split to a ready torch Dataset."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cosa_sdk.errors import CosaConfigError
from cosa_sdk.training.data.common import IMAGENET_MEAN, IMAGENET_STD, ItemIndex
from cosa_sdk.training.data.datasets import EvalDataset, TrainDataset
from cosa_sdk.training.data.spec import DataSpec, parse_data_spec

SPLITS = {"voc": ("train", "train_aug", "val"), "coco": ("train", "val"), "custom": ("train", "val")}
SPLITS["synthetic"] = SPLITS["custom"]


def read_index(spec: str | DataSpec, split: str, *, cache_root: Path | None = None) -> ItemIndex:
    """Resolve the items of one split (no decoding); generates the synthetic benchmark on first use."""
    spec = parse_data_spec(spec) if isinstance(spec, str) else spec
    if split not in SPLITS[spec.kind]:
        raise CosaConfigError(f"{spec.kind} datasets have the splits {', '.join(SPLITS[spec.kind])}, not {split!r}.")
    if spec.kind == "voc":
        from cosa_sdk.training.data.voc import read_voc

        return read_voc(spec.path, split)
    if spec.kind == "coco":
        from cosa_sdk.training.data.coco import read_coco

        return read_coco(spec.path, split)
    from cosa_sdk.training.data.custom import read_custom

    if spec.kind == "synthetic":
        from cosa_sdk.training.data.synthetic import ensure_synthetic

        index = read_custom(ensure_synthetic(spec.params, root=cache_root), split)
        index.source = f"{spec} ({split})"
        return index
    return read_custom(spec.path, split)


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
    eval_size: int | None = None,
    mode: str | None = None,
    blur_prob: float = 0.5,
    cache_root: Path | None = None,
) -> TrainDataset | EvalDataset:
    """Build the dataset of one split.

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
        blur_prob=blur_prob,
        supervision=supervision,
    )

"""Dataset readers, one module per format: VOC, COCO, the custom folder format and the synthetic benchmark.

`READERS` is the registry of formats: `--data KIND:...` kind -> `DatasetReader` (see `base.py` for the
fields). Everything that depends on the format (parsing and help text in `spec.py`, splits and reading in
`build.py`, `cosa data check`) looks the kind up here. To add a format, write its reader module next to
these and add one entry; the reader modules are imported only when a dataset of their kind is read.
The order of the entries is the order of `SPEC_HELP`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cosa_sdk.errors import CosaConfigError
from cosa_sdk.training.data.readers.base import DatasetReader

if TYPE_CHECKING:
    from cosa_sdk.training.data.common import ItemIndex
    from cosa_sdk.training.data.spec import DataSpec

__all__ = ["READERS", "DatasetReader"]


def _read_voc(spec: DataSpec, split: str, cache_root: Path | None) -> ItemIndex:
    from cosa_sdk.training.data.readers.voc import read_voc

    return read_voc(spec.path, split)


def _voc_train_split(spec: DataSpec) -> str:
    """train_aug when the SBD augmentation is present, else train (with a warning)."""
    from cosa_sdk.training.data.readers.voc import default_train_split

    return default_train_split(spec.path)


def _read_coco(spec: DataSpec, split: str, cache_root: Path | None) -> ItemIndex:
    from cosa_sdk.training.data.readers.coco import read_coco

    return read_coco(spec.path, split)


def _read_custom(spec: DataSpec, split: str, cache_root: Path | None) -> ItemIndex:
    from cosa_sdk.training.data.readers.custom import read_custom

    return read_custom(spec.path, split)


def _synthetic_folder(spec: DataSpec, cache_root: Path | None = None) -> Path:
    """The generated benchmark's folder (generated on first use)."""
    from cosa_sdk.training.data.readers.synthetic import ensure_synthetic

    return Path(ensure_synthetic(spec.params, root=cache_root))


def _read_synthetic(spec: DataSpec, split: str, cache_root: Path | None) -> ItemIndex:
    from cosa_sdk.training.data.readers.custom import read_custom

    index = read_custom(_synthetic_folder(spec, cache_root), split)
    index.source = f"{spec} ({split})"
    return index


def _synthetic_params(text: str, spec: str) -> dict[str, int]:
    """`synthetic[:n_train=64,n_val=16,size=128,seed=0,version=2]` parameters; no ?query."""
    from cosa_sdk.training.data.readers.synthetic import SYNTHETIC_DEFAULTS, profile_for

    if "?" in spec:
        raise CosaConfigError(
            f"dataset spec {spec!r}: synthetic takes no ?query (its splits train and val are fixed); "
            "write synthetic or synthetic:n_train=64,n_val=16,size=128,seed=0."
        )
    params: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in SYNTHETIC_DEFAULTS:
            raise CosaConfigError(
                f"bad synthetic parameter {part!r} in {spec!r}: write key=value with keys "
                f"{', '.join(SYNTHETIC_DEFAULTS)} (e.g. synthetic:n_train=64,n_val=16,size=128,seed=0)."
            )
        try:
            params[key] = int(value)
        except ValueError as exc:
            raise CosaConfigError(f"synthetic parameter {key}={value!r} in {spec!r} must be an integer.") from exc
    if "version" in params:
        profile_for(params["version"])  # the benchmark versions are known: refuse others while parsing
    return params


READERS: dict[str, DatasetReader] = {
    "voc": DatasetReader(
        splits=("train", "train_aug", "val"),
        help="voc:PATH (VOCdevkit/VOC2012)",
        read=_read_voc,
        default_train_split=_voc_train_split,
    ),
    "coco": DatasetReader(
        splits=("train", "val"),
        help="coco:PATH (COCO 2014 + PNG masks)",
        read=_read_coco,
    ),
    "custom": DatasetReader(
        splits=("train", "val"),
        help="custom:PATH (classes.txt, images/, labels.csv)",
        read=_read_custom,
        custom_layout=True,
    ),
    "synthetic": DatasetReader(
        splits=("train", "val"),
        help="synthetic (optionally synthetic:n_train=64,n_val=16,size=128,seed=0)",
        read=_read_synthetic,
        parse_params=_synthetic_params,
        folder=_synthetic_folder,
        custom_layout=True,
    ),
}

"""Parsing of `--data SPEC` strings: `voc:PATH`, `coco:PATH`, `custom:PATH`, `synthetic[:k=v,...]`.

Path-based kinds (voc, coco, custom) take an optional query that pins the split the *training role*
reads: `voc:/data/VOCdevkit?split=train`. The query starts at the LAST `?` of the spec, so a path that
itself contains `?` is written with a trailing `?` (an empty query): `custom:/data/what?/?`. The only
query key is `split`; its value must be a split of the kind (`SPLITS`). A pinned split applies to the
training role only: evaluation always reads `val` (see `build.resolve_split`). Without a pin, VOC trains
on `train_aug` when the SBD augmentation is present, else on `train`; coco and custom train on `train`.
`synthetic` takes no query (its splits are fixed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cosa_sdk.errors import CosaConfigError

KINDS = ("voc", "coco", "custom", "synthetic")
# The splits each kind has; "train" and "val" double as the training and evaluation roles.
SPLITS = {
    "voc": ("train", "train_aug", "val"),
    "coco": ("train", "val"),
    "custom": ("train", "val"),
    "synthetic": ("train", "val"),
}
QUERY_KEYS = ("split",)
SPEC_HELP = (
    "use one of voc:PATH (VOCdevkit/VOC2012), coco:PATH (COCO 2014 + PNG masks), custom:PATH "
    "(classes.txt, images/, labels.csv), or synthetic (optionally synthetic:n_train=64,n_val=16,size=128,seed=0); "
    "append ?split=NAME to a PATH to pin the training split (e.g. voc:PATH?split=train)"
)


@dataclass(frozen=True)
class DataSpec:
    """A parsed dataset spec: the kind, the folder (None for synthetic), synthetic parameters and the
    training split pinned by `?split=NAME` (None: the kind's default, see `build.resolve_split`)."""

    kind: str
    path: Path | None = None
    params: dict[str, int] = field(default_factory=dict)
    split: str | None = None

    def __str__(self) -> str:
        if self.kind == "synthetic":
            extra = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
            return f"synthetic:{extra}" if extra else "synthetic"
        text = f"{self.kind}:{self.path}"
        if self.split is not None:
            return f"{text}?split={self.split}"
        # A '?' in the path needs an (empty) query after it to parse back to the same path.
        return f"{text}?" if "?" in text else text


def parse_data_spec(spec: str) -> DataSpec:
    """Parse a dataset spec string; raises CosaConfigError naming the accepted forms."""
    if not isinstance(spec, str) or not spec.strip():
        raise CosaConfigError(f"empty dataset spec: {SPEC_HELP}.")
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    kind = kind.lower()
    if kind == "synthetic" or kind.startswith("synthetic?"):
        if "?" in spec:
            raise CosaConfigError(
                f"dataset spec {spec!r}: synthetic takes no ?query (its splits train and val are fixed); "
                "write synthetic or synthetic:n_train=64,n_val=16,size=128,seed=0."
            )
        return DataSpec(kind="synthetic", params=_parse_params(rest, spec))
    if kind not in KINDS or not sep:
        hint = ""
        if Path(spec).expanduser().is_dir():
            hint = f" (if {spec!r} is a folder in the custom format, write custom:{spec})"
        raise CosaConfigError(f"unknown dataset spec {spec!r}{hint}: {SPEC_HELP}.")
    path, query_sep, query = rest.rpartition("?")
    if not query_sep:
        path, query = rest, ""
    if not path.strip():
        raise CosaConfigError(f"dataset spec {spec!r} has no path: write {kind}:PATH.")
    split = _parse_query(query, kind, spec)
    return DataSpec(kind=kind, path=Path(path.strip()).expanduser(), split=split)


def _parse_query(query: str, kind: str, spec: str) -> str | None:
    """The split named by a `split=NAME` query (None for an empty query); CosaConfigError otherwise."""
    split = None
    for part in filter(None, (p.strip() for p in query.split("&"))):
        key, eq, value = part.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not eq or key not in QUERY_KEYS:
            raise CosaConfigError(
                f"bad query {part!r} in dataset spec {spec!r}: the only key is split (write "
                f"{kind}:PATH?split={SPLITS[kind][0]}); if '?' belongs to the path, end the spec with '?'."
            )
        if split is not None:
            raise CosaConfigError(f"dataset spec {spec!r} gives split twice: keep one ?split=NAME.")
        if value not in SPLITS[kind]:
            raise CosaConfigError(
                f"dataset spec {spec!r}: {kind} datasets have the splits {', '.join(SPLITS[kind])}, not {value!r}; "
                f"write {kind}:PATH?split={SPLITS[kind][0]} or leave ?split= out for the default."
            )
        split = value
    return split


def _parse_params(text: str, spec: str) -> dict[str, int]:
    from cosa_sdk.training.data.readers.synthetic import SYNTHETIC_DEFAULTS

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
    return params

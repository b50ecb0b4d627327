"""Parsing of `--data SPEC` strings: `voc:PATH`, `coco:PATH`, `custom:PATH`, `synthetic[:k=v,...]`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cosa_sdk.errors import CosaConfigError

KINDS = ("voc", "coco", "custom", "synthetic")
SPEC_HELP = (
    "use one of voc:PATH (VOCdevkit/VOC2012), coco:PATH (COCO 2014 + PNG masks), custom:PATH "
    "(classes.txt, images/, labels.csv), or synthetic (optionally synthetic:n_train=64,n_val=16,size=128,seed=0)"
)


@dataclass(frozen=True)
class DataSpec:
    """A parsed dataset spec: the kind, the folder (None for synthetic) and synthetic parameters."""

    kind: str
    path: Path | None = None
    params: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        if self.kind == "synthetic":
            extra = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
            return f"synthetic:{extra}" if extra else "synthetic"
        return f"{self.kind}:{self.path}"


def parse_data_spec(spec: str) -> DataSpec:
    """Parse a dataset spec string; raises CosaConfigError naming the accepted forms."""
    if not isinstance(spec, str) or not spec.strip():
        raise CosaConfigError(f"empty dataset spec: {SPEC_HELP}.")
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    kind = kind.lower()
    if kind == "synthetic":
        return DataSpec(kind="synthetic", params=_parse_params(rest, spec))
    if kind not in KINDS or not sep:
        hint = ""
        if Path(spec).expanduser().is_dir():
            hint = f" (if {spec!r} is a folder in the custom format, write custom:{spec})"
        raise CosaConfigError(f"unknown dataset spec {spec!r}{hint}: {SPEC_HELP}.")
    if not rest.strip():
        raise CosaConfigError(f"dataset spec {spec!r} has no path: write {kind}:PATH.")
    return DataSpec(kind=kind, path=Path(rest.strip()).expanduser())


def _parse_params(text: str, spec: str) -> dict[str, int]:
    from cosa_sdk.training.data.synthetic import SYNTHETIC_DEFAULTS

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

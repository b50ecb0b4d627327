"""Parsing of `--data SPEC` strings: `voc:PATH`, `coco:PATH`, `custom:PATH`, `synthetic[:k=v,...]`.

Path-based kinds (voc, coco, custom) take an optional query that pins the split the *training role*
reads: `voc:/data/VOCdevkit?split=train`. The query starts at the LAST `?` of the spec, so a path that
itself contains `?` is written with a trailing `?` (an empty query): `custom:/data/what?/?`. The only
query key is `split`; its value must be a split of the kind (`SPLITS`). A pinned split applies to the
training role only: evaluation always reads `val` (see `build.resolve_split`). Without a pin, VOC trains
on `train_aug` when the SBD augmentation is present, else on `train`; coco and custom train on `train`.
`synthetic` takes no query (its splits are fixed).

The kinds come from the reader registry `cosa_sdk.training.data.readers.READERS`; `KINDS`, `SPLITS` and
`SPEC_HELP` are derived from it each time they are read, so a kind added there is parsed here unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cosa_sdk.errors import CosaConfigError
from cosa_sdk.training.data.readers import READERS

QUERY_KEYS = ("split",)


def spec_help() -> str:
    """The accepted spec forms, for error messages: one per registered kind, in registry order."""
    forms = [reader.help for reader in READERS.values()]
    listed = f"{', '.join(forms[:-1])}, or {forms[-1]}" if len(forms) > 1 else forms[0]
    pinned = next(((kind, r.splits[0]) for kind, r in READERS.items() if r.takes_path), None)
    example = f" (e.g. {pinned[0]}:PATH?split={pinned[1]})" if pinned else ""
    return f"use one of {listed}; append ?split=NAME to a PATH to pin the training split{example}"


def __getattr__(name: str) -> Any:
    """`KINDS` (tuple of kinds), `SPLITS` (kind -> its splits; "train" and "val" double as the training and
    evaluation roles) and `SPEC_HELP`, read from the registry each time."""
    if name == "KINDS":
        return tuple(READERS)
    if name == "SPLITS":
        return {kind: reader.splits for kind, reader in READERS.items()}
    if name == "SPEC_HELP":
        return spec_help()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class DataSpec:
    """A parsed dataset spec: the kind, the folder (None for synthetic), synthetic parameters and the
    training split pinned by `?split=NAME` (None: the kind's default, see `build.resolve_split`)."""

    kind: str
    path: Path | None = None
    params: dict[str, int] = field(default_factory=dict)
    split: str | None = None

    def __str__(self) -> str:
        reader = READERS.get(self.kind)
        if reader is not None and not reader.takes_path:
            extra = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
            return f"{self.kind}:{extra}" if extra else self.kind
        text = f"{self.kind}:{self.path}"
        if self.split is not None:
            return f"{text}?split={self.split}"
        # A '?' in the path needs an (empty) query after it to parse back to the same path.
        return f"{text}?" if "?" in text else text


def parse_data_spec(spec: str) -> DataSpec:
    """Parse a dataset spec string; raises CosaConfigError naming the accepted forms."""
    if not isinstance(spec, str) or not spec.strip():
        raise CosaConfigError(f"empty dataset spec: {spec_help()}.")
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    kind = kind.lower()
    bare = kind.partition("?")[0]  # a kind without a PATH may be followed by a (refused) ?query
    reader = READERS.get(bare)
    if reader is not None and reader.parse_params is not None:
        return DataSpec(kind=bare, params=reader.parse_params(rest, spec))
    if kind not in READERS or not sep:
        hint = ""
        if Path(spec).expanduser().is_dir():
            hint = f" (if {spec!r} is a folder in the custom format, write custom:{spec})"
        raise CosaConfigError(f"unknown dataset spec {spec!r}{hint}: {spec_help()}.")
    path, query_sep, query = rest.rpartition("?")
    if not query_sep:
        path, query = rest, ""
    if not path.strip():
        raise CosaConfigError(f"dataset spec {spec!r} has no path: write {kind}:PATH.")
    split = _parse_query(query, kind, spec)
    return DataSpec(kind=kind, path=Path(path.strip()).expanduser(), split=split)


def _parse_query(query: str, kind: str, spec: str) -> str | None:
    """The split named by a `split=NAME` query (None for an empty query); CosaConfigError otherwise."""
    splits = READERS[kind].splits
    split = None
    for part in filter(None, (p.strip() for p in query.split("&"))):
        key, eq, value = part.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not eq or key not in QUERY_KEYS:
            raise CosaConfigError(
                f"bad query {part!r} in dataset spec {spec!r}: the only key is split (write "
                f"{kind}:PATH?split={splits[0]}); if '?' belongs to the path, end the spec with '?'."
            )
        if split is not None:
            raise CosaConfigError(f"dataset spec {spec!r} gives split twice: keep one ?split=NAME.")
        if value not in splits:
            raise CosaConfigError(
                f"dataset spec {spec!r}: {kind} datasets have the splits {', '.join(splits)}, not {value!r}; "
                f"write {kind}:PATH?split={splits[0]} or leave ?split= out for the default."
            )
        split = value
    return split

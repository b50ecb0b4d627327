"""`DatasetReader`: everything the rest of the package needs to know about one dataset format.

The registry of formats is `cosa_sdk.training.data.readers.READERS` (kind -> DatasetReader); `spec.py`
(parsing `--data KIND:...`, the help text), `build.py` (splits, reading) and `check/` (`cosa data check`)
look a kind up there instead of branching on its name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cosa_sdk.training.data.common import ItemIndex
    from cosa_sdk.training.data.spec import DataSpec


def train_split(spec: DataSpec) -> str:
    """The default training split of most kinds: "train"."""
    return "train"


@dataclass(frozen=True)
class DatasetReader:
    """One dataset format (a `--data` kind).

    splits: the splits it has; "train" and "val" double as the training and evaluation roles, and the
        first is the one error messages suggest (`KIND:PATH?split=FIRST`).
    help: how `SPEC_HELP` (the accepted forms, in every spec error) shows it, e.g. "voc:PATH (VOCdevkit/VOC2012)".
    read: `read(spec, split, cache_root) -> ItemIndex`, the items of one split (no decoding); `cache_root`
        is where a generated dataset goes (None: the default cache), readers of a PATH ignore it. Import the
        reader module inside this function, so that parsing a spec stays light.
    parse_params: None for a kind written `KIND:PATH[?split=NAME]`; for a kind written `KIND[:k=v,...]`
        (no folder), `parse_params(text after "KIND:", whole spec) -> dict[str, int]`, raising
        CosaConfigError for anything it does not accept (a `?query` included).
    default_train_split: `default_train_split(spec) -> str`, what the training role reads when the spec
        pins no split (VOC: train_aug when the SBD augmentation is there).
    folder: `folder(spec) -> Path` of the files when they are not at `spec.path` (generated datasets);
        None: `spec.path`. `cosa data check` looks there.
    custom_layout: the folder is in the custom layout (classes.txt, images/, labels.csv, masks/):
        `cosa data check` points item problems at their labels.csv row and, for a PATH kind, lists every
        bad row when the strict reader stops at the first.
    """

    splits: tuple[str, ...]
    help: str
    read: Callable[[DataSpec, str, Path | None], ItemIndex]
    parse_params: Callable[[str, str], dict[str, int]] | None = None
    default_train_split: Callable[[DataSpec], str] = train_split
    folder: Callable[[DataSpec], Path] | None = None
    custom_layout: bool = False

    @property
    def takes_path(self) -> bool:
        """True for `KIND:PATH`, False for `KIND[:k=v,...]`."""
        return self.parse_params is None

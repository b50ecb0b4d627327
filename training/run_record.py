"""`RunRecord`: the one answer to "what sizes, normalisation, classes and palette does this run use".

Training and `cosa import-official` write it into every checkpoint (key "run"); `cosa eval`, the demo,
export and the benchmarks read it back through `RunRecord.from_checkpoint`, so a run is scored, shown
and exported at the same size with the same normalisation. Checkpoints written before the record existed
are read by the rules those readers used then, collected here once (`_from_legacy`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cosa_sdk.constants import IMAGENET_MEAN, IMAGENET_STD, TTA_SCALES
from cosa_sdk.errors import CosaConfigError, CosaModelError
from cosa_sdk.training.config import TrainConfig

RECORD_KEY = "run"
SUPERVISIONS = ("weak", "full")


@dataclass(frozen=True)
class RunRecord:
    """What a trained network expects and how its run is scored.

    `eval_size` is the square side images are resized to for scoring (in-training evaluation, `cosa eval`,
    the demo); `input_size` (H, W) is what export bakes into the graph: by default the same square.
    `classes` are the foreground names (background is index 0 of every mask); `palette` has one RGB per
    class, background first. `mean`/`std` are on the 0-1 scale. `tta_scales` are the scales of the
    multi-scale test-time augmentation the run is scored with (None: one scale); export makes the graph's
    size dynamic by default when there are some, so the SDK can run them.
    """

    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    eval_size: int
    input_size: tuple[int, int]
    crop_size: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    tta_scales: tuple[float, ...] | None = None
    cam_threshold: float = 0.5
    data_spec: str | None = None
    supervision: str = "weak"
    preset: str | None = None

    def __post_init__(self) -> None:
        if self.supervision not in SUPERVISIONS:
            raise CosaModelError(f"run record: supervision {self.supervision!r} is not one of {SUPERVISIONS}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0 or max(*self.mean, *self.std) > 1.0:
            raise CosaModelError(
                f"run record: mean/std {self.mean}/{self.std} are not three values on the 0-1 scale; "
                "re-run or re-import the checkpoint"
            )
        if self.eval_size <= 0 or min(self.input_size) <= 0:
            raise CosaModelError(f"run record: sizes must be positive (eval {self.eval_size}, input {self.input_size})")

    @classmethod
    def for_training(
        cls,
        config: TrainConfig,
        *,
        classes: Sequence[str],
        palette: Sequence[Sequence[int]],
        data_spec: str | None,
        supervision: str = "weak",
        preset: str | None = None,
    ) -> RunRecord:
        """The record of a run `config` trains: scored and exported at `eval_size`, else at the crop size."""
        side = config.eval_side
        return cls(
            classes=tuple(str(c) for c in classes),
            palette=_palette(palette),
            eval_size=side,
            input_size=(side, side),
            crop_size=int(config.crop_size),
            mean=_triple(config.mean),
            std=_triple(config.std),
            tta_scales=TTA_SCALES if config.eval_tta else None,
            cam_threshold=float(config.cam_threshold),
            data_spec=data_spec,
            supervision=supervision,
            preset=preset,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and scalars, so checkpoints keep loading with `torch.load(weights_only=True)`."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        plain = {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}
        plain["palette"] = [list(rgb) for rgb in self.palette]
        return plain

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CosaModelError(
                f"run record has unknown keys {unknown}: it was written by a newer cosa-sdk; "
                "upgrade with pip install -U cosa-sdk"
            )
        fixed = dict(values)
        for key in ("classes", "tta_scales"):
            if fixed.get(key) is not None:
                fixed[key] = tuple(fixed[key])
        for key in ("mean", "std"):
            if key in fixed:
                fixed[key] = _triple(fixed[key])
        if "palette" in fixed:
            fixed["palette"] = _palette(fixed["palette"])
        if "input_size" in fixed:
            height, width = _size(fixed["input_size"])
            fixed["input_size"] = (height, width)
        return cls(**fixed)

    @classmethod
    def from_checkpoint(cls, record: Mapping[str, Any], *, size_if_unknown: Sequence[int] | None = None) -> RunRecord:
        """The record of a checkpoint (`load_checkpoint`'s dict); older checkpoints by the rules of their time.

        `size_if_unknown` stands in for the size of an old checkpoint that recorded none (export's --input-size).
        """
        stored = record.get(RECORD_KEY)
        if isinstance(stored, Mapping):
            return cls.from_dict(stored)
        return _from_legacy(record, size_if_unknown)

    def eval_dataset(self, split: str = "val", *, data_spec: str | None = None):
        """The images of `split` ("val", "train" or a split name) prepared as this run is scored: its
        normalisation, resized to `eval_size`, masks at their original size. `data_spec` overrides the
        dataset the run trained on (same classes)."""
        from cosa_sdk.training.data import build_dataset

        spec = data_spec or self.data_spec
        if not spec:
            raise CosaConfigError("the checkpoint does not name its dataset: pass --data voc:PATH | custom:PATH | ...")
        return build_dataset(spec, split, mode="eval", mean=self.mean, std=self.std, eval_size=self.eval_size)

    def with_input_size(self, size: Sequence[int]) -> RunRecord:
        """The same run exported at another (H, W)."""
        return dataclasses.replace(self, input_size=_size(size))


def _from_legacy(record: Mapping[str, Any], size_if_unknown: Sequence[int] | None) -> RunRecord:
    """Checkpoints from before the run record: training runs (full TrainConfig in "config", crop size in
    "data") and official imports ("config" holds only input_size and tta_scales)."""
    data = record.get("data") if isinstance(record.get("data"), Mapping) else {}
    config = record.get("config") if isinstance(record.get("config"), Mapping) else {}
    crop = data.get("crop_size")
    eval_size = config.get("eval_size") or crop
    input_size = config.get("input_size") or ([eval_size] if eval_size else None) or size_if_unknown
    if not input_size:
        raise CosaConfigError(
            "the checkpoint records no training input size (config.input_size or data.crop_size): "
            "pass --input-size H [W]"
        )
    height, width = _size(input_size)
    classes = record.get("classes") or ()
    return RunRecord(
        classes=tuple(str(c) for c in classes),
        palette=_palette(record.get("palette") or ()),
        eval_size=int(eval_size or height),
        input_size=(height, width),
        crop_size=int(crop) if crop else None,
        mean=_triple(data.get("mean") or IMAGENET_MEAN),
        std=_triple(data.get("std") or IMAGENET_STD),
        tta_scales=_scales(config.get("tta_scales") or config.get("eval_scales")),
        cam_threshold=float(config.get("cam_threshold", 0.5)),
        data_spec=data.get("spec"),
        supervision=str(record.get("supervision") or "weak"),
        preset=record.get("preset"),
    )


def _scales(values: Sequence[float] | None) -> tuple[float, ...] | None:
    return tuple(float(v) for v in values) if values else None


def _size(size: Any) -> tuple[int, int]:
    values = [int(size)] if isinstance(size, int | float) else [int(v) for v in size]
    if len(values) == 1:
        values *= 2
    if len(values) != 2:
        raise CosaModelError(f"run record: a size is H or (H, W), got {size!r}")
    return values[0], values[1]


def _triple(values: Sequence[float]) -> tuple[float, float, float]:
    numbers = tuple(float(v) for v in values)
    if len(numbers) != 3:
        raise CosaModelError(f"run record: mean/std need three values (R, G, B), got {list(values)}")
    return numbers  # type: ignore[return-value]


def _palette(colours: Sequence[Sequence[int]]) -> tuple[tuple[int, int, int], ...]:
    return tuple((int(c[0]), int(c[1]), int(c[2])) for c in colours)

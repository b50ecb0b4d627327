"""What export needs from a training checkpoint: the seg stream, its class table, normalisation and input size.

Only the backbone and the LargeFOV decoder leave the checkpoint; the CAM heads and the other network of
the online/assignment pair stay behind (docs/method.md, "What is deployed").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cosa_sdk.errors import CosaConfigError, CosaModelError
from cosa_sdk.palette import complete_palette
from cosa_sdk.training.run_record import RunRecord


@dataclass
class ExportSource:
    """A checkpoint resolved for export: the seg stream (eval mode) and everything cosa.json records about it."""

    checkpoint: Path
    stream: Any  # SegmentationStream; typed loosely so this module imports without torch
    network: str
    model_config: dict[str, Any]
    classes: list[str]
    palette: list[list[int]]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int]
    stride: int
    backbone: str
    data_spec: str | None
    weights_source: str | None
    tta_scales: list[float] | None
    trained_at: dict[str, int | None]  # the run's training crop and evaluation side (RunRecord)
    record_metrics: dict[str, Any]


def bundle_classes(classes: Sequence[str], num_outputs: int) -> list[str]:
    """The bundle's class table (index 0 = background) from a checkpoint's foreground names (or the full table)."""
    names = [str(c) for c in classes]
    if len(names) == num_outputs - 1:
        return ["background", *names]
    if len(names) == num_outputs and names[0].lower() in ("background", "bg", "_background_"):
        return names
    raise CosaModelError(
        f"the checkpoint lists {len(names)} classes but its decoder has {num_outputs} outputs (background + "
        f"{num_outputs - 1}); the checkpoint is inconsistent: re-run or re-import it"
    )


def check_input_size(size: Sequence[int], stride: int, *, what: str = "--input-size") -> tuple[int, int]:
    """(H, W) from one or two positive multiples of the backbone stride; CosaConfigError naming valid sizes."""
    values = [int(v) for v in size]
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) <= 0:
        raise CosaConfigError(f"{what} takes H or H W as positive integers, got {list(size)}")
    for value in values:
        if value % stride:
            low = max(stride, value // stride * stride)
            raise CosaConfigError(
                f"{what} {value} is not a multiple of the backbone stride {stride}: use {low} or {low + stride}"
            )
    return values[0], values[1]


def classifier_trained(record: dict[str, Any], run: RunRecord) -> bool:
    """False for a `--supervision full` run from before `full_class_loss` (or with it off): masks only, so its
    classifier never learned and its class scores mean nothing."""
    if run.supervision != "full":
        return True
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    return bool(config.get("full_class_loss", False))


def load_source(
    checkpoint: str | Path, *, network: str = "auto", input_size: Sequence[int] | None = None
) -> ExportSource:
    """Load a checkpoint (clear CosaModelError for missing, truncated or foreign files) and resolve the export."""
    from cosa_sdk.training.engine.checkpoint import build_network, load_checkpoint, network_state

    path = Path(checkpoint).expanduser()
    record = load_checkpoint(path)
    which, _ = network_state(record, network)
    model = build_network(record, which)
    stream = model.seg_stream().eval()
    config = model.model_config()
    stride = int(model.stride)
    run = RunRecord.from_checkpoint(record, size_if_unknown=input_size)
    if not classifier_trained(record, run):
        stream.drop_classifier()
    if input_size:
        size = check_input_size(input_size, stride)
    else:
        size = check_input_size(run.input_size, stride, what="the checkpoint's input size")
    classes = bundle_classes(run.classes, config["num_classes"] + 1)
    palette = [list(c) for c in run.palette] or None
    if palette is not None and len(palette) == len(classes) - 1:
        palette = [[0, 0, 0], *palette]
    return ExportSource(
        checkpoint=path,
        stream=stream,
        network=which,
        model_config=config,
        classes=classes,
        palette=[list(c) for c in complete_palette(palette, len(classes))],
        mean=run.mean,
        std=run.std,
        input_size=size,
        stride=stride,
        backbone=str(config["backbone"]),
        data_spec=run.data_spec,
        weights_source=record.get("backbone_weights"),
        tta_scales=list(run.tta_scales) if run.tta_scales else None,
        trained_at={"crop_size": run.crop_size, "eval_size": run.eval_size},
        record_metrics=dict(record.get("metrics") or {}),
    )

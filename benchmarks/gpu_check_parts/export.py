"""The export section: `cosa_sdk.export.export_bundle` on the train section's checkpoint (the `cosa export` path)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .common import MIB, Context, PartialFailure, train_config


def export_section(ctx: Context) -> dict[str, Any]:
    from cosa_sdk.export.cli import report_lines
    from cosa_sdk.export.pipeline import ExportOptions, export_bundle

    checkpoint = ctx.checkpoint
    origin = "trained"
    if checkpoint is None or not checkpoint.is_file():
        checkpoint, origin = untrained_checkpoint(ctx), "untrained (the train section left no checkpoint)"
    print(f"checkpoint: {origin} ({checkpoint})")
    start = time.perf_counter()
    try:
        result = export_bundle(checkpoint, ctx.work / "bundle", ExportOptions(parity_images=ctx.plan.parity_images))
    except Exception as err:  # e.g. the parity check refused the graph: still give the runtimes a bundle
        result = export_bundle(checkpoint, ctx.work / "bundle", ExportOptions(skip_parity=True, force=True))
        ctx.bundle, ctx.source = result.path, result.source
        print("\n".join(report_lines(result)))
        raise PartialFailure(f"{type(err).__name__} in export: {err}", {"retried_with_skip_parity": True}) from err
    export_s = time.perf_counter() - start
    ctx.bundle, ctx.source = result.path, result.source
    print("\n".join(report_lines(result)))
    parity = result.config["metrics"]["parity"]
    return {
        "checkpoint": origin,
        "export_s": export_s,
        "input_size": list(result.source.input_size),
        "onnx": result.onnx.info(),
        "sizes_mib": {k: v / MIB for k, v in result.sizes.items()},
        "parity_ort_cpu_vs_torch_cpu": {k: v for k, v in parity.items() if k != "cases"},
    }


def untrained_checkpoint(ctx: Context) -> Path:
    """A checkpoint of the planned network with initial weights, so export and runtimes still get measured."""
    from cosa_sdk.training.data.readers.synthetic_render import CLASS_NAMES
    from cosa_sdk.training.engine.checkpoint import save_checkpoint
    from cosa_sdk.training.model.network import CoSANetwork

    config = train_config(ctx.plan, [])
    network = CoSANetwork(
        backbone=config.backbone,
        num_classes=len(CLASS_NAMES),
        aux_layer=config.aux_layer,
        decoder_channels=config.decoder_channels,
        dilation=config.dilation,
        backbone_weights=None,
        backbone_kwargs=config.backbone_kwargs,
    )
    record = {
        "model_config": network.model_config(),
        "classes": list(CLASS_NAMES),
        "palette": None,
        "data": {"spec": ctx.plan.data_spec, "crop_size": config.crop_size, "mean": config.mean, "std": config.std},
        "online": network.state_dict(),
        "selected": "online",
        "iteration": 0,
        "metrics": {},
    }
    return save_checkpoint(ctx.work / "untrained.pt", record)

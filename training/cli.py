"""`cosa train`, `cosa eval` and `cosa import-official` handlers (arguments are defined in cosa_sdk/cli.py)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from cosa_sdk.errors import CosaConfigError
from cosa_sdk.training.config import TrainConfig, apply_overrides, preset


def build_train_config(args: argparse.Namespace) -> TrainConfig:
    """Preset, then `key=value` overrides, then the dedicated flags (which win)."""
    config = apply_overrides(preset(args.preset), list(args.overrides or []))
    changes = {}
    if args.iters is not None:
        if args.iters <= 0:
            raise CosaConfigError(f"--iters {args.iters}: give a positive number of iterations")
        changes["iters"] = args.iters
    if args.backbone_weights is not None:
        changes["backbone_weights"] = None if args.backbone_weights.lower() == "none" else args.backbone_weights
    if args.device is not None:
        changes["device"] = args.device
    if args.seed is not None:
        changes["seed"] = args.seed
    return dataclasses.replace(config, **changes)


def train_command(args: argparse.Namespace) -> int:
    from cosa_sdk.training.engine import Trainer

    config = build_train_config(args)
    trainer = Trainer(
        config,
        run_dir=args.out,
        data_spec=args.data,
        supervision=args.supervision,
        preset_name=args.preset,
        resume=args.resume,
        force=args.force,
    )
    if trainer.ctx.is_main:
        from cosa_sdk.training.data import data_summary

        print(data_summary(args.data, trainer.train_set), flush=True)
    summary = trainer.fit()
    if trainer.ctx.is_main:
        best = summary["best_seg_miou"]
        print(
            f"trained {summary['iterations']} iterations in {summary['seconds'] / 60:.1f} min "
            f"({summary['it_per_s']:.2f} it/s); best label-free seg mIoU: "
            f"{'n/a (no masks to evaluate)' if best is None else f'{best:.2f}'}"
        )
        print(f"checkpoints: {Path(args.out) / 'best.pt'}, {Path(args.out) / 'last.pt'}")
        print(f"next: cosa export {Path(args.out) / 'best.pt'} --out bundles/{Path(args.out).name} --int8")
    return 0


def eval_command(args: argparse.Namespace) -> int:
    from cosa_sdk.training.checkpoint import build_network, load_checkpoint
    from cosa_sdk.training.data import build_dataset
    from cosa_sdk.training.distributed import resolve_device
    from cosa_sdk.training.evaluate import evaluate, format_scores

    record = load_checkpoint(args.checkpoint)
    network = build_network(record, args.network)
    device = resolve_device(args.device)
    network.to(device)
    data = record.get("data", {})
    config = record.get("config") or {}
    spec = args.data or data.get("spec")
    if not spec:
        raise CosaConfigError("the checkpoint does not name its dataset: pass --data voc:PATH | custom:PATH | ...")
    crop = int(data.get("crop_size", 448))
    input_size = config.get("input_size") or [config.get("eval_size") or crop] * 2
    dataset = build_dataset(
        spec, args.split, crop_size=crop, mean=data.get("mean"), std=data.get("std"), eval_size=int(input_size[0])
    )
    if args.crf:
        try:
            import pydensecrf  # noqa: F401
        except ImportError:
            raise CosaConfigError('--crf needs pydensecrf2: pip install "cosa-sdk[crf]"') from None
    weak = record.get("supervision", "weak") == "weak"
    scores = evaluate(
        network,
        dataset,
        num_classes=len(record["classes"]),
        device=device,
        tta=args.tta,
        crf=args.crf,
        limit=args.limit,
        with_cams=weak,
        class_names=record["classes"],
        cam_threshold=float(config.get("cam_threshold", 0.5)),
    )
    print(format_scores(scores))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(scores, indent=2))
        print(f"wrote {args.json_out}")
    return 0


def import_official_command(args: argparse.Namespace) -> int:
    from cosa_sdk.training.official import import_official_command as run

    return run(args)

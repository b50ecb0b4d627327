"""`cosa train`, `cosa eval` and `cosa import-official` handlers (arguments are defined in cosa_sdk/cli.py)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from cosa_sdk.errors import CosaConfigError
from cosa_sdk.training.config import TrainConfig, apply_overrides, preset

DEFAULT_DATA, DEFAULT_PRESET, DEFAULT_SUPERVISION = "synthetic", "tiny", "weak"


def build_train_config(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """Preset (or `base`, a resumed run's config), then `key=value` overrides, then the dedicated flags (which win)."""
    start = base if base is not None else preset(args.preset or DEFAULT_PRESET)
    config = apply_overrides(start, list(args.overrides or []))
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


def resolve_train_settings(args: argparse.Namespace) -> tuple[str, str, str | None, TrainConfig | None]:
    """(data spec, supervision, preset name, base config) for `cosa train`.

    Without --resume, options not given take their defaults. With --resume, options not given come from the
    run's last.pt (or config.json when it died before its first checkpoint); options given are layered on
    top, and the Trainer refuses any that change what the run computes, naming the difference.
    """
    from cosa_sdk.training.engine.run_dir import saved_run

    data = getattr(args, "data", None)
    supervision = getattr(args, "supervision", None)
    preset_name = getattr(args, "preset", None)
    saved = saved_run(args.out) if getattr(args, "resume", False) and not getattr(args, "force", False) else None
    if saved is None:
        return data or DEFAULT_DATA, supervision or DEFAULT_SUPERVISION, preset_name or DEFAULT_PRESET, None
    base = None
    if preset_name is None or preset_name == saved["preset"]:
        base = TrainConfig.from_dict(saved["config"])
    return (
        data or saved["data"] or DEFAULT_DATA,
        supervision or saved["supervision"] or DEFAULT_SUPERVISION,
        preset_name or saved["preset"],
        base,
    )


def train_command(args: argparse.Namespace) -> int:
    from cosa_sdk.training.engine.trainer import Trainer

    data, supervision, preset_name, base = resolve_train_settings(args)
    config = build_train_config(args, base)
    from cosa_sdk.training.data.check.validate import exclude_bad_items, validate_for_training

    # Every image and mask is checked before the network is built (exit 2 + RUN_DIR/validation_report.txt).
    checked = validate_for_training(data, args.out, skip_bad=getattr(args, "skip_bad_images", False))
    trainer = Trainer(
        config,
        run_dir=args.out,
        data_spec=data,
        supervision=supervision,
        preset_name=preset_name,
        resume=args.resume,
        force=args.force,
    )
    if trainer.ctx.is_main:
        from cosa_sdk.training.data import data_summary

        print(data_summary(data, trainer.train_set), flush=True)
        for note in (trainer.resolution_note, trainer.precision_note):
            if note:
                print(note, flush=True)
    for role, dataset in (("train", trainer.train_set), ("val", trainer.val_set)):
        bad = checked.bad_items(role)
        if bad and dataset is not None:  # --skip-bad-images: train and score without them
            exclude_bad_items(dataset, bad)
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
    from cosa_sdk.training.engine.checkpoint import build_network, load_checkpoint
    from cosa_sdk.training.engine.distributed import resolve_device
    from cosa_sdk.training.evaluation.evaluate import VARIANTS, evaluate, format_scores
    from cosa_sdk.training.run_record import RunRecord

    record = load_checkpoint(args.checkpoint)
    network = build_network(record, args.network)
    device = resolve_device(args.device)
    network.to(device)
    run = RunRecord.from_checkpoint(record)
    dataset = run.eval_dataset(args.split, data_spec=args.data)
    if args.crf:
        try:
            import pydensecrf  # noqa: F401
        except ImportError:
            raise CosaConfigError('--crf needs pydensecrf2: pip install "cosa-sdk[crf]"') from None
    weak = run.supervision == "weak"
    scores = evaluate(
        network,
        dataset,
        num_classes=len(run.classes),
        device=device,
        tta=args.tta,
        crf=args.crf,
        limit=args.limit,
        with_cams=weak,
        class_names=list(run.classes),
        cam_threshold=run.cam_threshold,
        variants=VARIANTS if getattr(args, "postprocess", False) else (),
    )
    print(format_scores(scores))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(scores, indent=2))
        print(f"wrote {args.json_out}")
    return 0


def import_official_command(args: argparse.Namespace) -> int:
    from cosa_sdk.training.model.official import import_official_command as run

    return run(args)

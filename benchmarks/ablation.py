"""What each of the paper's techniques adds, measured on the embedded synthetic benchmark.

Trains the `tiny` preset once per row and seed and prints one table (also JSON and a PNG bar chart):

  cam-baseline    classification only, CAMs thresholded (label-free: the classifier's own labels filter)
  released        the released code path: fixed thresholds, L_c2s + L_s2c (+ L_reg where the preset has it)
  +dynamic        + dynamic threshold searching (GMM)
  +perplexity     + soft perplexity-based regularisation of L_c2s
  +contrastive    + contrastive separation
  ppl+csc         + perplexity and contrastive (all but the technique whose warm-up cost breaks the CPU budget)
  all-three       + all three techniques
  uniform         released with every training image drawn equally often (the preset balances label sets)
  full            the same network and schedule trained on ground-truth masks (upper bound)

Columns: label-free seg mIoU, CAM mIoU, mIoU over the co-occurring class pair, training minutes.
Usage: python benchmarks/ablation.py [--seeds 0 1 2] [--rows released all-three] [--iters N] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cosa_sdk.training.config import TrainConfig, preset
from cosa_sdk.training.data import ensure_synthetic, parse_data_spec
from cosa_sdk.training.engine.checkpoint import build_network, load_checkpoint, save_checkpoint
from cosa_sdk.training.engine.trainer import Trainer
from cosa_sdk.training.evaluation.evaluate import cam_to_label, predict_maps
from cosa_sdk.training.evaluation.metrics import ConfusionMatrix
from cosa_sdk.training.run_record import RunRecord

RESULTS = Path(__file__).resolve().parent / "results"

ROWS: dict[str, dict] = {
    "cam-baseline": {"loss_warmup_iters": 10**9},
    "released": {},
    "+dynamic": {"dynamic_threshold": True},
    "+perplexity": {"perplexity": True},
    "+contrastive": {"contrastive": True},
    "ppl+csc": {"perplexity": True, "contrastive": True},
    "all-three": {"dynamic_threshold": True, "perplexity": True, "contrastive": True},
    "uniform": {"label_set_balance": 0.0},
    "full": {},
}
TECHNIQUES = ("dynamic_threshold", "perplexity", "contrastive")


def row_config(row: str, base: TrainConfig, seed: int) -> TrainConfig:
    off = dict.fromkeys(TECHNIQUES, False)
    return dataclasses.replace(
        base, **{**off, **ROWS[row]}, seed=seed, progress=False, eval_every=base.iters, sample_every=10**9
    )


@torch.no_grad()
def label_free_cam_scores(run: Path, data_spec: str) -> float:
    """CAM-only segmentation without ground-truth labels: the classifier's own predictions pick the classes."""
    record = load_checkpoint(run / "best.pt")
    network = build_network(record, "online")
    run_record = RunRecord.from_checkpoint(record)
    dataset = run_record.eval_dataset(data_spec=data_spec)
    matrix = ConfusionMatrix(len(run_record.classes) + 1)
    threshold = run_record.cam_threshold
    for sample in dataset:
        image = sample["image"][None]
        predicted = (network(image).logits > 0).float()
        cam, _ = predict_maps(network, image)
        gt = sample["mask"].numpy()
        cam = torch.nn.functional.interpolate(cam, size=gt.shape, mode="bilinear", align_corners=False)
        matrix.update(cam_to_label(cam, predicted, threshold)[0].numpy(), gt)
    return 100.0 * float(matrix.scores()["miou"])


def pair_miou(per_class: dict[str, float | None], pair: list[str]) -> float | None:
    values = [per_class.get(name) for name in pair]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def shared_warmup(
    config: TrainConfig, warmup_iters: int, data_spec: str, workdir: Path, cache: dict
) -> tuple[Path, float]:
    """The classification warm-up all co-training rows of one seed share: (its last.pt, its minutes).

    Warm-up iterations compute the same thing in every weak row (the techniques act after it), except
    that dynamic thresholds run their tracker from step 0 and another sampling draws other images; such
    rows share a warm-up of their own. The CAM-only row leaves it too: its first `warmup_iters` iterations
    are the same classification training."""
    key = (config.seed, config.dynamic_threshold, config.label_set_balance)
    if key not in cache:
        techniques = {**dict.fromkeys(TECHNIQUES, False), "dynamic_threshold": key[1]}
        warm_config = dataclasses.replace(config, **techniques, loss_warmup_iters=warmup_iters)
        run = workdir / f"warmup-seed{key[0]}{'-dynamic' if key[1] else ''}-balance{key[2]:g}"
        done = run / "warmup.json"
        if done.exists() and json.loads(done.read_text())["config"] == warm_config.to_dict():
            cache[key] = (run / "last.pt", json.loads(done.read_text())["minutes"])
            return cache[key]
        started = time.perf_counter()
        Trainer(warm_config, run_dir=run, data_spec=data_spec, preset_name="tiny", force=True).fit(
            stop_after=warm_config.loss_warmup_iters
        )
        minutes = (time.perf_counter() - started) / 60
        done.write_text(json.dumps({"config": warm_config.to_dict(), "minutes": minutes}))
        cache[key] = (run / "last.pt", minutes)
    return cache[key]


def branch(warm: Path, run: Path, config: TrainConfig) -> None:
    """Start `run` from a shared warm-up checkpoint, under the row's own config."""
    record = load_checkpoint(warm)
    record["config"] = config.to_dict()
    # the warm-up's saved thresholds would override the row's own (a resume restores them)
    thresholds = {"high": config.t_high, "low": config.t_low}
    thresholds.update(aux_high=config.aux_t_high, aux_low=config.aux_t_low)
    record["losses"] = {**record.get("losses", {}), "thresholds": thresholds}
    run.mkdir(parents=True, exist_ok=True)
    save_checkpoint(run / "last.pt", record)


def run_row(
    row: str, seed: int, base: TrainConfig, data_spec: str, workdir: Path, pair: list[str], warmups: dict | None
) -> dict:
    config = row_config(row, base, seed)
    run = workdir / f"{row}-seed{seed}"
    supervision = "full" if row == "full" else "weak"
    warm_minutes, resume = 0.0, False
    if warmups is not None and row != "full":
        warm, warm_minutes = shared_warmup(config, base.loss_warmup_iters, data_spec, workdir, warmups)
        branch(warm, run, config)
        resume = True
    started = time.perf_counter()
    summary = Trainer(
        config,
        run_dir=run,
        data_spec=data_spec,
        supervision=supervision,
        preset_name="tiny",
        force=not resume,
        resume=resume,
    ).fit()
    minutes = warm_minutes + (time.perf_counter() - started) / 60
    metrics = summary["metrics"]
    scores = metrics[metrics["selected"]]
    cam = metrics.get("online", {}).get("cam_miou")
    seg = label_free_cam_scores(run, data_spec) if row == "cam-baseline" else scores["seg_miou"]
    per_class = metrics["online"]["per_class_cam_iou"] if row == "cam-baseline" else scores["per_class_iou"]
    return {
        "row": row,
        "seed": seed,
        "seg_miou": seg,
        "cam_miou": cam,
        "pair_miou": pair_miou(per_class, pair),
        "minutes": minutes,
        "selected": metrics["selected"],
    }


def summarise(records: list[dict]) -> list[dict]:
    rows = []
    for row in ROWS:
        mine = [r for r in records if r["row"] == row]
        if not mine:
            continue
        entry = {"row": row, "seeds": [r["seed"] for r in mine]}
        for key in ("seg_miou", "cam_miou", "pair_miou", "minutes"):
            # a run marked "shared_machine" (the cores were busy with other work) keeps its scores, not its time
            timed = [r for r in mine if not (key == "minutes" and r.get("shared_machine"))]
            values = [r[key] for r in timed if r[key] is not None]
            entry[key] = statistics.mean(values) if values else None
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            entry[f"{key}_n"] = len(values)
        rows.append(entry)
    return rows


def paired_differences(records: list[dict], reference: str = "released", key: str = "seg_miou") -> list[dict]:
    """Each row minus the reference row on the same seed: seeds move both together, so pairs show more."""
    scored = [r for r in records if r[key] is not None]
    by_seed = {r["seed"]: r[key] for r in scored if r["row"] == reference}
    out = []
    for row in ROWS:
        diffs = [r[key] - by_seed[r["seed"]] for r in scored if r["row"] == row and r["seed"] in by_seed]
        if row == reference or not diffs:
            continue
        spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        out.append({"row": row, "seeds": len(diffs), "mean": statistics.mean(diffs), "std": spread, "diffs": diffs})
    return out


def _cell(entry: dict, key: str, none: str) -> str:
    value = entry[key]
    if value is None:
        return none
    spread = f" ± {entry[key + '_std']:.1f}" if entry[f"{key}_n"] > 1 else ""
    return f"{value:.1f}{spread}"


def format_table(rows: list[dict]) -> str:
    lines = [f"{'row':<14} {'seeds':>5} {'seg mIoU':>13} {'CAM mIoU':>13} {'pair mIoU':>13} {'minutes':>11}"]
    for e in rows:
        cells = [_cell(e, key, "-") for key in ("seg_miou", "cam_miou", "pair_miou", "minutes")]
        lines.append(f"{e['row']:<14} {len(e['seeds']):>5} {cells[0]:>13} {cells[1]:>13} {cells[2]:>13} {cells[3]:>11}")
    return "\n".join(lines)


def format_markdown(rows: list[dict]) -> str:
    """The same table as README markdown (minutes count idle runs only)."""
    lines = [
        "| row | seeds | seg mIoU (label-free) | CAM mIoU | pair mIoU | train minutes |",
        "|---|---|---|---|---|---|",
    ]
    for e in rows:
        cells = " | ".join(_cell(e, key, "–") for key in ("seg_miou", "cam_miou", "pair_miou", "minutes"))
        lines.append(f"| {e['row']} | {len(e['seeds'])} | {cells} |")
    return "\n".join(lines)


def format_paired(diffs: list[dict], reference: str = "released") -> str:
    lines = [f"seg mIoU minus {reference} on the same seed:"]
    for d in diffs:
        each = ", ".join(f"{v:+.1f}" for v in d["diffs"])
        lines.append(f"  {d['row']:<14} {d['mean']:+.1f} ± {d['std']:.1f} over {d['seeds']} seed(s) ({each})")
    return "\n".join(lines)


def bar_chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5), dpi=100)
    names = [r["row"] for r in rows]
    xs = np.arange(len(rows))
    for offset, key, label in ((-0.2, "seg_miou", "seg mIoU (label-free)"), (0.2, "cam_miou", "CAM mIoU")):
        values = [r[key] or 0.0 for r in rows]
        errors = [r[f"{key}_std"] for r in rows]
        ax.bar(xs + offset, values, width=0.4, yerr=errors, label=label, capsize=3)
    ax.set_xticks(xs, names, rotation=20)
    ax.set_ylabel("mIoU (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--iters", type=int, default=None, help="iterations per run (default: the tiny preset's)")
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--quick", action="store_true", help="a smoke pass: tiny data and a few iterations")
    parser.add_argument("--out", type=Path, default=RESULTS / "ablation.json")
    parser.add_argument("--append", action="store_true", help="add to the runs in --out (same row+seed replaced)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the runs here (default: a temp folder)")
    parser.add_argument(
        "--no-shared-warmup",
        dest="shared_warmup",
        action="store_false",
        help="train every row from scratch instead of branching the co-training rows from one warm-up per seed",
    )
    parser.add_argument(
        "--shared-machine",
        action="store_true",
        help="the cores run other work too: keep these runs' scores but leave their minutes out of the table",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    base = preset("tiny")
    data_spec = args.data
    if args.quick:
        data_spec = "synthetic:n_train=16,n_val=8,size=96,seed=0"
        base = dataclasses.replace(
            base, iters=6, loss_warmup_iters=2, lr_warmup_iters=2, batch_size=4, crop_size=84, num_workers=0
        )
    if args.iters:
        base = dataclasses.replace(
            base, iters=args.iters, loss_warmup_iters=min(base.loss_warmup_iters, args.iters // 3)
        )
    if args.overrides:
        from cosa_sdk.training.config import apply_overrides

        base = apply_overrides(base, args.overrides)
    spec = parse_data_spec(data_spec)
    meta = json.loads((ensure_synthetic(spec.params) / "meta.json").read_text()) if spec.kind == "synthetic" else {}
    pair = meta.get("cooccurring_pair", [])
    records, warmups = [], ({} if args.shared_warmup else None)
    if args.append and args.out.exists():
        records = json.loads(args.out.read_text())["runs"]
    with tempfile.TemporaryDirectory(prefix="cosa-ablation-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            for row in args.rows:
                print(f"== {row} seed {seed}", file=sys.stderr, flush=True)
                record = run_row(row, seed, base, data_spec, workdir, pair, warmups)
                if args.shared_machine:
                    record["shared_machine"] = True
                records = [r for r in records if (r["row"], r["seed"]) != (row, seed)] + [record]
                print(json.dumps(record), file=sys.stderr, flush=True)
                write_results(args.out, base, data_spec, pair, records)
    print(format_table(summarise(records)))
    print(format_markdown(summarise(records)))
    print(format_paired(paired_differences(records)))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


def write_results(out: Path, base: TrainConfig, data_spec: str, pair: list[str], records: list[dict]) -> None:
    """JSON (every run and the per-row summary) and the bar chart; rewritten after every run."""
    rows = summarise(records)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": _machine(),
        "config": base.to_dict(),
        "data": data_spec,
        "cooccurring_pair": pair,
        "runs": records,
        "rows": rows,
        "paired_vs_released": paired_differences(records),
    }
    out.write_text(json.dumps(payload, indent=2))
    bar_chart(rows, out.with_suffix(".png"))


def _machine() -> dict:
    import os
    import platform

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    sys.exit(main())

"""What each of the paper's techniques adds, measured on the embedded synthetic benchmarks.

Trains a CPU preset (`tiny` by default, `--preset cpu`) once per benchmark, row and seed and prints one
table per benchmark (also JSON and a PNG bar chart):

  cam-baseline    classification only, CAMs thresholded (label-free: the classifier's own labels filter)
  released        the released code path: fixed thresholds, L_c2s + L_s2c (+ L_reg where the preset has it)
  +dynamic        + dynamic threshold searching (GMM)
  +perplexity     + soft perplexity-based regularisation of L_c2s
  +contrastive    + contrastive separation
  ppl+csc         + perplexity and contrastive (all but the technique whose warm-up cost breaks the CPU budget)
  all-three       + all three techniques
  uniform         released with every training image drawn equally often (the preset balances label sets)
  +affinity       released with the teacher's CAMs refined by pixel affinity before the CAM pseudo-labels
  +crf-loss       released with the dense-CRF loss on the segmentation logits
  no-crf-loss     released without the dense-CRF loss (for presets that train with it)
  +aux-cpl        released with half of L_c2s from the auxiliary CAM's pseudo-label, as the released code
  no-aux-cpl      released with L_c2s from the main CAM's pseudo-label alone (for presets that mix in the aux)
  +detail         released with the detail refiner: seg logits redrawn at stride 4 from the image
  avg-pool        released with the CAM head scoring the mean of the feature map, not its max (`cam_pool`)
  +class-paste    released with half the images of each batch given one class's pixels from another image
  +erase          released with the erased-CAM loss: each class must also score beside its strongest cells
  full            the same network and schedule trained on ground-truth masks (upper bound)
  full+detail     `full` with the detail refiner: can a finer seg grid draw the shapes at all?

Columns: label-free seg mIoU, the share of images whose own mIoU reaches 50 ("right"), CAM mIoU, mIoU over
the co-occurring class pair, training minutes. Every run's best.pt is also scored with the SDK's
post-processing (`cosa eval --postprocess`): classes the classifier scores absent dropped, edge-aware
upsampling, and both; a second table per benchmark shows those.

Benchmarks: the versions of the synthetic benchmark (`synthetic:version=N`, see
training/data/readers/synthetic_profiles.py), all of them by default. With more than one, a summary per
row follows the tables: the mean over the benchmarks and the WORST benchmark of seg mIoU, CAM mIoU and
the paired difference to `released`. A preset is judged by its worst benchmark, not its best.
Usage: python benchmarks/ablation.py [--benchmarks 1,2,3,4] [--seeds 0 1 2] [--rows released all-three]
       [--iters N] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cosa_sdk.training.config import TrainConfig, preset
from cosa_sdk.training.data import parse_data_spec
from cosa_sdk.training.data.readers.synthetic_profiles import PROFILES
from cosa_sdk.training.data.resolution import resolve_resolution
from cosa_sdk.training.engine.checkpoint import build_network, load_checkpoint, save_checkpoint
from cosa_sdk.training.engine.trainer import Trainer
from cosa_sdk.training.evaluation.evaluate import VARIANTS, cam_to_label, evaluate, predict_maps
from cosa_sdk.training.evaluation.metrics import ConfusionMatrix
from cosa_sdk.training.run_record import RunRecord

sys.path.insert(0, str(Path(__file__).resolve().parent))  # ablation_benchmarks, also when not run as a script
from ablation_benchmarks import (
    benchmark_info,
    benchmark_specs,
    fully_supervised,
    parse_benchmarks,
    previous_results,
)
from ablation_report import (  # noqa: F401 - the report's names stay reachable as ablation.NAME
    format_markdown,
    format_paired,
    format_postprocess,
    format_report,
    format_table,
    paired_differences,
    summarise,
    summarise_benchmarks,
    write_results,
)
from ablation_rows import ROWS, TECHNIQUES, row_config

RESULTS = Path(__file__).resolve().parent / "results"
VERSION_LABELS = {f"v{version}" for version in PROFILES}


def best_network(run: Path, network_name: str) -> tuple[torch.nn.Module, RunRecord]:
    """One network of a run's best.pt and the run's record (classes, thresholds, how to evaluate)."""
    record = load_checkpoint(run / "best.pt")
    return build_network(record, network_name), RunRecord.from_checkpoint(record)


@torch.no_grad()
def label_free_cam_scores(run: Path, data_spec: str) -> float:
    """CAM-only segmentation without ground-truth labels: the classifier's own predictions pick the classes."""
    network, run_record = best_network(run, "online")
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


@torch.no_grad()
def postprocess_scores(run: Path, data_spec: str, network_name: str) -> dict[str, dict]:
    """Label-free scores of the selected network under each SDK post-processing variant."""
    network, run_record = best_network(run, network_name)
    scores = evaluate(
        network,
        run_record.eval_dataset(data_spec=data_spec),
        num_classes=len(run_record.classes),
        with_cams=False,
        variants=VARIANTS,
    )
    return {
        name: {"seg_miou": v["seg_miou"], "images_right": v["images_right"]} for name, v in scores["variants"].items()
    }


def pair_miou(per_class: dict[str, float | None], pair: list[str]) -> float | None:
    values = [per_class.get(name) for name in pair]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


# Keys that act only once the pseudo-labels are on, so rows that differ in them alone share a saved warm-up.
# With dynamic thresholds the teacher already runs during the warm-up, and every key counts.
AFTER_WARMUP_KEYS = frozenset(
    {"t_high", "t_low", "aux_t_high", "aux_t_low", "fg_alpha", "aux_cpl_weight", "spl_temperature"}
    | {"cam_refine", "cam_refine_iters", "cam_refine_scale", "cam_refine_dilations", "w_c2s", "w_s2c", "w_reg"}
    | {"crf_loss", "crf_filter", "crf_sigma_rgb", "crf_sigma_xy", "perplexity_beta", "w_csc", "csc_temperature"}
    | {"class_paste"}
)

# How the teacher sees the image: it runs in the warm-up only for terms weighted 0 (`warmup_zero_terms`).
TEACHER_KEYS = frozenset({"pseudo_scales", "pseudo_flip", "aux_last_scale_only"})


def warmup_identity(values: dict) -> dict:
    """What a saved warm-up's config (`TrainConfig.to_dict()`) must match to be reused for another."""
    if values.get("dynamic_threshold"):
        return values
    after = AFTER_WARMUP_KEYS if values.get("warmup_zero_terms") else AFTER_WARMUP_KEYS | TEACHER_KEYS
    return {key: value for key, value in values.items() if key not in after}


def shared_warmup(
    config: TrainConfig, warmup_iters: int, data_spec: str, workdir: Path, cache: dict, preset_name: str = "tiny"
) -> tuple[Path, float]:
    """The classification warm-up all co-training rows of one seed share: (its last.pt, its minutes).

    Warm-up iterations compute the same thing in every weak row (the techniques act after it), except
    that dynamic thresholds run their tracker from step 0, another sampling draws other images, and a detail
    refiner or another CAM pooling is another network, and CAM erasing trains the classifier from step 0; such
    rows share a warm-up of their own. The CAM-only row leaves it too: its first `warmup_iters` iterations are
    the same classification training."""
    erase = (config.cam_erase, config.cam_erase_threshold, config.cam_erase_reach) if config.cam_erase else None
    key = (
        config.seed,
        config.dynamic_threshold,
        config.label_set_balance,
        config.detail_channels,
        config.cam_pool,
        erase,
    )
    if key not in cache:
        techniques = {**dict.fromkeys(TECHNIQUES, False), "dynamic_threshold": key[1]}
        warm_config = dataclasses.replace(config, **techniques, loss_warmup_iters=warmup_iters)
        detail = f"-detail{key[3]}" if key[3] else ""
        pool = "" if key[4] == "max" else f"-{key[4]}pool"
        erased = "-erase{:g}-{:g}-{}".format(*erase) if erase else ""
        run = workdir / f"warmup-seed{key[0]}{'-dynamic' if key[1] else ''}-balance{key[2]:g}{detail}{pool}{erased}"
        done = run / "warmup.json"
        saved = json.loads(done.read_text()) if done.exists() else {}
        # read back through TrainConfig, so keys added since the warm-up was saved take the value it trained with
        then = TrainConfig.from_dict(saved["config"]).to_dict() if saved else None
        same = then is not None and warmup_identity(then) == warmup_identity(warm_config.to_dict())
        if same and saved.get("data") == data_spec:
            cache[key] = (run / "last.pt", saved["minutes"])
            return cache[key]
        started = time.perf_counter()
        Trainer(warm_config, run_dir=run, data_spec=data_spec, preset_name=preset_name, force=True).fit(
            stop_after=warm_config.loss_warmup_iters
        )
        minutes = (time.perf_counter() - started) / 60
        done.write_text(json.dumps({"config": warm_config.to_dict(), "data": data_spec, "minutes": minutes}))
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
    row: str,
    seed: int,
    base: TrainConfig,
    data_spec: str,
    workdir: Path,
    pair: list[str],
    warmups: dict | None,
    preset_name: str = "tiny",
) -> dict:
    # the side is chosen once, so the shared warm-up and every row branching from it train at the same one
    config, _ = resolve_resolution(row_config(row, base, seed), data_spec)
    run = workdir / f"{row}-seed{seed}"
    supervision = "full" if fully_supervised(row) else "weak"
    warm_minutes, resume = 0.0, False
    if warmups is not None and supervision == "weak":
        warm, warm_minutes = shared_warmup(config, base.loss_warmup_iters, data_spec, workdir, warmups, preset_name)
        branch(warm, run, config)
        resume = True
    started = time.perf_counter()
    summary = Trainer(
        config,
        run_dir=run,
        data_spec=data_spec,
        supervision=supervision,
        preset_name=preset_name,
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
        "images_right": None if row == "cam-baseline" else scores.get("images_right"),
        "postprocess": None if row == "cam-baseline" else postprocess_scores(run, data_spec, metrics["selected"]),
        "cam_miou": cam,
        "pair_miou": pair_miou(per_class, pair),
        "minutes": minutes,
        "selected": metrics["selected"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument(
        "--benchmarks",
        type=parse_benchmarks,
        default=None,
        help=f"synthetic benchmark versions, comma-separated (default: all, {','.join(map(str, PROFILES))})",
    )
    parser.add_argument("--preset", default="tiny", choices=["tiny", "cpu"], help="the CPU preset to train")
    parser.add_argument("--iters", type=int, default=None, help="iterations per run (default: the preset's)")
    parser.add_argument("--data", default="synthetic")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke pass: tiny data (96-px images on every benchmark) and a few iterations",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "ablation.json")
    parser.add_argument(
        "--append", action="store_true", help="add to the runs in --out (same benchmark+row+seed replaced)"
    )
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
    base = preset(args.preset)
    data_spec = args.data
    if args.quick:
        given = parse_data_spec(args.data).params if args.data.startswith("synthetic") else {}
        version = f",version={given['version']}" if "version" in given else ""
        data_spec = f"synthetic:n_train=16,n_val=8,size=96,seed=0{version}"
        base = dataclasses.replace(
            base, iters=6, loss_warmup_iters=2, lr_warmup_iters=2, batch_size=4, crop_size=84, num_workers=0
        )
    if args.iters:
        base = dataclasses.replace(
            base, iters=args.iters, loss_warmup_iters=min(base.loss_warmup_iters, args.iters // 3)
        )
    if args.overrides:
        from cosa_sdk.training.config import apply_overrides, override_key

        named_by_rows = sorted({override_key(o) for o in args.overrides} & set(TECHNIQUES))
        if named_by_rows:  # row_config sets these per row: an override would be silently dropped
            switching = [row for row, keys in ROWS.items() if set(keys) & set(named_by_rows)]
            raise SystemExit(
                f"ablation.py: {', '.join(named_by_rows)} is set by each row, not by key=value; "
                f"choose rows that switch it instead (--rows {' '.join(switching)})"
            )
        base = apply_overrides(base, args.overrides)
    specs = benchmark_specs(data_spec, args.benchmarks)
    to_run = {label: benchmark_info(spec) for label, spec in specs.items()}
    records, benchmarks = [], dict(to_run)
    if args.append and args.out.exists():  # the earlier benchmarks stay in the tables and the summary
        records, earlier = previous_results(json.loads(args.out.read_text()))
        benchmarks = dict(sorted({**earlier, **to_run}.items()))
    with tempfile.TemporaryDirectory(prefix="cosa-ablation-") as scratch:
        root = args.workdir or Path(scratch)
        for label, info in to_run.items():
            workdir = root / label if label in VERSION_LABELS else root  # the runs and warm-ups of a version
            workdir.mkdir(parents=True, exist_ok=True)
            warmups = {} if args.shared_warmup else None
            for seed in args.seeds:
                for row in args.rows:
                    print(f"== {label} {row} seed {seed}", file=sys.stderr, flush=True)
                    record = run_row(
                        row, seed, base, info["data"], workdir, info["cooccurring_pair"], warmups, args.preset
                    )
                    record.update(benchmark=label, data=info["data"])
                    if args.shared_machine:
                        record["shared_machine"] = True
                    key = (label, row, seed)
                    records = [r for r in records if (r["benchmark"], r["row"], r["seed"]) != key] + [record]
                    print(json.dumps(record), file=sys.stderr, flush=True)
                    write_results(args.out, base, data_spec, benchmarks, records)
    print(format_report(benchmarks, records))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

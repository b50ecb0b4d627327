"""`cosa demo` / `make demo`: train, evaluate, export, segment and report on the embedded benchmark.

Every stage reuses what a previous run left (a finished run, its scores, its bundle), so a second
`make demo` only refreshes the report; an interrupted training resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cosa_sdk.constants import DEMO_BUDGET_MIN
from cosa_sdk.demo.budget import fit_schedule, measure_step_times, saved_schedule
from cosa_sdk.demo.report import write_report
from cosa_sdk.errors import CosaConfigError, CosaDataError
from cosa_sdk.report_html import legend
from cosa_sdk.training.config import TrainConfig, apply_overrides, preset
from cosa_sdk.training.data import build_dataset
from cosa_sdk.training.engine.checkpoint import build_network, load_checkpoint
from cosa_sdk.training.evaluation.evaluate import evaluate, format_scores, predict_maps
from cosa_sdk.training.evaluation.visualize import blend, colorize, grid, heatmap
from cosa_sdk.training.method.pseudo_labels import cam_pseudo_label, valid_cams
from cosa_sdk.training.run_record import RunRecord

DEFAULT_DATA = "synthetic"
SAMPLE_IMAGES = 6
LATENCY_BACKENDS = ("onnxruntime", "onnxruntime-int8", "torch")
# Held-out images each in-training evaluation reads: enough to pick the better network and best.pt, while
# the minutes a full pass over 200 images would take (both networks, twice) go to training instead.
# The evaluation stage still scores best.pt on every held-out image.
TRAINING_EVAL_IMAGES = 64


def _say(message: str) -> None:
    print(f"[cosa demo] {message}", flush=True)


@contextlib.contextmanager
def _timed(stage: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    _say(f"{stage}: {time.perf_counter() - started:.0f} s")


def _fresh(target: Path, source: Path) -> bool:
    return target.exists() and source.exists() and target.stat().st_mtime >= source.stat().st_mtime


def train_stage(run: Path, config: TrainConfig, data: str) -> None:
    from cosa_sdk.training.engine.run_dir import run_differences
    from cosa_sdk.training.engine.trainer import Trainer

    last = run / "last.pt"
    if last.exists():
        record = load_checkpoint(last)
        listing = run_differences(record, config, data_spec=data)
        if listing:
            raise CosaConfigError(
                f"{run} holds a demo run with other settings ({listing}); pass --force to start over "
                "or --out to keep both"
            )
        if int(record["iteration"]) >= config.iters and (run / "best.pt").exists():
            _say(f"reusing the trained run in {run} ({record['iteration']} iterations)")
            return
        _say(f"resuming training from {last} (iteration {record['iteration']} of {config.iters})")
        trainer = Trainer(config, run_dir=run, data_spec=data, preset_name="tiny", resume=True)
    else:
        _say(f"training the tiny preset for {config.iters} iterations on {data} -> {run}")
        trainer = Trainer(config, run_dir=run, data_spec=data, preset_name="tiny", force=True)
    _say(trainer.precision_note)
    trainer.fit()


def schedule_stage(
    config: TrainConfig, args: argparse.Namespace, run: Path, out: Path, data: str
) -> tuple[TrainConfig, str]:
    """The training schedule: --iters if given, a started run's own, or the preset's fitted to --budget."""
    if getattr(args, "iters", None):
        return dataclasses.replace(config, iters=args.iters), f"{args.iters} iterations (--iters)"
    budget = getattr(args, "budget", None)
    budget = DEMO_BUDGET_MIN if budget is None else float(budget)
    if budget <= 0:
        return config, f"the preset's full schedule, {config.iters} iterations (--budget 0)"
    resumed = saved_schedule(config, run)
    if resumed is not None:
        _say(f"continuing the run's own schedule ({resumed.iters} iterations)")
        return resumed, f"{resumed.iters} iterations (sized when the run started)"
    _say("timing a few training steps to fit the schedule into the time budget")
    times = measure_step_times(config, data, workdir=out)
    val_images = len(build_dataset(data, "val", mode="eval", mean=config.mean, std=config.std))
    val_images = min(val_images, config.eval_limit or val_images)
    sized = fit_schedule(config, times, budget_min=budget, val_images=val_images)
    _say(sized.message)
    return sized.config, sized.message


def eval_stage(run: Path, out: Path, data: str) -> dict[str, Any]:
    target = out / "eval.json"
    if _fresh(target, run / "best.pt"):
        _say(f"reusing scores in {target}")
        return json.loads(target.read_text())
    record = load_checkpoint(run / "best.pt")
    network = build_network(record)
    run_record = RunRecord.from_checkpoint(record)
    dataset = run_record.eval_dataset(data_spec=data)
    scores = evaluate(
        network,
        dataset,
        num_classes=len(run_record.classes),
        class_names=list(run_record.classes),
        cam_threshold=run_record.cam_threshold,
    )
    print(format_scores(scores))
    target.write_text(json.dumps(scores, indent=2))
    return scores


def export_stage(run: Path, bundle: Path, data: str) -> None:
    from cosa_sdk.export import ExportOptions, export_bundle
    from cosa_sdk.export.cli import print_report
    from cosa_sdk.export.quantize import Int8GateError

    if _fresh(bundle / "cosa.json", run / "best.pt"):
        _say(f"reusing the bundle in {bundle}")
        return
    _say(f"exporting {run / 'best.pt'} -> {bundle} (ONNX + INT8)")
    try:
        result = export_bundle(run / "best.pt", bundle, ExportOptions(int8=True, force=True, data=data))
    except Int8GateError as err:  # the demo still ships and reports fp32
        _say(f"INT8 left out of the bundle: {err}")
        result = export_bundle(run / "best.pt", bundle, ExportOptions(int8=False, force=True, data=data))
    print_report(result)


def segment_stage(bundle: Path, dataset, out: Path) -> list[Any]:
    import cosa_sdk

    segmenter = cosa_sdk.load(bundle, backend="onnxruntime")
    folder = out / "segmented"
    folder.mkdir(parents=True, exist_ok=True)
    images = [dataset[i]["raw"].numpy() for i in range(min(SAMPLE_IMAGES, len(dataset)))]
    results = segmenter.segment(images)
    for i, result in enumerate(results):
        name = dataset.index.items[i].name if hasattr(dataset, "index") else f"image_{i}"
        result.save(folder / f"{name}.png")
        result.overlay().save(folder / f"{name}_overlay.jpg", quality=90)
    return results


def latency_stage(bundle: Path, image: np.ndarray) -> list[list[Any]]:
    import cosa_sdk

    rows = []
    for backend in LATENCY_BACKENDS:
        try:
            segmenter = cosa_sdk.load(bundle, backend=backend)
        except Exception as err:  # a backend that is not installed is reported, not fatal
            _say(f"latency: {backend} unavailable ({err})")
            continue
        for batch in (1, 8):
            stats = segmenter.benchmark(image, batch_size=batch, runs=5, warmup=1)
            rows.append([backend, batch, 1000.0 * stats["latency_s"] / batch, float(stats["images_per_s"])])
    return rows


@torch.no_grad()
def sample_grid(run: Path, dataset, results: list[Any]):
    """Rows of input | CAM (assignment network) | CAM pseudo-label | prediction (SDK) | ground truth."""
    record = load_checkpoint(run / "best.pt")
    network = build_network(record, "assignment" if record.get("assignment") is not None else "online")
    cfg = record["config"]
    palette = record["palette"]
    rows = []
    for i, result in enumerate(results):
        sample = dataset[i]
        raw = sample["raw"].numpy()
        labels = torch.as_tensor(sample["labels"]).float()[None]
        cam, _ = predict_maps(network, sample["image"][None])
        cam = valid_cams(cam, labels)
        cpl = cam_pseudo_label(cam, labels, t_high=cfg["t_high"], t_low=cfg["t_low"])[0].numpy()
        h, w = raw.shape[:2]
        cam_map = torch.nn.functional.interpolate(
            cam.amax(1, keepdim=True), size=(h, w), mode="bilinear", align_corners=False
        )[0, 0].numpy()
        cpl_full = np.asarray(Image.fromarray(cpl.astype(np.uint8)).resize((w, h), Image.NEAREST))
        rows.append(
            [
                raw,
                blend(raw, heatmap(cam_map)),
                colorize(cpl_full, palette),
                colorize(result.mask, palette),
                colorize(sample["mask"].numpy().astype(np.uint8), palette),
            ]
        )
    return grid(rows, cell=160)


def sample_legend(palette: list[list[int]], results: list[Any]) -> str:
    """The sample grid's legend: each class's colour, and its share of the predicted pixels in these samples.

    The class table is the bundle's (index 0 = background), as the SDK results carry it; a checkpoint
    lists only the foreground names.
    """
    classes = list(results[0].classes) if results else []
    counts = np.zeros(len(classes), dtype=np.int64)
    for result in results:
        counts += np.bincount(result.mask.ravel(), minlength=len(classes))[: len(classes)]
    shares = {name: float(count) / max(1, int(counts.sum())) for name, count in zip(classes, counts)}
    return legend(classes, palette, shares=shares, ignore="ignore (CAM pseudo-label)")


def screenshot_stage(report: Path, wanted: bool | None) -> Path | None:
    """report.png from headless Chromium when asked (or, by default, when a browser is installed)."""
    from cosa_sdk.demo.browser import INSTALL_HINT, check_report, find_browser

    if wanted is False or (wanted is None and find_browser() is None):
        if wanted is None:
            _say(f"no Chromium found, so no report.png ({INSTALL_HINT})")
        return None
    check = check_report(report, screenshot=report.with_suffix(".png"))
    if not check.ok:
        raise CosaDataError(f"{report}: only {check.images_loaded} of {check.images_total} images rendered")
    _say(f"report renders in Chromium with all {check.images_total} images -> {check.screenshot}")
    return check.screenshot


def demo_command(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.force and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    run, bundle = out / "run", out / "bundle"
    data = getattr(args, "data", None) or DEFAULT_DATA
    started = time.perf_counter()
    demo_preset = dataclasses.replace(preset("tiny"), eval_limit=TRAINING_EVAL_IMAGES)
    config = apply_overrides(demo_preset, list(getattr(args, "overrides", None) or []))
    with _timed("schedule"):
        config, schedule_note = schedule_stage(config, args, run, out, data)
    with _timed("training"):
        train_stage(run, config, data)
    with _timed("evaluation"):
        scores = eval_stage(run, out, data)
    with _timed("export"):
        export_stage(run, bundle, data)
    record = load_checkpoint(run / "best.pt")
    dataset = RunRecord.from_checkpoint(record).eval_dataset(data_spec=data)
    with _timed("segmentation and latency"):
        results = segment_stage(bundle, dataset, out)
        latency = latency_stage(bundle, dataset[0]["raw"].numpy())
    (out / "latency.json").write_text(json.dumps(latency, indent=2))
    commands = [
        f"cosa segment path/to/images --model {bundle} --out masks --overlay",
        f"cosa serve --model {bundle} --port 3000",
        f"cosa eval {run / 'best.pt'} --tta",
    ]
    summary = [
        ["dataset", f"{data} ({len(dataset)} held-out images, {len(record['classes'])} classes)"],
        [
            "model",
            f"{record['model_config']['backbone']} ({record.get('backbone_weights')}), "
            f"{record['iteration']} iterations, network: {record.get('selected')}",
        ],
        ["training schedule", schedule_note],
        ["seg mIoU (label-free)", scores["seg_miou"]],
        ["seg mIoU (GT-filtered)", scores["seg_miou_gt_filtered"]],
        ["CAM mIoU", scores["cam_miou"]],
    ]
    if scores.get("images_right") is not None:
        summary.append(
            [
                "held-out images segmented right",
                f"{scores['images_right']:.1f} % (label-free mIoU of the image >= 50; median "
                f"{scores['image_miou_median']:.1f})",
            ]
        )
    report = write_report(
        out / "report.html",
        title="cosa-sdk demo: CoSA on the synthetic benchmark",
        summary_rows=summary,
        sample_grid=sample_grid(run, dataset, results),
        sample_caption="input | CAM of the assignment network | CAM pseudo-label (white = ignore) | "
        "prediction of the exported bundle (ONNX Runtime) | ground truth. Colours as in the legend above; "
        "the shares are of the predicted pixels in these samples.",
        sample_legend=sample_legend(record["palette"], results),
        metrics_path=run / "metrics.jsonl",
        scores=scores,
        latency_rows=latency,
        commands=commands,
    )
    with _timed("report picture"):
        screenshot = screenshot_stage(report, getattr(args, "screenshot", None))
    _say(f"finished in {(time.perf_counter() - started) / 60:.1f} min")
    if screenshot is not None:
        print(f"picture: {screenshot}")
    print(f"report:  {report}")
    print(f"bundle:  {bundle}")
    for command in commands[:2]:
        print(f"try:     {command}")
    return 0

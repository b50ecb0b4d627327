"""How good a trained run's CAM pseudo-labels are at other thresholds, with and without affinity refinement.

The seg stream of a weakly trained run learns what its CAM pseudo-labels (CPLs) say, so a threshold pair
or a refinement that makes them closer to the masks is worth a training run, and one that does not is not.
It learns from two of them: the CPL of the main CAM and, weighted by `aux_cpl_weight`, that of the
auxiliary CAM on an earlier block; both are scored (column `cam`).
This script scores the CPLs the training step itself would make (`CoSALosses.teacher_maps` once per
image, then `pseudo_labels_from` per setting, with the run's own teacher settings) on held-out images that
have masks, for each threshold pair, with `cam_refine` off and on. No training: under a minute on a
CPU for 100 images.

Columns: the share of pixels the CPL labels (the rest is ignored), the accuracy of those pixels, the share of
object pixels it labels with the right class (foreground recall), the share of pixels it calls objects
(against the masks' share: more is bleeding, less is a partial cover), and the mIoU over labelled pixels,
also per class. The teacher sees the ground-truth image labels, as in training.

Did the seg stream learn what its CPL says? The same network's seg stream (one plain forward, label-free
argmax, as `cosa eval` scores it) is scored
beside each CPL: `seg=cpl`, the share of the CPL's labelled pixels where the seg stream says the same class
(per class: of the pixels the CPL gives class c, the share the seg stream also gives c), and `seg mIoU`,
the seg stream's mIoU against the masks on those same pixels. Where `seg mIoU` matches the CPL's mIoU the
seg stream learned its teacher, and what it loses over the whole image comes from the pixels the CPL
ignores; where it falls short, the seg stream did not learn the labels it was given. `--split train`
scores the training images instead (where they have masks), the images the seg stream was fitted to.

The teacher sees each image as the run's training did (its `pseudo_scales` and `pseudo_flip`);
`--teacher-scales 1.0,0.5,1.5 --teacher-flip on` scores the CPLs a multi-scale, mirrored teacher would give
the same network, before paying for it in training.

Usage: python benchmarks/pseudo_label_quality.py RUN_DIR [--data SPEC] [--split val|train]
       [--network assignment] [--thresholds 0.7,0.45 0.4,0.25] [--teacher-scales 1.0,1.5] [--teacher-flip on|off]
       [--limit 100] [--out pseudo_labels.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cosa_sdk.errors import CosaError, CosaInputError
from cosa_sdk.training.config import TrainConfig
from cosa_sdk.training.config_checks import pseudo_scales_problem
from cosa_sdk.training.engine.checkpoint import build_network, load_checkpoint
from cosa_sdk.training.evaluation.evaluate import predict_maps
from cosa_sdk.training.evaluation.metrics import ConfusionMatrix
from cosa_sdk.training.method.pseudo_labels import IGNORE_INDEX, channel_argmax
from cosa_sdk.training.method.step import CoSALosses
from cosa_sdk.training.run_record import RunRecord

DEFAULT_PAIRS = ((0.7, 0.45), (0.6, 0.35), (0.5, 0.3), (0.4, 0.25), (0.3, 0.15))
CAMS = ("main", "aux")  # the CPL of the final CAM and of the auxiliary CAM (the same pair for both)


def threshold_pair(text: str) -> tuple[float, float]:
    """'HIGH,LOW' -> (high, low), with 0 < low < high < 1."""
    try:
        high, low = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a threshold pair as HIGH,LOW, e.g. 0.7,0.45") from None
    if not 0 < low < high < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 < LOW < HIGH < 1 (pixels between them are ignored)")
    return high, low


def teacher_scales(text: str) -> tuple[float, ...]:
    """'1.0,0.5,1.5' -> (1.0, 0.5, 1.5): the sizes, relative to the image, the teacher looks at."""
    try:
        scales = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give the scales as S1,S2,..., e.g. 1.0,0.5,1.5") from None
    problem = pseudo_scales_problem(scales)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
    return scales


def on_off(text: str) -> bool:
    if text.lower() not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"{text!r}: say on or off")
    return text.lower() == "on"


def _percent(value: float) -> float | None:
    return None if np.isnan(value) else 100.0 * float(value)


def _agreement(matrix: np.ndarray) -> tuple[float, list[float | None]]:
    """(share of pixels on the diagonal, per row: the share of that row's pixels on the diagonal) in percent."""
    rows = matrix.sum(axis=1)
    per_row = [None if n == 0 else 100.0 * float(matrix[i, i]) / float(n) for i, n in enumerate(rows)]
    return 100.0 * float(np.trace(matrix)) / max(1, int(rows.sum())), per_row


class _Tally:
    """Counts for one (CAM, refinement, threshold pair): the CPL against the masks over its labelled pixels,
    its coverage, and the seg stream on those pixels (against the CPL and against the masks)."""

    def __init__(self, num_classes: int) -> None:
        self.matrix = ConfusionMatrix(num_classes)
        self.seg_vs_cpl = ConfusionMatrix(num_classes)  # rows: the CPL's class, columns: the seg stream's
        self.seg_here = ConfusionMatrix(num_classes)
        self.labelled = self.pixels = self.fg_right = self.fg = self.claimed = 0

    def update(self, cpl: np.ndarray, gt: np.ndarray, seg: np.ndarray) -> None:
        valid = gt != IGNORE_INDEX
        labelled = valid & (cpl != IGNORE_INDEX)
        self.matrix.update(cpl[labelled], gt[labelled])
        self.seg_vs_cpl.update(seg[labelled], cpl[labelled])
        self.seg_here.update(seg[labelled], gt[labelled])
        self.labelled += int(labelled.sum())
        self.pixels += int(valid.sum())
        foreground = valid & (gt > 0)
        self.fg += int(foreground.sum())
        self.fg_right += int((foreground & (cpl == gt)).sum())
        self.claimed += int((valid & (cpl > 0) & (cpl != IGNORE_INDEX)).sum())

    def scores(self, names: list[str]) -> dict:
        scores = self.matrix.scores()
        agreement, per_class_agreement = _agreement(self.seg_vs_cpl.matrix)
        return {
            "labelled": 100.0 * self.labelled / max(1, self.pixels),
            "accuracy": 100.0 * float(scores["pixel_acc"]),
            "fg_recall": 100.0 * self.fg_right / max(1, self.fg),
            "foreground": 100.0 * self.claimed / max(1, self.pixels),
            "gt_foreground": 100.0 * self.fg / max(1, self.pixels),
            "miou": 100.0 * float(scores["miou"]),
            "per_class_iou": _by_name(names, scores["per_class_iou"]),
            "seg_agreement": agreement,
            "per_class_seg_agreement": dict(zip(names, per_class_agreement, strict=True)),
            "seg_miou": 100.0 * float(self.seg_here.scores()["miou"]),
        }


def _by_name(names: list[str], values) -> dict[str, float | None]:
    return {n: _percent(v) for n, v in zip(names, values, strict=True)}


@torch.no_grad()
def measure(
    run: Path,
    *,
    pairs: tuple[tuple[float, float], ...] = DEFAULT_PAIRS,
    data_spec: str | None = None,
    split: str = "val",
    network_name: str = "assignment",
    limit: int = 100,
    scales: tuple[float, ...] | None = None,
    flip: bool | None = None,
) -> dict:
    """{"rows": [{cam, refine, t_high, t_low, labelled, accuracy, fg_recall, miou, per_class_iou, seg_agreement,
    seg_miou, ...}], "seg": {miou, per_class_iou}, "teacher": {scales, flip}, ...} for one run. ``scales`` and
    ``flip`` replace the run's own teacher settings (None keeps them)."""
    checkpoint = run / "best.pt" if run.is_dir() else run
    if not checkpoint.is_file():
        raise CosaInputError(f"{checkpoint}: no checkpoint there; give a run folder holding best.pt, or a .pt file")
    record = load_checkpoint(checkpoint)
    network = build_network(record, network_name).eval()
    run_record = RunRecord.from_checkpoint(record)
    base = TrainConfig.from_dict(record["config"])
    base = dataclasses.replace(
        base,
        pseudo_scales=base.pseudo_scales if scales is None else tuple(scales),
        pseudo_flip=base.pseudo_flip if flip is None else flip,
    )
    names = ["background", *run_record.classes]
    tallies: dict[tuple[str, bool, float, float], _Tally] = {}
    losses = {}
    for refine in (False, True):
        for high, low in pairs:
            config = dataclasses.replace(
                base, cam_refine=refine, dynamic_threshold=False, t_high=high, t_low=low, aux_t_high=high, aux_t_low=low
            )
            losses[refine, high, low] = CoSALosses(config, grid_size=1)
            for cam in CAMS:
                tallies[cam, refine, high, low] = _Tally(len(names))
    # the teacher's fused maps depend on neither the thresholds nor the refinement: one forward per image
    teacher = next(iter(losses.values()))
    seg_all = ConfusionMatrix(len(names))
    images = 0
    for sample in _samples(run_record, split, data_spec):
        if images >= limit:
            break
        images += 1
        image, gt = sample["image"][None], sample["mask"].numpy()
        labels = sample["labels"][None].float()
        fused = teacher.teacher_maps(network, image)
        _, seg = predict_maps(network, image)  # one plain forward, as `cosa eval` and the SDK predict
        seg = channel_argmax(F.interpolate(seg, size=gt.shape, mode="bilinear", align_corners=False))[0].numpy()
        seg_all.update(seg, gt)
        for key, step_losses in losses.items():
            pseudo = step_losses.pseudo_labels_from(fused, image, labels, None)
            for cam, cpl in zip(CAMS, (pseudo.cpl, pseudo.cpl_aux), strict=True):
                cpl = F.interpolate(cpl[:, None].float(), size=gt.shape, mode="nearest")[0, 0].long().numpy()
                tallies[(cam, *key)].update(cpl, gt, seg)
    rows = [
        {"cam": cam, "refine": refine, "t_high": high, "t_low": low, **tally.scores(names)}
        for (cam, refine, high, low), tally in tallies.items()
    ]
    seg_scores = seg_all.scores()
    seg = {"miou": 100.0 * float(seg_scores["miou"]), "per_class_iou": _by_name(names, seg_scores["per_class_iou"])}
    return {
        "run": str(run),
        "network": network_name,
        "split": split,
        "images": images,
        "teacher": {"scales": list(base.pseudo_scales), "flip": base.pseudo_flip},
        "seg": seg,
        "rows": rows,
    }


def _samples(run_record: RunRecord, split: str, data_spec: str | None):
    """The split's images with masks, or a CosaInputError naming the split that has none."""
    for sample in run_record.eval_dataset(split, data_spec=data_spec):
        if sample.get("mask") is None:
            raise CosaInputError(
                f"the {split!r} images of this dataset have no masks to score against; use --split val"
            )
        yield sample


def format_table(result: dict) -> str:
    rows = result["rows"]
    names = list(rows[0]["per_class_iou"])
    head = f"{'cam':>4} {'refine':>6} {'high':>5} {'low':>5} {'labelled':>9} "
    head += f"{'acc':>6} {'fg rec':>7} {'objects':>8} {'mIoU':>6} {'seg=cpl':>8} {'seg mIoU':>9}  "
    lines = [head + " ".join(f"{n[:8]:>8}" for n in names)]
    for r in rows:
        cells = f"{r['cam']:>4} {'on' if r['refine'] else 'off':>6} {r['t_high']:5.2f} {r['t_low']:5.2f} "
        cells += f"{r['labelled']:9.1f} "
        cells += f"{r['accuracy']:6.1f} {r['fg_recall']:7.1f} {r['foreground']:8.1f} {r['miou']:6.1f} "
        cells += f"{r['seg_agreement']:8.1f} {r['seg_miou']:9.1f}  "
        lines.append(cells + _cells(r["per_class_iou"]))
    seg = result["seg"]
    label = "the seg stream over every pixel (label-free)"
    lines.append(f"{label:>57} {seg['miou']:6.1f}{'':21}" + _cells(seg["per_class_iou"]))
    lines.append(f"objects: share of pixels called objects; the masks hold {rows[0]['gt_foreground']:.1f}")
    lines.append("seg=cpl: share of the CPL's labelled pixels where the seg stream agrees; seg mIoU: on those pixels")
    teacher = result.get("teacher")
    seen = "" if teacher is None else f"; teacher scales {teacher['scales']}, flip {'on' if teacher['flip'] else 'off'}"
    lines.append(f"{result['images']} {result.get('split', 'val')} images{seen}")
    return "\n".join(lines)


def _cells(values: dict[str, float | None]) -> str:
    return " ".join("       -" if v is None else f"{v:8.1f}" for v in values.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder (its best.pt) or a checkpoint file")
    parser.add_argument("--data", default=None, help="dataset spec (default: the one the run trained on)")
    parser.add_argument("--split", default="val", help="the split to score: val (held out) or train (fitted to)")
    parser.add_argument("--network", default="assignment", choices=("assignment", "online"))
    parser.add_argument("--thresholds", nargs="+", type=threshold_pair, default=list(DEFAULT_PAIRS))
    parser.add_argument(
        "--teacher-scales", type=teacher_scales, default=None, help="the teacher's scales (default: the run's)"
    )
    parser.add_argument("--teacher-flip", type=on_off, default=None, help="on | off (default: the run's)")
    parser.add_argument("--limit", type=int, default=100, help="held-out images to score")
    parser.add_argument("--out", type=Path, default=None, help="also write the scores as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    try:
        result = measure(
            args.run,
            pairs=tuple(args.thresholds),
            data_spec=args.data,
            split=args.split,
            network_name=args.network,
            limit=args.limit,
            scales=args.teacher_scales,
            flip=args.teacher_flip,
        )
    except CosaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

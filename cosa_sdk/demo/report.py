"""A self-contained HTML report of a run: sample grid, curves, per-class IoU, latency per backend.

Every picture is embedded as a base64 PNG, so the single file can be mailed or opened offline.
"""

from __future__ import annotations

import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from cosa_sdk.report_html import IMAGE_CHECK_SCRIPT, STYLE, image_tag, table


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training log lines, evaluation lines) from a run's metrics.jsonl."""
    train, evals = [], []
    if path.exists():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            (evals if "eval" in entry else train).append(entry)
    return train, evals


def curves_figure(train: Sequence[dict[str, Any]], evals: Sequence[dict[str, Any]]) -> Image.Image:
    """Loss terms over iterations (left) and validation mIoU of both networks (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6), dpi=100)
    steps = [e["step"] for e in train]
    for term in ("loss", "cls", "c2s", "s2c", "reg", "csc", "seg_ce"):
        points = [(e["step"], e[term]) for e in train if term in e]
        if points:
            xs, ys = zip(*points)
            left.plot(xs, ys, label=term, linewidth=1.2)
    left.set_xlabel("iteration")
    left.set_title("training losses")
    if steps:
        left.legend(fontsize=8)
    for network, style in (("assignment", "-"), ("online", "--")):
        for key, colour in (("seg_miou", "tab:blue"), ("seg_miou_gt_filtered", "tab:green"), ("cam_miou", "tab:red")):
            points = [
                (e["step"], e["eval"][network][key])
                for e in evals
                if network in e["eval"] and e["eval"][network].get(key) is not None
            ]
            if points:
                xs, ys = zip(*points)
                right.plot(xs, ys, style, color=colour, marker="o", markersize=3, label=f"{network} {key}")
    right.set_xlabel("iteration")
    right.set_ylabel("mIoU (%)")
    counts = {e["eval"][n].get("num_images") for e in evals for n in ("online", "assignment") if n in e["eval"]}
    counts.discard(None)
    right.set_title(f"validation ({max(counts)} held-out images)" if counts else "validation")
    if evals:
        right.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def per_class_rows(scores: dict[str, Any]) -> list[list[Any]]:
    seg, vd = scores["per_class_iou"], scores["per_class_iou_gt_filtered"]
    cam = scores.get("per_class_cam_iou") or {}
    return [[name, seg[name], vd.get(name), cam.get(name)] for name in seg]


def write_report(
    path: Path,
    *,
    title: str,
    summary_rows: Sequence[Sequence[Any]],
    sample_grid: Image.Image,
    sample_caption: str,
    metrics_path: Path,
    scores: dict[str, Any],
    latency_rows: Sequence[Sequence[Any]],
    commands: Sequence[str],
    sample_legend: str = "",
) -> Path:
    """Write the HTML report and return its path; `sample_legend` (see `legend`) goes under the sample grid."""
    train, evals = read_metrics(metrics_path)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        table(["", ""], summary_rows),
        "<h2>Samples (held-out images)</h2>",
        image_tag(sample_grid, alt="sample grid"),
        sample_legend,
        f"<p class='caption'>{html.escape(sample_caption)}</p>",
        "<h2>Training curves</h2>",
        image_tag(curves_figure(train, evals), alt="training curves"),
        "<h2>Per-class IoU (%)</h2>",
        table(["class", "seg (label-free)", "seg (GT-filtered)", "CAM"], per_class_rows(scores)),
        "<h2>Inference latency per backend</h2>",
        table(["backend", "batch", "median ms / image", "images / s"], latency_rows),
        "<h2>Try next</h2>",
        "".join(f"<pre><code>{html.escape(c)}</code></pre>" for c in commands),
        IMAGE_CHECK_SCRIPT,
        "</body></html>",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path

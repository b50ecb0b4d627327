"""A self-contained HTML report of a run: sample grid, curves, per-class IoU, latency per backend.

Every picture is embedded as a base64 PNG, so the single file can be mailed or opened offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { padding: 4px 10px; border: 1px solid #ddd; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } .caption { color: #666; font-size: 0.9em; } code { background: #f4f4f4; padding: 1px 4px; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 18px; list-style: none; padding: 0; margin: 0.6em 0; }
.legend li { display: flex; align-items: center; gap: 6px; } .legend .absent { color: #999; }
.legend .swatch { display: inline-block; width: 14px; height: 14px; border: 1px solid #0006; border-radius: 2px; }
.legend .share { color: #666; font-variant-numeric: tabular-nums; }
"""

# Marks <body data-images-loaded="OK/TOTAL"> after load, so a browser check (training.browser) sees broken pictures.
IMAGE_CHECK_SCRIPT = """<script>
addEventListener("load", () => {
  const images = Array.from(document.images);
  const ok = images.filter((i) => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesLoaded = ok + "/" + images.length;
});
</script>"""


def image_tag(picture: Image.Image, *, alt: str) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def legend(
    classes: Sequence[str],
    palette: Sequence[Sequence[int]],
    *,
    shares: Mapping[str, float] | None = None,
    ignore: str | None = None,
) -> str:
    """Which colour is which class: a swatch and the name per class, in class-index order.

    `shares` (class -> fraction of pixels) adds each class's share; classes with none are greyed.
    `ignore` labels the white swatch of ignored pixels (255), when the pictures have any.
    """
    items = []
    for index, name in enumerate(classes):
        rgb = tuple(int(v) for v in palette[index][:3]) if index < len(palette) else (0, 0, 0)
        share, state = "", ""
        if shares is not None:
            fraction = float(shares.get(name, 0.0))
            share = f' <span class="share">{100 * fraction:.1f} %</span>'
            state = "" if fraction > 0 else ' class="absent"'
        items.append(
            f'<li data-class="{html.escape(name)}"{state}>'
            f'<span class="swatch" style="background: rgb{rgb}"></span>{html.escape(name)}{share}</li>'
        )
    if ignore:
        items.append(
            '<li data-class="ignore"><span class="swatch" style="background: rgb(255, 255, 255)"></span>'
            f"{html.escape(ignore)}</li>"
        )
    return f'<ul class="legend" aria-label="class colours">{"".join(items)}</ul>'


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
    right.set_title("validation")
    if evals:
        right.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f'<td class="num">{value:.2f}</td>'
        if value is None:
            return '<td class="num">–</td>'
        return f"<td>{html.escape(str(value))}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


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

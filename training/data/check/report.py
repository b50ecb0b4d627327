"""`cosa data check --report FILE`: one self-contained HTML page (plots embedded as PNG) of a dataset check.

The page carries the same image check as the run report (`report.IMAGE_CHECK_SCRIPT`), so
`training.browser.check_report` can confirm in headless Chromium that every plot rendered.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from PIL import Image

from cosa_sdk.report_html import IMAGE_CHECK_SCRIPT, STYLE, image_tag, table
from cosa_sdk.training.data.check.validate import DatasetStats, ValidationReport


def _figure(draw, size=(9, 4)) -> Image.Image:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=90)
    draw(fig, ax)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _class_bars(stats: DatasetStats) -> Image.Image:
    def draw(fig, ax):
        x = np.arange(len(stats.classes))
        ax.bar(x - 0.2, stats.images_per_class["train"], 0.4, label="train")
        ax.bar(x + 0.2, stats.images_per_class["val"], 0.4, label="val")
        ax.set_xticks(x, stats.classes, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("images")
        ax.legend()

    return _figure(draw, (max(6, 0.35 * len(stats.classes) + 3), 4))


def _cooccurrence(stats: DatasetStats) -> Image.Image:
    co = np.asarray(stats.cooccurrence, dtype=np.float64)
    diag = np.diag(co).copy()
    # Row-normalised: share of class i's images that also hold class j.
    share = np.divide(co, diag[:, None], out=np.zeros_like(co), where=diag[:, None] > 0)
    n = len(stats.classes)

    def draw(fig, ax):
        im = ax.imshow(share, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(n), stats.classes, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(n), stats.classes, fontsize=7)
        ax.set_xlabel("also holds")
        if n <= 15:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, int(co[i, j]), ha="center", va="center", color="w", fontsize=7)
        fig.colorbar(im, ax=ax, label="share of the row class's images")

    side = max(5, 0.3 * n + 3)
    return _figure(draw, (side + 1, side))


def _label_sets(stats: DatasetStats, top: int = 20) -> Image.Image:
    sets = stats.label_sets[:top][::-1]

    def draw(fig, ax):
        ax.barh(range(len(sets)), [c for _, c in sets])
        ax.set_yticks(range(len(sets)), [" + ".join(s) or "(none)" for s, _ in sets], fontsize=7)
        ax.set_xlabel("training images")

    return _figure(draw, (8, max(3, 0.25 * len(sets) + 1)))


def _sizes(stats: DatasetStats) -> Image.Image:
    def draw(fig, ax):
        ws = [w for w, _ in stats.sizes] or [0]
        hs = [h for _, h in stats.sizes] or [0]
        ax.scatter(ws, hs, s=6, alpha=0.5)
        ax.set_xlabel("width (px)")
        ax.set_ylabel("height (px)")

    return _figure(draw, (5, 4))


def write_check_report(path: Path, report: ValidationReport, stats: DatasetStats | None) -> Path:
    """Write the HTML page for a validation report (and its statistics when there are items)."""
    title = f"Dataset check: {report.spec}"
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE} .warn {{ color: #a40; }} .bad {{ color: #b00; }}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    counts = report.counts()
    parts.append(
        table(
            ["", ""],
            [
                ["classes", str(len(report.classes))],
                ["train images", str(counts["train_items"])],
                ["val images", str(counts["val_items"])],
                ["problems", str(counts["problems"])],
            ],
        )
    )
    parts.append(f"<h2>Problems ({len(report.problems)})</h2>")
    if report.problems:
        rows = [[p.file or "dataset", "" if p.line is None else str(p.line), p.what, p.fix] for p in report.problems]
        parts.append(table(["file", "line", "what is wrong", "fix"], rows))
    else:
        parts.append("<p>None: every image decodes and every mask matches its image.</p>")
    if stats is not None:
        if stats.warnings:
            parts.append("<h2>Warnings</h2><ul>")
            parts += [f"<li class='warn'>{html.escape(w)}</li>" for w in stats.warnings]
            parts.append("</ul>")
        parts.append("<h2>Images per class</h2>")
        parts.append(image_tag(_class_bars(stats), alt="images per class"))
        rows = [
            [
                name,
                str(stats.images_per_class["train"][k]),
                str(stats.images_per_class["val"][k]),
                str(stats.instances_per_class["train"][k] + stats.instances_per_class["val"][k]),
                f"{stats.val_coverage.get(name, 0.0):.2%}",
            ]
            for k, name in enumerate(stats.classes)
        ]
        parts.append(table(["class", "train images", "val images", "instances (masks)", "val pixels"], rows))
        if stats.classes:
            parts.append("<h2>Co-occurrence (training)</h2>")
            parts.append(image_tag(_cooccurrence(stats), alt="co-occurrence matrix"))
            parts.append(
                "<p class='caption'>Cell (i, j): share of the images of class i that also hold class j; "
                "numbers are image counts. Pairs near 1 in both directions are learnt as one thing.</p>"
            )
        if stats.label_sets:
            parts.append("<h2>Label sets (training)</h2>")
            parts.append(image_tag(_label_sets(stats), alt="label-set histogram"))
        if stats.sizes:
            parts.append("<h2>Image sizes</h2>")
            parts.append(image_tag(_sizes(stats), alt="image sizes"))
        if stats.val_with_mask:
            parts.append(f"<h2>Val mask coverage ({stats.val_with_mask} masks)</h2>")
            parts.append(table(["value", "share of pixels"], [[k, f"{v:.2%}"] for k, v in stats.val_coverage.items()]))
        if stats.duplicates:
            parts.append("<h2>Exact duplicates</h2><ul>")
            parts += [f"<li>{html.escape(' = '.join(g))}</li>" for g in stats.duplicates]
            parts.append("</ul>")
    parts += [IMAGE_CHECK_SCRIPT, "</body></html>"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path

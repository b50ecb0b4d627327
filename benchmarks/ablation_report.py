"""The tables, JSON and bar chart of benchmarks/ablation.py: per-row summaries over seeds, the paired
differences to `released` on the same seed, the SDK post-processing table, and the report over benchmarks.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from cosa_sdk.training.config import TrainConfig
from cosa_sdk.training.evaluation.evaluate import VARIANTS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation_benchmarks import by_benchmark, format_summary, judged_best, summarise_over
from ablation_rows import ROWS


def summarise(records: list[dict]) -> list[dict]:
    rows = []
    for row in ROWS:
        mine = [r for r in records if r["row"] == row]
        if not mine:
            continue
        entry = {"row": row, "seeds": [r["seed"] for r in mine]}
        for key in ("seg_miou", "images_right", "cam_miou", "pair_miou", "minutes"):
            # a run marked "shared_machine" (the cores were busy with other work) keeps its scores, not its time
            timed = [r for r in mine if not (key == "minutes" and r.get("shared_machine"))]
            values = [r[key] for r in timed if r.get(key) is not None]
            entry[key] = statistics.mean(values) if values else None
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            entry[f"{key}_n"] = len(values)
        entry["postprocess"] = _postprocess_means(mine)
        rows.append(entry)
    return rows


def _postprocess_means(runs: list[dict]) -> dict[str, dict]:
    """Per post-processing variant: mean label-free seg mIoU and share of images right over the runs."""
    out = {}
    for name in VARIANTS:
        scored = [r["postprocess"][name] for r in runs if (r.get("postprocess") or {}).get(name)]
        if scored:
            out[name] = {
                key: statistics.mean(v[key] for v in scored) if all(v[key] is not None for v in scored) else None
                for key in ("seg_miou", "images_right")
            }
    return out


def format_postprocess(rows: list[dict]) -> str:
    """Label-free seg mIoU / % images right per row: plain bilinear argmax, then each SDK post-processing."""
    rows = [e for e in rows if e.get("postprocess")]
    if not rows:
        return ""
    head = f"{'row':<14} {'bilinear':>13}" + "".join(f" {name:>24}" for name in VARIANTS)
    lines = ["seg mIoU / % images right, by post-processing:", head]

    def pair(seg: float | None, right: float | None) -> str:
        return "-" if seg is None else f"{seg:.1f} / {right:.0f}" if right is not None else f"{seg:.1f}"

    for e in rows:
        cells = [pair(e["seg_miou"], e.get("images_right"))]
        cells += [pair(*(e["postprocess"].get(n, {}).get(k) for k in ("seg_miou", "images_right"))) for n in VARIANTS]
        lines.append(f"{e['row']:<14} {cells[0]:>13}" + "".join(f" {c:>24}" for c in cells[1:]))
    return "\n".join(lines)


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
    value = entry.get(key)
    if value is None:
        return none
    spread = f" ± {entry[key + '_std']:.1f}" if entry[f"{key}_n"] > 1 else ""
    return f"{value:.1f}{spread}"


def format_table(rows: list[dict]) -> str:
    keys = ("seg_miou", "images_right", "cam_miou", "pair_miou", "minutes")
    head = ("seg mIoU", "% right", "CAM mIoU", "pair mIoU", "minutes")
    lines = [f"{'row':<14} {'seeds':>5}" + "".join(f" {h:>13}" for h in head)]
    for e in rows:
        cells = [_cell(e, key, "-") for key in keys]
        lines.append(f"{e['row']:<14} {len(e['seeds']):>5}" + "".join(f" {c:>13}" for c in cells))
    return "\n".join(lines)


def format_markdown(rows: list[dict]) -> str:
    """The same table as README markdown (minutes count idle runs only)."""
    lines = [
        "| row | seeds | seg mIoU (label-free) | % images right | CAM mIoU | pair mIoU | train minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in rows:
        keys = ("seg_miou", "images_right", "cam_miou", "pair_miou", "minutes")
        cells = " | ".join(_cell(e, key, "–") for key in keys)
        lines.append(f"| {e['row']} | {len(e['seeds'])} | {cells} |")
    return "\n".join(lines)


def format_paired(diffs: list[dict], reference: str = "released") -> str:
    lines = [f"seg mIoU minus {reference} on the same seed:"]
    for d in diffs:
        each = ", ".join(f"{v:+.1f}" for v in d["diffs"])
        lines.append(f"  {d['row']:<14} {d['mean']:+.1f} ± {d['std']:.1f} over {d['seeds']} seed(s) ({each})")
    return "\n".join(lines)


def bar_chart(rows: list[dict], path: Path, summary: list[dict] | None = None) -> None:
    """One benchmark: seg and CAM mIoU per row; several: seg mIoU per row and benchmark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5), dpi=100)
    names = [r["row"] for r in summary or rows]
    xs = np.arange(len(names))
    if summary:
        labels = sorted({b for e in summary for b in e["seg_miou"]["per_benchmark"]})
        width = 0.8 / max(1, len(labels))
        for i, label in enumerate(labels):
            values = [e["seg_miou"]["per_benchmark"].get(label, 0.0) for e in summary]
            ax.bar(xs - 0.4 + width * (i + 0.5), values, width=width, label=f"seg mIoU {label}")
    else:
        for offset, key, label in ((-0.2, "seg_miou", "seg mIoU (label-free)"), (0.2, "cam_miou", "CAM mIoU")):
            values = [r[key] or 0.0 for r in rows]
            errors = [r[f"{key}_std"] for r in rows]
            ax.bar(xs + offset, values, width=0.4, yerr=errors, label=label, capsize=3)
    ax.set_xticks(xs, names, rotation=20)
    ax.set_ylabel("mIoU (%)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summarise_benchmarks(records: list[dict], benchmarks: dict[str, dict]) -> list[dict]:
    """Per row: each benchmark's value, the mean over the benchmarks and the worst (ablation_benchmarks)."""
    return summarise_over(records, list(benchmarks), list(ROWS), summarise, paired_differences)


def format_report(benchmarks: dict[str, dict], records: list[dict]) -> str:
    """Per benchmark: its table, the markdown table and the paired differences; with several benchmarks,
    then the summary over them (mean and worst)."""
    parts = []
    for label, runs in by_benchmark(records, list(benchmarks)).items():
        if runs:
            rows, info = summarise(runs), benchmarks[label]
            title = f": {info['title']}" if info.get("title") else ""
            parts += [f"== benchmark {label} ({info['data']}){title}", format_table(rows), format_markdown(rows)]
            parts += [text for text in [format_postprocess(rows)] if text]
            parts.append(format_paired(paired_differences(runs)))
    if len(benchmarks) > 1:
        summary = summarise_benchmarks(records, benchmarks)
        parts += [f"== every benchmark ({', '.join(benchmarks)}): mean and WORST", format_summary(summary)]
        parts.append(format_summary(summary, markdown=True))
    return "\n".join(parts)


def write_results(
    out: Path, base: TrainConfig, data_spec: str, benchmarks: dict[str, dict], records: list[dict]
) -> None:
    """JSON and the bar chart, rewritten after every run: every run; per benchmark its spec, title, pair,
    per-row summary and paired differences; the summary over the benchmarks and the row it judges best. With
    one benchmark, its rows, paired differences and pair are also at the top level, as before benchmarks."""
    out.parent.mkdir(parents=True, exist_ok=True)
    per_bench = {
        label: {**benchmarks[label], "rows": summarise(runs), "paired_vs_released": paired_differences(runs)}
        for label, runs in by_benchmark(records, list(benchmarks)).items()
    }
    summary = summarise_benchmarks(records, benchmarks)
    payload = {
        "machine": _machine(),
        "config": base.to_dict(),
        "data": data_spec,
        "runs": records,
        "benchmarks": per_bench,
        "summary": summary,
        "judged_best": judged_best(summary),
    }
    single = next(iter(per_bench.values())) if len(per_bench) == 1 else None
    if single is not None:
        payload.update(cooccurring_pair=single["cooccurring_pair"], rows=single["rows"])
        payload["paired_vs_released"] = single["paired_vs_released"]
    out.write_text(json.dumps(payload, indent=2))
    bar_chart(single["rows"] if single else [], out.with_suffix(".png"), None if single else summary)


def _machine() -> dict:
    import os
    import platform

    from cosa_sdk.training.engine.precision import native_bf16

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "native_bf16": native_bf16(torch.device("cpu"))[1],  # what amp=auto decides from
    }

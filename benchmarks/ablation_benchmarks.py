"""The benchmark axis of benchmarks/ablation.py: which benchmarks a run covers and the summary over them.

Every row runs on every benchmark (the versions of the synthetic benchmark, `synthetic:version=N`); per
row the summary gives the mean over the benchmarks and the WORST benchmark, and a preset is judged by its
worst benchmark, not its best. Runs carry their benchmark's label ("v1".."v4", or the spec of other data).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Sequence

from cosa_sdk.training.data import ensure_synthetic, parse_data_spec
from cosa_sdk.training.data.readers.synthetic_profiles import DEFAULT_VERSION, PROFILES
from cosa_sdk.training.data.spec import DataSpec

MEASURES = ("seg_miou", "cam_miou", "pair_miou", "vs_released", "minutes")


def parse_benchmarks(text: str) -> list[int]:
    """`--benchmarks 1,2,3,4` -> [1, 2, 3, 4]: known versions, each once."""
    try:
        versions = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--benchmarks takes versions like 1,2,3,4, got {text!r}") from exc
    if not versions or set(versions) - set(PROFILES) or len(set(versions)) != len(versions):
        raise argparse.ArgumentTypeError(f"--benchmarks {text!r}: give distinct versions out of {list(PROFILES)}")
    return versions


def benchmark_label(spec: DataSpec) -> str:
    """v1..v4 for the synthetic benchmark's versions (no version: the default), else the spec itself."""
    return f"v{spec.params.get('version', DEFAULT_VERSION)}" if spec.kind == "synthetic" else str(spec)


def benchmark_specs(data: str, versions: list[int] | None) -> dict[str, str]:
    """Benchmark label -> data spec. `synthetic[:...]` without a version runs the versions asked for (default:
    all); with a version in the spec, that one. Other data is one benchmark of its own."""
    spec = parse_data_spec(data)
    if spec.kind != "synthetic":
        if versions:
            raise SystemExit(f"--benchmarks picks versions of the synthetic benchmark, but --data is {data!r}")
        return {benchmark_label(spec): str(spec)}
    if "version" in spec.params:
        if versions:
            raise SystemExit("give the benchmark version in --data or in --benchmarks, not in both")
        versions = [spec.params["version"]]
    specs = (DataSpec("synthetic", params={**spec.params, "version": v}) for v in versions or PROFILES)
    return {benchmark_label(s): str(s) for s in specs}


def benchmark_info(data_spec: str) -> dict:
    """What the tables and the JSON say about one benchmark: its spec, title and co-occurring pair (from the
    generated meta.json)."""
    spec = parse_data_spec(data_spec)
    meta = json.loads((ensure_synthetic(spec.params) / "meta.json").read_text()) if spec.kind == "synthetic" else {}
    title = meta.get("benchmark", {}).get("title", "")
    return {"data": data_spec, "title": title, "cooccurring_pair": meta.get("cooccurring_pair", [])}


def previous_results(payload: dict) -> tuple[list[dict], dict[str, dict]]:
    """The runs and benchmarks of an earlier results file (`--append`). Runs written before benchmarks
    existed belong to the file's data."""
    label = benchmark_label(parse_data_spec(payload.get("data", "synthetic")))
    runs = [{"benchmark": label, **run} for run in payload["runs"]]
    keys = ("data", "title", "cooccurring_pair")
    infos = {b: {k: info.get(k, "") for k in keys} for b, info in payload.get("benchmarks", {}).items()}
    for run in runs:
        if run["benchmark"] not in infos:
            pair = payload.get("cooccurring_pair", [])
            infos[run["benchmark"]] = {
                "data": run.get("data", payload.get("data")),
                "title": "",
                "cooccurring_pair": pair,
            }
    return runs, infos


def by_benchmark(records: list[dict], labels: Sequence[str]) -> dict[str, list[dict]]:
    return {label: [r for r in records if r.get("benchmark") == label] for label in labels}


def summarise_over(
    records: list[dict],
    labels: Sequence[str],
    order: Sequence[str],
    summarise: Callable[[list[dict]], list[dict]],
    paired: Callable[[list[dict]], list[dict]],
) -> list[dict]:
    """Per row (in `order`) over the benchmarks: for seg, CAM and pair mIoU, the paired seg mIoU difference to
    released (`vs_released`) and minutes, the value on each benchmark, their mean and the worst benchmark.
    `complete` is False while some benchmark lacks the row; minutes also get their total."""
    per_bench = {b: (summarise(runs), paired(runs)) for b, runs in by_benchmark(records, labels).items()}
    out = []
    for row in order:
        present = [b for b, (rows, _) in per_bench.items() if any(e["row"] == row for e in rows)]
        if not present:
            continue
        entry: dict = {"row": row, "benchmarks": present, "complete": len(present) == len(labels)}
        for key in MEASURES:
            values = {}
            for b, (rows, diffs) in per_bench.items():
                source, field = (diffs, "mean") if key == "vs_released" else (rows, key)
                found = [e[field] for e in source if e["row"] == row and e[field] is not None]
                if found:
                    values[b] = found[0]
            worst = min(values, key=values.__getitem__) if values else None
            entry[key] = {
                "per_benchmark": values,
                "mean": statistics.mean(values.values()) if values else None,
                "worst": values[worst] if worst else None,
                "worst_benchmark": worst,
            }
        entry["minutes"]["total"] = sum(entry["minutes"]["per_benchmark"].values())
        out.append(entry)
    return out


def fully_supervised(row: str) -> bool:
    """Rows trained on the ground-truth masks (the upper bounds), not on image labels."""
    return row == "full" or row.startswith("full+")


def judged_best(summary: list[dict]) -> str | None:
    """The weakly supervised row with the best worst-benchmark seg mIoU, among rows run on every benchmark."""
    scored = [
        e for e in summary if e["complete"] and not fully_supervised(e["row"]) and e["seg_miou"]["worst"] is not None
    ]
    return max(scored, key=lambda e: e["seg_miou"]["worst"])["row"] if scored else None


def _worst(cell: dict, sign: str = "") -> str:
    return "-" if cell["worst"] is None else f"{cell['worst']:{sign}.1f} ({cell['worst_benchmark']})"


def _mean(cell: dict) -> str:
    return "-" if cell["mean"] is None else f"{cell['mean']:.1f}"


def format_summary(summary: list[dict], markdown: bool = False) -> str:
    """One line per row: mean and worst benchmark of seg and CAM mIoU, the worst paired difference to
    released and the minutes over all benchmarks; * marks the row the worst benchmark judges best."""
    best = judged_best(summary)
    head = ["row", "benchmarks", "seg mean", "seg worst", "CAM mean", "CAM worst", "vs released worst", "minutes"]
    lines = []
    for e in summary:
        versus = "-" if e["row"] == "released" else _worst(e["vs_released"], "+")
        lines.append(
            [
                e["row"] + (" *" if e["row"] == best else ""),
                f"{len(e['benchmarks'])}{'' if e['complete'] else ' (!)'}",
                _mean(e["seg_miou"]),
                _worst(e["seg_miou"]),
                _mean(e["cam_miou"]),
                _worst(e["cam_miou"]),
                versus,
                f"{e['minutes']['total']:.1f}",
            ]
        )
    if markdown:
        table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(table + ["| " + " | ".join(cells) + " |" for cells in lines])
    widths = (16, 10, 9, 12, 9, 12, 18, 8)
    text = [
        " ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        for cells in [head, *lines]
    ]
    note = (
        "* best worst-benchmark seg mIoU among the weak rows run on every benchmark; (!) some benchmark lacks the row"
    )
    return "\n".join([*text, note])

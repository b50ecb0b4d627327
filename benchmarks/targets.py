"""The small-object targets, checked on every benchmark from finished runs' result files.

A preset is judged by its worst benchmark. This script reads the weakly trained runs (`benchmarks/ablation.py`
JSON files, the `released` row unless `--row`) and the fully supervised ones (`cosa eval --json` files of
`cosa train --supervision full` runs) and checks, per benchmark:

- fully supervised label-free seg mIoU >= 70 (the network can draw the shapes),
- weak label-free seg mIoU >= 60 and >= 0.85 of the fully supervised one,
- >= 70 % of held-out images roughly right (their own mIoU >= 50), weakly trained.

The weak scores are the bundle's default output (`drop_absent` where the run has class scores); the table also
shows plain bilinear and both post-processings. A benchmark without a run fails every target it lacks.

Usage: python benchmarks/targets.py --weak v1.json v3.json ... --full v1=full_v1_eval.json v3=... \
       [--benchmarks v1 v2 v3 v4] [--row released] [--out targets.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

FULL_MIN = 70.0
WEAK_MIN = 60.0
RATIO_MIN = 0.85
RIGHT_MIN = 70.0
BUNDLE_DEFAULT = "drop_absent"  # export's default post-processing for a model with class scores
BOTH = "edge_aware+drop_absent"
BENCHMARKS = ("v1", "v2", "v3", "v4")


def weak_scores(files: list[Path], row: str = "released") -> dict[str, dict]:
    """Per benchmark, the mean over seeds of one ablation row: plain, bundle-default and both post-processings."""
    runs: dict[str, list[dict]] = {}
    for file in files:
        for run in json.loads(Path(file).read_text())["runs"]:
            if run["row"] == row:
                runs.setdefault(run["benchmark"], []).append(run)
    out = {}
    for bench, mine in runs.items():
        seeds = sorted({r["seed"] for r in mine})
        if len(seeds) != len(mine):
            raise SystemExit(f"{bench}: seed given twice across the --weak files ({[r['seed'] for r in mine]})")
        out[bench] = {
            "seeds": seeds,
            **{
                name: _scores(mine, variant)
                for name, variant in (("plain", None), ("default", BUNDLE_DEFAULT), ("both", BOTH))
            },
            "cam_miou": _mean(mine, "cam_miou"),
            "minutes": _mean(mine, "minutes"),
        }
        if out[bench]["default"]["seg_miou"] is None:  # no class scores: the bundle's default is plain bilinear
            out[bench]["default"] = dict(out[bench]["plain"])
    return out


def _mean(runs: list[dict], key: str, variant: str | None = None) -> float | None:
    """Mean of one score over runs (of a post-processing variant); None when any run lacks it."""
    values = [((r.get("postprocess") or {}).get(variant) or {}).get(key) if variant else r.get(key) for r in runs]
    return statistics.mean(values) if values and None not in values else None


def _scores(runs: list[dict], variant: str | None) -> dict:
    return {"seg_miou": _mean(runs, "seg_miou", variant), "images_right": _mean(runs, "images_right", variant)}


def full_scores(pairs: list[str]) -> dict[str, dict]:
    """`BENCH=FILE` pairs of `cosa eval --json` files -> {bench: {"seg_miou", "images_right"}}."""
    out = {}
    for pair in pairs:
        bench, sep, file = pair.partition("=")
        if not sep or not file:
            raise SystemExit(f"--full takes BENCH=FILE (e.g. v3=full_eval.json), got {pair!r}")
        scores = json.loads(Path(file).read_text())
        out[bench] = {"seg_miou": scores["seg_miou"], "images_right": scores.get("images_right")}
    return out


def check(weak: dict[str, dict], full: dict[str, dict], benchmarks: tuple[str, ...]) -> dict:
    """Every target on every benchmark (None where a run is missing), and the verdict on the worst one."""
    per_bench = {}
    for bench in benchmarks:
        w, f = weak.get(bench), full.get(bench)
        seg = w["default"]["seg_miou"] if w else None
        right = w["default"]["images_right"] if w else None
        ratio = seg / f["seg_miou"] if seg is not None and f else None
        per_bench[bench] = {
            "weak": w,
            "full": f,
            "ratio": ratio,
            "checks": {
                "full >= 70": None if f is None else f["seg_miou"] >= FULL_MIN,
                "weak >= 60": None if seg is None else seg >= WEAK_MIN,
                "weak / full >= 0.85": None if ratio is None else ratio >= RATIO_MIN,
                "images right >= 70 %": None if right is None else right >= RIGHT_MIN,
            },
        }
    targets = next(iter(per_bench.values()))["checks"].keys() if per_bench else []
    verdict = {t: all(b["checks"][t] is True for b in per_bench.values()) for t in targets}
    return {"benchmarks": per_bench, "met_on_every_benchmark": verdict}


def _pair(scores: dict | None) -> str:
    if not scores or scores.get("seg_miou") is None:
        return "–"
    right = scores.get("images_right")
    return f"{scores['seg_miou']:.2f}" + ("" if right is None else f" / {right:.1f} %")


def table(result: dict) -> str:
    """Markdown: one line per benchmark, then which targets hold on every one."""
    lines = [
        "| benchmark | seeds | weak (bundle default) | weak, plain | weak, both post-processings | fully supervised "
        "| weak / full | targets met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for bench, b in result["benchmarks"].items():
        w = b["weak"] or {}
        met = [name for name, ok in b["checks"].items() if ok]
        missing = [name for name, ok in b["checks"].items() if ok is None]
        verdict = ", ".join(met) or "none"
        if missing:
            verdict += f" (not run: {', '.join(missing)})"
        ratio = "–" if b["ratio"] is None else f"{b['ratio']:.2f}"
        seeds = ", ".join(str(s) for s in w.get("seeds", [])) or "–"
        lines.append(
            f"| {bench} | {seeds} | {_pair(w.get('default'))} | {_pair(w.get('plain'))} | {_pair(w.get('both'))} "
            f"| {_pair(b['full'])} | {ratio} | {verdict} |"
        )
    lines.append("")
    for name, ok in result["met_on_every_benchmark"].items():
        lines.append(f"- {name}: {'met' if ok else 'not met'} on every benchmark")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weak", nargs="+", type=Path, default=[], help="benchmarks/ablation.py JSON files")
    parser.add_argument("--full", nargs="+", default=[], help="BENCH=FILE: `cosa eval --json` of a full run")
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS), help="the benchmarks to judge")
    parser.add_argument("--row", default="released", help="the ablation row that is the preset as shipped")
    parser.add_argument("--out", type=Path, help="write the result as JSON")
    args = parser.parse_args(argv)
    result = check(weak_scores(args.weak, args.row), full_scores(args.full), tuple(args.benchmarks))
    print(table(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()

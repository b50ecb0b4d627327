"""`cosa export CHECKPOINT --out BUNDLE [...]`: the handler and its short report."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TextIO

from cosa_sdk.export.parity import ParityReport
from cosa_sdk.export.pipeline import ExportOptions, ExportResult, export_bundle
from cosa_sdk.export.quantize import Int8Result, describe_attempts


def options_from_args(args: argparse.Namespace) -> ExportOptions:
    """ExportOptions from the parser of `cosa_sdk.cli._add_export`; unknown attributes keep their defaults
    (`drop_absent` and `edge_aware`, from `--[no-]drop-absent` and `--[no-]edge-aware`, are cosa.json's
    postprocess defaults)."""
    fields = ExportOptions.__dataclass_fields__
    return ExportOptions(**{name: getattr(args, name) for name in fields if hasattr(args, name)})


def export_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    result = export_bundle(args.checkpoint, args.out, options_from_args(args))
    print_report(result)
    return 0


def _size(num_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return ""


def report_lines(result: ExportResult) -> list[str]:
    """The table `cosa export` prints: artifacts with sizes, parity, INT8 and TensorRT numbers, and the path."""
    config, source = result.config, result.source
    height, width = source.input_size
    lines = [
        f"cosa export: {source.backbone}, {source.network} network, {len(source.classes)} classes, "
        f"input {height}x{width}{' (dynamic)' if result.onnx.dynamic else ''}"
    ]
    notes = {
        "torch": "seg stream weights (backbone + decoder + CAM head)",
        "onnx": f"opset {result.onnx.opset}, {result.onnx.exporter} exporter"
        + (", dynamic batch/H/W" if result.onnx.dynamic else f", batch x 3 x {height} x {width}"),
    }
    if result.int8 is not None:
        q = result.int8
        notes[q.artifact] = (
            f"{q.mode} {q.settings['format']}, {q.quantized_nodes} int8 ops, {q.weight_bits}-bit weights"
        )
    if "tensorrt" in config["metrics"]:
        notes["tensorrt"] = f"{config['metrics']['tensorrt']['precision']} engine"
    key_width = max(10, *(len(key) for key in config["artifacts"]))
    name_width = max(18, *(len(name) for name in config["artifacts"].values()))
    lines.append(f"  {'artifact':<{key_width}} {'file':<{name_width}} {'size':>9}  notes")
    for key, name in config["artifacts"].items():
        size = _size(result.sizes.get(key, 0))
        lines.append(f"  {key:<{key_width}} {name:<{name_width}} {size:>9}  {notes.get(key, '')}")
    if result.parity is not None:
        p, cases = result.parity.overall, result.parity.cases
        batches = "/".join(str(b) for b in sorted({c["batch"] for c in cases}))
        sizes = ", ".join(dict.fromkeys(f"{c['size'][0]}x{c['size'][1]}" for c in cases))
        lines.append(
            f"  parity fp32: max |logit diff| {p.max_abs_diff:.2e} (logit scale {p.logit_scale:.3g}), "
            f"argmax agreement {100 * p.agreement:.3f} % over {result.parity.images} images "
            f"({result.parity.source}), batch {batches}, size {sizes}"
        )
        lines += class_score_lines(result.parity)
    else:
        lines.append("  parity fp32: skipped (--skip-parity)")
    post = config.get("postprocess") or {}
    if post:
        lines.append(
            f"  postprocess: drop_absent {'on' if post.get('drop_absent') else 'off'} by default "
            f"(class threshold {post.get('class_threshold')}), edge_aware {'on' if post.get('edge_aware') else 'off'}"
        )
    if result.int8 is not None:
        lines += int8_lines(result.int8, config["metrics"]["int8"])
    if "tensorrt" in config["metrics"]:
        t = config["metrics"]["tensorrt"]
        lines.append(
            f"  tensorrt: {t['precision']}, argmax agreement {100 * t['argmax_agreement']:.2f} % vs fp32, "
            f"profile {t['profile']['min']} .. {t['profile']['max']}"
        )
    lines += [f"  note: {note}" for note in result.onnx.notes]
    lines.append(f"bundle: {result.path}")
    return lines


def class_score_lines(parity: ParityReport) -> list[str]:
    """The class-score parity row, for graphs that have the output."""
    scores = parity.class_scores
    if scores is None:
        return []
    return [
        f"  parity class scores: max |diff| {scores.max_abs_diff:.2e} (scale {scores.logit_scale:.3g}), "
        f"present/absent agreement {100 * scores.agreement:.2f} %"
    ]


def int8_lines(q: Int8Result, metrics: dict) -> list[str]:
    """The INT8 rows: gate agreement (validation images, photographs), weights and which CPUs run them, speed."""
    sets = metrics.get("evaluation", {})
    parts = [
        f"{label} {100 * value:.2f} % over {sets.get(label, {}).get('images', '?')} images"
        for label, value in q.agreements.items()
    ]
    weights = (
        "8-bit weights: run on VNNI CPUs only (elsewhere the SDK falls back to fp32)"
        if q.needs_vnni
        else "7-bit weights: safe on every CPU"
    )
    timing = q.timing
    here = timing.get("cpu", "")
    if timing.get("exact_kernels"):
        here += ", timed on exact u8 x u8 kernels: not the speed of a VNNI CPU"
    classes = "" if q.class_agreement is None else f", class presence {100 * q.class_agreement:.2f} %"
    return [
        f"  int8: argmax agreement {100 * q.agreement:.2f} % vs fp32 (worse of {', '.join(parts)}; "
        f"limit {100 * metrics.get('min_agreement', 0):g} %{classes}), {weights}",
        f"  int8: speed-up {q.speedup:.2f}x ({q.fp32_ms:.1f} -> {q.int8_ms:.1f} ms, batch 1, "
        f"{timing.get('threads')} thread, this CPU: {here}); tried {describe_attempts(metrics.get('attempts', []))}",
    ]


def print_report(result: ExportResult, stream: TextIO | None = None) -> None:
    print("\n".join(report_lines(result)), file=stream or sys.stdout)

"""The runtimes section: logits parity against torch fp32 eager and median latency (numpy in and out) of torch
fp32, torch bf16 autocast, ONNX Runtime CUDA and ONNX Runtime CPU, each through the SDK's backend.

The row helpers (`measure`, `guarded`, `print_rows`, ...) serve the tensorrt section too.
"""

from __future__ import annotations

import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import Context, Skipped, num


def parity_pixels(ctx: Context) -> np.ndarray:
    """The normalised evaluation batch at the bundle's input size, from the training dataset."""
    if ctx.pixels is None:
        from cosa_sdk.export.images import prepare_batch, sample_images

        source = ctx.source
        images = sample_images(source.data_spec, ctx.plan.parity_images)
        ctx.pixels = prepare_batch(images.images, source.input_size, source.mean, source.std)
    return ctx.pixels


def open_runner(bundle: Path, name: str, providers: list[str] | None = None) -> tuple[Any, Any]:
    """(Segmenter, Backend) the way `cosa_sdk.load(bundle, backend=name)` builds them, keeping the backend."""
    from cosa_sdk import Segmenter
    from cosa_sdk.backends import open_backend
    from cosa_sdk.bundle import read_bundle

    data = read_bundle(bundle)
    backend, _ = open_backend(data, name, providers=providers)
    return Segmenter(data, backend), backend


def batched(fn: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([fn(pixels[i : i + batch]) for i in range(0, len(pixels), batch)])


def median_ms(fn: Callable[[], Any], runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    from cosa_sdk.export.parity import Comparison

    comparison = Comparison()
    comparison.add(reference, candidate)
    return {
        "max_abs_diff": comparison.max_abs_diff,
        "relative_diff": comparison.relative_diff,
        "argmax_agreement": comparison.agreement,
    }


def measure(
    ctx: Context, run: Callable[[np.ndarray], np.ndarray], device: str, reference: np.ndarray | None = None
) -> dict[str, Any]:
    """Parity of `run` against `reference` (torch fp32) and its median latency at batch 1 and the plan's batch."""
    plan, pixels = ctx.plan, parity_pixels(ctx)
    runs = plan.runs if device == "cuda" or plan.smoke else plan.cpu_runs
    logits = batched(run, pixels, 1)
    row: dict[str, Any] = compare(reference, logits) if reference is not None else {"logits": logits}
    size = plan.latency_batch
    row["ms_b1"] = median_ms(lambda: run(pixels[:1]), runs)
    row[f"ms_per_image_b{size}"] = median_ms(lambda: run(pixels[:size]), max(3, runs // 4)) / size
    row["runs"] = runs
    return row


def sdk_latency(segmenter: Any, runs: int) -> dict[str, Any]:
    """`Segmenter.benchmark` on a 500x375 image: median call latency and the per-stage split (ms)."""
    bench = segmenter.benchmark(runs=runs)
    return {"segment_ms": 1000 * bench["latency_s"], "split_ms": {k: 1000 * v for k, v in bench["per_image_s"].items()}}


def torch_rows(ctx: Context, rows: dict[str, Any]) -> np.ndarray:
    """torch fp32 (the reference) and torch bf16 autocast rows, through the SDK's torch backend."""
    segmenter, backend = open_runner(ctx.bundle, "torch")

    def bf16(batch: np.ndarray) -> np.ndarray:
        with torch.autocast(device_type=backend.device, dtype=torch.bfloat16):
            return backend.run(batch)

    row = guarded(lambda: measure(ctx, backend.run, backend.device), rows, "torch fp32", backend.device)
    if row["status"] != "ok":
        raise RuntimeError(f"the torch fp32 reference failed: {row['error']}")
    reference = row.pop("logits")
    row.update(max_abs_diff=0.0, relative_diff=0.0, argmax_agreement=1.0, sdk=sdk_latency(segmenter, 5))
    guarded(lambda: measure(ctx, bf16, backend.device, reference), rows, "torch bf16 autocast", backend.device)
    return reference


def ort_rows(ctx: Context, rows: dict[str, Any], reference: np.ndarray) -> None:
    import onnxruntime

    from cosa_sdk.backends.onnxruntime import CPU, CUDA

    for name, providers in (("onnxruntime cuda", [CUDA, CPU]), ("onnxruntime cpu", [CPU])):
        device = "cuda" if CUDA in providers else "cpu"
        if CUDA in providers and CUDA not in onnxruntime.get_available_providers():
            rows[name] = {
                "status": "skipped",
                "device": device,
                "reason": "CUDAExecutionProvider not available (onnxruntime-gpu is not installed; providers: "
                f"{', '.join(onnxruntime.get_available_providers())})",
            }
            continue
        guarded(lambda providers=providers: ort_row(ctx, providers, reference), rows, name, device)


def ort_row(ctx: Context, providers: list[str], reference: np.ndarray) -> dict[str, Any]:
    from cosa_sdk.backends.onnxruntime import CUDA

    segmenter, backend = open_runner(ctx.bundle, "onnxruntime", providers)
    if CUDA in providers and backend.device != "cuda":
        raise RuntimeError(f"the CUDA provider did not initialise; the session got {backend.providers}")
    row = measure(ctx, backend.run, backend.device, reference)
    row.update(providers=backend.providers, sdk=sdk_latency(segmenter, 5))
    return row


def guarded(fn: Callable[[], dict[str, Any]], rows: dict[str, Any], name: str, device: str) -> dict[str, Any]:
    """One runtime row; its failure is stored in the row and the other rows still run."""
    try:
        row = {"status": "ok", "device": device, **fn()}
    except Exception as err:
        row = {"status": "failed", "device": device, "error": f"{type(err).__name__}: {err}"}
        print(f"{name}: FAILED {row['error']}\n{traceback.format_exc()}", flush=True)
    rows[name] = row
    return row


def runtimes_section(ctx: Context) -> dict[str, Any]:
    if ctx.bundle is None:
        raise Skipped("no bundle: the export section failed")
    rows: dict[str, Any] = {}
    reference = torch_rows(ctx, rows)
    ctx.reference = reference
    ort_rows(ctx, rows, reference)
    print_rows(rows, ctx)
    return {
        "input_size": list(ctx.source.input_size),
        "images": len(parity_pixels(ctx)),
        "rows": rows,
        "failed_rows": failed_rows(rows),
    }


def failed_rows(rows: dict[str, Any]) -> list[str]:
    return [name for name, row in rows.items() if row["status"] == "failed"]


def print_rows(rows: dict[str, Any], ctx: Context) -> None:
    height, width = ctx.source.input_size
    size = ctx.plan.latency_batch
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where the SDK's torch backend runs the reference
    print(
        f"{len(parity_pixels(ctx))} dataset images at {height}x{width}; parity against torch fp32 eager on {device}; "
        "latency: median, numpy in and out (host<->device copies included)"
    )
    head = (
        f"{'runtime':<22} {'device':<6} {'max|diff|':>10} {'rel diff':>9} {'argmax %':>9} {'b1 ms':>8} "
        f"{f'b{size} ms/img':>10} {'SDK ms':>8}"
    )
    print(head + "\n" + "-" * len(head))
    for name, row in rows.items():
        if row["status"] != "ok":
            print(f"{name:<22} {row['device']:<6} {row['status']}: {row.get('reason') or row.get('error')}")
            continue
        sdk = row.get("sdk", {}).get("segment_ms")
        print(
            f"{name:<22} {row['device']:<6} {row['max_abs_diff']:>10.2e} {row['relative_diff']:>9.2e} "
            f"{100 * row['argmax_agreement']:>9.3f} {row['ms_b1']:>8.2f} {row[f'ms_per_image_b{size}']:>10.2f} "
            f"{num(sdk, '.1f'):>8}"
        )
    print("SDK ms: Segmenter.benchmark(), one 500x375 image: decode, preprocess, model, postprocess")

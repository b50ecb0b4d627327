"""The tensorrt section: `cosa export --tensorrt [--fp16]` of the same checkpoint, then the engine through the SDK's
TensorRT backend, measured like the runtimes rows; skipped when `import tensorrt` fails or the budget is short.
"""

from __future__ import annotations

import time
from typing import Any

from .common import Context, Skipped
from .runtimes import batched, failed_rows, guarded, measure, open_runner, parity_pixels, print_rows, sdk_latency


def tensorrt_section(ctx: Context) -> dict[str, Any]:
    try:
        import tensorrt  # noqa: F401
    except ImportError as err:
        raise Skipped(f"tensorrt not importable ({err})") from None
    from cosa_sdk.backends.tensorrt import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        raise Skipped(f"tensorrt cannot run here: {reason}")
    if ctx.bundle is None:
        raise Skipped("no bundle: the export section failed")
    rows: dict[str, Any] = {}
    builds: dict[str, Any] = {}
    for precision in ctx.plan.trt_precisions:
        if ctx.budget.left() < ctx.plan.trt_min_s:
            rows[f"tensorrt {precision}"] = {
                "status": "skipped",
                "device": "cuda",
                "reason": f"{ctx.budget.left():.0f} s of the budget left (< {ctx.plan.trt_min_s:.0f} s)",
            }
            continue
        row = guarded(lambda p=precision: tensorrt_row(ctx, p, builds), rows, f"tensorrt {precision}", "cuda")
        row.setdefault("build", builds.get(precision))
    print_rows(rows, ctx)
    return {"rows": rows, "failed_rows": failed_rows(rows)}


def tensorrt_row(ctx: Context, precision: str, builds: dict[str, Any]) -> dict[str, Any]:
    """`cosa export --tensorrt [--fp16]` of the same checkpoint, then the engine through the SDK backend."""
    from cosa_sdk.export.pipeline import ExportOptions, export_bundle

    options = ExportOptions(tensorrt=True, fp16=precision == "fp16", skip_parity=True)
    start = time.perf_counter()
    result = export_bundle(ctx.source.checkpoint, ctx.work / f"bundle-trt-{precision}", options)
    builds[precision] = {"export_s": time.perf_counter() - start, **result.config["metrics"]["tensorrt"]}
    if ctx.reference is None:
        _, torch_backend = open_runner(ctx.bundle, "torch")
        ctx.reference = batched(torch_backend.run, parity_pixels(ctx), 1)
    reference = ctx.reference
    segmenter, backend = open_runner(result.path, "tensorrt")
    row = measure(ctx, backend.run, "cuda", reference)
    row.update(sdk=sdk_latency(segmenter, 5), build=builds[precision])
    return row

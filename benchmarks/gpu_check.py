"""One prepared GPU check: train the `voc` preset for a few hundred steps, export it, compare runtimes.

Sections (each recorded on its own: a failure is printed and stored, the next section still runs):
1. train: the `voc` preset (ViT-B/16, crop 448, batch 4, bf16 AMP) through `cosa_sdk.training.engine.trainer.Trainer`
   on the synthetic dataset at VOC's image size, random backbone weights, a short loss warm-up so the
   timed steps hold both warm-up and co-training; it/s per phase, peak GPU memory, projected 32k schedule.
2. export: `cosa_sdk.export.export_bundle` on that run's checkpoint (the `cosa export` path, its CPU parity check).
3. runtimes: logits parity against torch fp32 eager (on the GPU when there is one) and median latency (numpy
   in and out) for torch fp32, torch bf16 autocast, ONNX Runtime CUDA and ONNX Runtime CPU, through the SDK backends.
4. tensorrt: `cosa export --tensorrt --fp16` and the SDK TensorRT backend, when `import tensorrt` works.

A global budget (--budget-s) stops training early (fewer steps) so that the later sections still fit.
`--cpu-smoke` runs the same code on the CPU at tiny sizes in well under a minute (tests/benchmarks/test_gpu_check.py).
This file is the entry point (arguments, plan, budget, the sections in turn, the JSON, the exit code); the
sections live in benchmarks/gpu_check_parts/, one module each.

    python benchmarks/gpu_check.py --out $OUT/gpu_check.json    # the GPU check: about 5 minutes on one H200
    python benchmarks/gpu_check.py --cpu-smoke                   # tiny CPU run of every section, ~10 s
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the GPU machine has no internet; weights are random anyway
sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_check_parts, also when not run as a script

import torch
from gpu_check_parts.common import REPO, Budget, Context, PartialFailure, Plan, Skipped
from gpu_check_parts.environment import environment
from gpu_check_parts.export import export_section
from gpu_check_parts.runtimes import runtimes_section
from gpu_check_parts.train import train_section
from gpu_check_parts.trt import tensorrt_section

RESULTS = REPO / "benchmarks" / "results" / "gpu_check.json"


def make_plan(args: argparse.Namespace) -> Plan:
    """The GPU plan (voc at crop 448) or the smoke plan (a 3-block ViT at crop 64 on the CPU)."""
    if args.cpu_smoke:
        iters = args.iters or 8
        warmup = args.warmup if args.warmup is not None else 3
        tiny = ['backbone_kwargs={"embed_dim": 96, "depth": 3, "num_heads": 3}', "crop_size=64", "batch_size=2"]
        return Plan(
            smoke=True,
            device="cpu",
            iters=iters,
            warmup=warmup,
            data_spec=args.data or "synthetic:n_train=8,n_val=2,size=64",
            overrides=[*tiny, *_run_overrides(iters, warmup, "cpu", workers=0, log_every=1, eval_limit=2)],
            parity_images=4,
            latency_batch=2,
            runs=3,
            cpu_runs=3,
            reserve_s=0.0,
            trt_min_s=0.0,
            trt_precisions=args.trt_precisions,
            skip_steps=1,
        )
    iters = args.iters or 300
    warmup = args.warmup if args.warmup is not None else iters // 3
    workers = min(8, os.cpu_count() or 1)
    return Plan(
        smoke=False,
        device="cuda",
        iters=iters,
        warmup=warmup,
        data_spec=args.data or "synthetic:n_train=256,n_val=16,size=512",
        overrides=_run_overrides(iters, warmup, "cuda", workers=workers, log_every=10, eval_limit=8),
        parity_images=8,
        latency_batch=8,
        runs=20,
        cpu_runs=5,
        reserve_s=args.reserve_s,
        trt_min_s=120.0,  # an fp16 ViT-B engine build plus a second ONNX export
        trt_precisions=args.trt_precisions,
        skip_steps=5,
    )


def _run_overrides(iters: int, warmup: int, device: str, *, workers: int, log_every: int, eval_limit: int) -> list[str]:
    """What changes from the preset: length, random weights, bf16 AMP, no mid-run checkpoints, samples or evals."""
    never = 10**9
    return [
        f"iters={iters}",
        f"loss_warmup_iters={warmup}",
        f"lr_warmup_iters={max(1, iters // 10)}",
        "backbone_weights=none",
        "amp=true",
        f"device={device}",
        f"num_workers={workers}",
        f"log_every={log_every}",
        f"eval_every={never}",  # the engine still evaluates once at the last step
        f"eval_limit={eval_limit}",
        f"checkpoint_every={never}",
        f"sample_every={never}",
        "progress=false",
    ]


# ------------------------------------------------------------------------------------------- sections
def run_section(results: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]], out: Path) -> None:
    """Run one section, store its numbers or its error, and write the JSON so far."""
    print(f"\n== {name}", flush=True)
    start = time.perf_counter()
    try:
        entry = {"status": "ok", **fn()}
        if entry.get("failed_rows"):
            entry.update(status="failed", error=f"runtime rows failed: {', '.join(entry['failed_rows'])}")
            print(f"FAILED: {entry['error']}", flush=True)
    except Skipped as why:
        entry = {"status": "skipped", "reason": str(why)}
        print(f"skipped: {why}")
    except PartialFailure as err:
        entry = {"status": "failed", "error": str(err), "traceback": traceback.format_exc(), **err.numbers}
        print(f"FAILED: {err}\nmeasured before the failure: {json.dumps(err.numbers)}\n{entry['traceback']}")
    except Exception as err:
        entry = {"status": "failed", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        print(f"FAILED: {entry['error']}\n{entry['traceback']}", flush=True)
    entry["seconds"] = time.perf_counter() - start
    results["sections"][name] = entry
    write_results(results, out)


def write_results(results: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------- main
def release_memory() -> None:
    """Give the trainer's GPU memory back before inference is measured."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (the test suite's run)")
    parser.add_argument("--iters", type=int, default=None, help="training iterations (default 300; smoke 8)")
    parser.add_argument("--warmup", type=int, default=None, help="loss warm-up iterations (default iters // 3)")
    parser.add_argument("--data", default=None, help="dataset spec (default synthetic at 512 px; smoke 64 px)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--budget-s", type=float, default=450.0, help="whole-script time budget (default 450)")
    parser.add_argument(
        "--reserve-s", type=float, default=200.0, help="budget kept for export and runtimes after training (GPU)"
    )
    parser.add_argument("--trt-precisions", nargs="+", default=["fp16"], choices=["fp32", "fp16"])
    parser.add_argument("--work", type=Path, default=None, help="keep the run and bundles here (default: temp)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    plan = make_plan(args)
    results: dict[str, Any] = {
        "environment": environment(plan),
        "plan": dataclasses.asdict(plan),
        "budget_s": args.budget_s,
        "sections": {},
    }
    print(json.dumps(results["environment"]))
    with tempfile.TemporaryDirectory(prefix="cosa-gpu-check-") as tmp:
        work = args.work or Path(tmp)
        ctx = Context(plan=plan, budget=budget, work=work)
        run_section(results, "train", lambda: train_section(ctx, args.overrides), args.out)
        release_memory()
        run_section(results, "export", lambda: export_section(ctx), args.out)
        run_section(results, "runtimes", lambda: runtimes_section(ctx), args.out)
        run_section(results, "tensorrt", lambda: tensorrt_section(ctx), args.out)
    failed = [name for name, s in results["sections"].items() if s["status"] == "failed"]
    results.update(failed=failed, elapsed_s=budget.elapsed())
    write_results(results, args.out)
    status = f"FAILED sections: {', '.join(failed)}" if failed else "all sections ok or skipped"
    print(f"\n{status}; {budget.elapsed():.0f} s of the {args.budget_s:.0f} s budget; wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

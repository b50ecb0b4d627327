"""Load test of `cosa serve` over loopback: requests/s, p50 and p99 at 1, 8 and 32 clients, batching on and off;
and bursts: 50 and 200 uploads sent at the same moment to a server with default settings.

The model is a realistic one for serving: the project's deployable segmentation stream (a timm ViT
backbone + LargeFOV decoder, logits upsampled in the graph) exported to ONNX into a bundle, with
random weights (speed does not depend on them). `--bundle PATH` load-tests an existing bundle instead.
Each client keeps one HTTP connection and posts VOC-sized JPEGs (500x375) to /segment back to back.
Every point is bounded in time and count; any failed request is reported and makes the exit code 1.

A burst opens one connection per client and sends all uploads at once (a barrier), like a script
posting a folder of images in parallel; it reports the share served, p50/p99 of the served requests,
the refusals (503 with Retry-After: the admission queue was full) and errors (anything else). The
target is 100 % served at 50 concurrent uploads on 2 cores. Burst results go to serve_burst.json.

    python benchmarks/serve_load.py                    # about 5 minutes on 2 CPU cores
    python benchmarks/serve_load.py --quick            # about 2 minutes: shorter points, smaller input
    python benchmarks/serve_load.py --scenario burst   # the bursts only, about 1.5 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from cosa_sdk.constants import IMAGENET_MEAN, IMAGENET_STD
from cosa_sdk.serving.launcher import LocalServer, start_server

sys.path.insert(0, str(Path(__file__).resolve().parent))  # serve_clients, also when not run as a script
from serve_clients import Burst, LoadPoint, merge, photo_bodies

RESULTS = Path(__file__).resolve().parent / "results" / "serve_load.json"
BURST_RESULTS = Path(__file__).resolve().parent / "results" / "serve_burst.json"
BURST_TARGET = {"clients": 50, "served_share": 1.0}
CLASSES = ["background", *(f"class_{i}" for i in range(1, 21))]  # VOC-sized head: 21 outputs


def export_vit_bundle(out: Path, *, backbone: str, size: int, decoder_channels: int) -> Path:
    """A bundle (cosa.json + model.onnx, dynamic batch) of a randomly initialised segmentation stream."""
    import torch

    from cosa_sdk.training.model.network import SegmentationStream

    config = {
        "backbone": backbone,
        "num_classes": len(CLASSES) - 1,
        "decoder_channels": decoder_channels,
        "backbone_kwargs": {"img_size": size},
    }
    torch.manual_seed(0)
    model = SegmentationStream.from_config(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    batch_axis = {0: "batch"}
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, size, size),),
        str(out / "model.onnx"),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": batch_axis, "logits": batch_axis},
        opset_version=17,
        dynamo=False,
    )
    cosa_json = {
        "format": "cosa-bundle",
        "version": 1,
        "name": f"bench-{backbone}-{size}",
        "classes": CLASSES,
        "input_size": [size, size],
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "backbone": backbone,
        "patch_size": 16,
        "artifacts": {"onnx": "model.onnx"},
        "onnx": {"input": "image", "output": "logits", "dynamic": False, "opset": 17},
        "model_config": config,
        "created_by": "benchmarks/serve_load.py (random weights, for timing only)",
    }
    (out / "cosa.json").write_text(json.dumps(cosa_json, indent=2))
    return out


def run_bursts(args: argparse.Namespace, bundle: Path, bodies: list, workdir: Path) -> dict[str, Any]:
    """One server (default latency budget and queue unless --max-latency-ms); each burst `--burst-rounds` times."""
    server = start_server(
        bundle, max_batch_size=args.max_batch_size, max_latency_ms=args.max_latency_ms,
        env={"COSA_THREADS": str(args.threads)}, log_path=workdir / "burst.log",
    )  # fmt: skip
    bursts = []
    try:
        warm_up(server, bodies, args.warmup)
        for clients in args.burst:
            for _ in range(args.burst_rounds):
                point = Burst(server.url, bodies, clients).run().summary()
                bursts.append(point)
                print(
                    f"burst {clients:4}: {point['served']:4} served ({100 * point['served_share']:5.1f} %), "
                    f"{point['refused_503_retry_after']} refused (503 + Retry-After {point['retry_after_s']}), "
                    f"{point['errors']} errors; p50 {point['p50_ms']} ms  p99 {point['p99_ms']} ms  "
                    f"in {point['seconds']} s",
                    flush=True,
                )
                time.sleep(1.0)  # let the queue drain and the connections close
        queue = json.loads(urllib.request.urlopen(f"{server.url}/info", timeout=30).read())["queue"]
    finally:
        server.stop()
    at_target = [b for b in bursts if b["clients"] == BURST_TARGET["clients"]]
    return {
        "benchmark": "serve_burst",
        "settings": {
            "server": f"cosa serve --max-batch-size {args.max_batch_size} --max-latency-ms "
            f"{args.max_latency_ms or 'default'}, COSA_THREADS={args.threads or 'default'}",
            "queue": "sized from the measured throughput (COSA_MAX_QUEUE unset)",
            "warmup_requests": args.warmup,
            "image": "500x375 JPEG, POST /segment (palette PNG back), one new connection per client",
        },
        "queue_after": queue,
        "bursts": bursts,
        "target": {
            **BURST_TARGET,
            "met": bool(at_target) and all(b["served_share"] >= BURST_TARGET["served_share"] for b in at_target),
        },
        "errors": sum(b["errors"] for b in bursts),
    }


def burst_table(bursts: list[dict]) -> str:
    lines = [
        "| concurrent | served | refused (503 + Retry-After) | errors | p50 ms | p99 ms | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for b in bursts:
        lines.append(
            f"| {b['clients']} | {b['served']} ({100 * b['served_share']:.0f} %) | {b['refused_503_retry_after']} "
            f"| {b['errors']} | {b['p50_ms']:.0f} | {b['p99_ms']:.0f} | {b['seconds']:.1f} |"
        )
    return "\n".join(lines)


def warm_up(server: LocalServer, bodies: list[tuple[bytes, str]], requests: int) -> None:
    """Requests that are not measured: graph and thread-pool start-up, BentoML's batching optimiser training."""
    LoadPoint(server.url, bodies, clients=4, seconds=120, max_requests=requests).run()


def measure(args: argparse.Namespace, servers: dict[str, LocalServer], bodies: list) -> list[dict[str, Any]]:
    """For each client count, alternate short slices between the two servers so load drift hits both alike."""
    points = []
    for clients in args.clients:
        slices: dict[str, list[LoadPoint]] = {label: [] for label in servers}
        for round_index in range(args.rounds):
            order = list(servers) if round_index % 2 == 0 else list(reversed(servers))
            for label in order:
                part = LoadPoint(servers[label].url, bodies, clients, args.seconds, args.max_requests)
                part.run()
                slices[label].append(part)
        for label, parts in slices.items():
            point = merge(parts, label, clients)
            points.append(point)
            print(
                f"batching {label:3} clients {clients:3}: {point['requests_per_s']:7.2f} req/s  "
                f"p50 {point['p50_ms']:8.1f} ms  p99 {point['p99_ms']:8.1f} ms  "
                f"({point['requests']} ok, {point['errors']} errors; slices {point['requests_per_s_by_slice']})",
                flush=True,
            )
    return points


def table(points: list[dict]) -> str:
    lines = ["| batching | clients | req/s | p50 ms | p99 ms | requests | errors |", "|---|---|---|---|---|---|---|"]
    for p in points:
        lines.append(
            f"| {p['batching']} | {p['clients']} | {p['requests_per_s']:.2f} | {p['p50_ms']:.0f} | {p['p99_ms']:.0f} "
            f"| {p['requests']} | {p['errors']} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short points and a smaller input (a fast pass)")
    parser.add_argument("--bundle", type=Path, default=None, help="load-test this bundle instead of the exported ViT")
    parser.add_argument("--backbone", default="vit_tiny_patch16_224")
    parser.add_argument("--size", type=int, default=None, help="input size of the exported model (default 224)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=None, help="seconds per measured slice (default 8)")
    parser.add_argument("--rounds", type=int, default=None, help="slices per point and mode, interleaved (default 3)")
    parser.add_argument("--max-requests", type=int, default=2000, help="cap on requests per point")
    parser.add_argument("--warmup", type=int, default=None, help="unmeasured requests per server (default 40)")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument(
        "--max-latency-ms", type=int, default=None,
        help="latency budget of the servers (default: the service's default, as users get it)",
    )  # fmt: skip
    parser.add_argument("--scenario", choices=["all", "load", "burst"], default="all")
    parser.add_argument("--burst", type=int, nargs="+", default=[50, 200], help="concurrent uploads per burst")
    parser.add_argument("--burst-rounds", type=int, default=2, help="bursts of each size, one after the other")
    parser.add_argument("--burst-out", type=Path, default=BURST_RESULTS)
    parser.add_argument(
        "--threads", type=int, default=0,
        help="COSA_THREADS: ONNX Runtime intra-op threads per model worker (0: ONNX Runtime's default, all cores)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.size = args.size or (160 if args.quick else 224)
    args.seconds = args.seconds or (4.0 if args.quick else 8.0)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (24 if args.quick else 40)
    return args


def load_result(args: argparse.Namespace, model: dict, points: list[dict], logs: dict[str, str]) -> dict[str, Any]:
    by_key = {(p["batching"], p["clients"]): p for p in points}
    speedups = {
        str(c): round(by_key[("on", c)]["requests_per_s"] / by_key[("off", c)]["requests_per_s"], 2)
        for c in args.clients
        if by_key[("off", c)]["requests_per_s"] > 0
    }
    errors = sum(p["errors"] for p in points)
    result = {
        "benchmark": "serve_load",
        "model": model,
        "settings": {
            "max_batch_size": args.max_batch_size,
            "max_latency_ms": args.max_latency_ms or "service default",
            "onnxruntime_threads": args.threads or "default",
            "seconds_per_slice": args.seconds,
            "slices_per_point": args.rounds,
            "warmup_requests": args.warmup,
            "image": "500x375 JPEG, POST /segment (palette PNG back)",
            "quick": args.quick,
        },
        "machine": machine(),
        "points": points,
        "batching_speedup": speedups,
        "target": {"clients": 8, "min_speedup": 1.5, "met": speedups.get("8", 0) >= 1.5},
        "errors": errors,
    }
    if errors:
        result["server_logs_tail"] = {name: text for name, text in logs.items() if name != "burst.log"}
    return result


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="cosa-serve-load-"))
    points: list[dict] = []
    burst: dict[str, Any] | None = None
    try:
        if args.bundle is None:
            bundle = export_vit_bundle(workdir / "bundle", backbone=args.backbone, size=args.size, decoder_channels=256)
            model = {"backbone": args.backbone, "input_size": args.size, "decoder_channels": 256, "classes": 21}
        else:
            bundle, model = args.bundle, {"bundle": str(args.bundle)}
        bodies = photo_bodies(16)
        if args.scenario in ("all", "load"):
            servers: dict[str, LocalServer] = {}
            try:
                for label, batch in (("on", args.max_batch_size), ("off", 1)):
                    servers[label] = start_server(
                        bundle, max_batch_size=batch, max_latency_ms=args.max_latency_ms,
                        env={"COSA_THREADS": str(args.threads)}, log_path=workdir / f"{label}.log",
                    )  # fmt: skip
                    warm_up(servers[label], bodies, args.warmup)
                points = measure(args, servers, bodies)
            finally:
                for server in servers.values():
                    server.stop()
        if args.scenario in ("all", "burst"):
            burst = run_bursts(args, bundle, bodies, workdir)
    finally:
        logs = {p.name: p.read_text(errors="replace")[-4000:] for p in workdir.glob("*.log")}
        shutil.rmtree(workdir, ignore_errors=True)
    errors = 0
    if points:
        result = load_result(args, model, points, logs)
        errors += result["errors"]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print()
        print(table(points))
        print(f"\nbatching speed-up (req/s on / off): {result['batching_speedup']}; errors: {result['errors']}; "
              f"written to {args.out}")  # fmt: skip
    if burst is not None:
        burst = {**burst, "model": model, "machine": machine(), "quick": args.quick}
        if burst["errors"]:
            burst["server_log_tail"] = logs.get("burst.log", "")
        errors += burst["errors"]
        args.burst_out.parent.mkdir(parents=True, exist_ok=True)
        args.burst_out.write_text(json.dumps(burst, indent=2) + "\n")
        print()
        print(burst_table(burst["bursts"]))
        target = burst["target"]
        print(
            f"\ntarget {100 * target['served_share']:.0f} % served at {target['clients']} concurrent: "
            f"{'met' if target['met'] else 'NOT met'}; errors: {burst['errors']}; written to {args.burst_out}"
        )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

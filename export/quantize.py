"""INT8 ONNX for CPUs with ONNX Runtime quantisation, and the measurements that justify shipping it.

Choices, measured on the export machine (see benchmarks/inference.py):
- Only MatMul/Gemm and the dense Convs are quantised. LayerNormalization, Softmax, GELU (Erf) and the
  resizes stay fp32: they are cheap and sensitive. The first Conv (patch embedding / CNN stem, fed the
  raw normalised image), depthwise Convs and the last Conv (the logits) also stay fp32: on the trained
  CNN test model quantising the stem alone cost 4 points of argmax agreement.
- static (default): QDQ format, uint8 activations calibrated on real images, int8 weights per output
  channel. dynamic: int8 weights for MatMul/Gemm only, activations quantised at run time; ConvInteger
  is slow in ONNX Runtime, so convolutions stay fp32 there.
- reduce_range (7-bit weights) is tried first: on AVX2 CPUs without VNNI the u8 x s8 kernels add pairs
  of products into int16 and saturate with full 8-bit weights; 7-bit weights cannot overflow, so that
  file is safe on any x86 CPU. When 7-bit weights lose too much agreement (the trained CNN test model
  drops from 98.9 to 97.5 %), full 8-bit weights are used and the metrics say the file wants a CPU with
  VNNI (AVX512-VNNI / AVX-VNNI); agreement is always measured on this machine before the file ships.
- When static quantisation cannot reach the agreement limit, dynamic is tried before giving up: on an early
  DINOv2 ViT-S/14 checkpoint of the `tiny` preset (logits nearly tied on many pixels) static reached
  97.1 % and dynamic 98.4 %, at the same speed (2.5x and 2.3x fp32 ONNX Runtime).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cosa_sdk.errors import CosaConfigError, CosaModelError
from cosa_sdk.export.parity import Comparison, ort_session

INT8_MIN_AGREEMENT = 0.98
PORTABLE_MARGIN = 0.005  # 7-bit weights must clear the limit by this much: 16 images give a noisy estimate
STATIC_OP_TYPES = ("MatMul", "Gemm", "Conv")
DYNAMIC_OP_TYPES = ("MatMul", "Gemm")


@dataclass
class Int8Result:
    """The INT8 file, how it was made, and how it compares with fp32 (agreement, speed) on this machine."""

    path: Path
    mode: str
    settings: dict[str, Any]
    quantized_nodes: int
    agreement: float = 0.0
    max_abs_diff: float = 0.0
    fp32_ms: float = 0.0
    int8_ms: float = 0.0
    timing: dict[str, Any] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms if self.int8_ms else 0.0

    def metrics(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            **self.settings,
            "quantized_nodes": self.quantized_nodes,
            "argmax_agreement": self.agreement,
            "max_abs_diff": self.max_abs_diff,
            "fp32_ms": self.fp32_ms,
            "int8_ms": self.int8_ms,
            "speedup": self.speedup,
            "timing": self.timing,
        }


def cpu_flags() -> set[str]:
    """The CPU feature flags of this machine (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def has_vnni(flags: set[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def quantization_plan(model: Any, mode: str) -> tuple[list[str], list[str]]:
    """(op types to quantise, node names to keep fp32) for a graph; see the module docstring for why."""
    if mode not in ("static", "dynamic"):
        raise CosaConfigError(f"unknown INT8 calibration {mode!r}: use static or dynamic")
    op_types = list(STATIC_OP_TYPES if mode == "static" else DYNAMIC_OP_TYPES)
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    excluded = []
    if convs:
        excluded += [convs[0].name, convs[-1].name]
        excluded += [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    if not any(node.op_type in op_types and node.name not in excluded for node in model.graph.node):
        fix = "use --calibration static" if mode == "dynamic" else "skip --int8 for this model"
        raise CosaModelError(
            f"the graph has no {'/'.join(op_types)} nodes that INT8 {mode} quantisation would speed up: {fix}"
        )
    return op_types, sorted(set(excluded))


def calibration_reader(images: np.ndarray, input_name: str) -> Any:
    """A CalibrationDataReader over a fixed array of normalised images, one image per step."""
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.index = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.index >= len(images):
                return None
            self.index += 1
            return {input_name: images[self.index - 1 : self.index]}

        def rewind(self) -> None:
            self.index = 0

    return Batches()


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    *,
    mode: str = "static",
    calibration: np.ndarray | None = None,
    per_channel: bool = True,
    reduce_range: bool = True,
    symmetric: bool = False,
    prepared: Path | None = None,
) -> Int8Result:
    """Write an INT8 copy of `fp32_path`. `calibration` (N x 3 x H x W, normalised) is required for static.

    `symmetric=True` makes signed activations with zero points of 0 (what TensorRT's QDQ parser needs).
    `prepared`: the output of `prepare_for_quantization`, when several variants come from one graph.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=out_path.parent) as scratch:
        prepared = prepared or prepare_for_quantization(fp32_path, Path(scratch) / "prepared.onnx")
        model = onnx.load_model(str(prepared))
        op_types, excluded = quantization_plan(model, mode)
        settings: dict[str, Any] = {
            "op_types": op_types,
            "fp32_nodes": excluded,
            "per_channel": per_channel,
            "reduce_range": reduce_range,
            "weights": "int8",
        }
        if mode == "dynamic":
            quantize_dynamic(
                prepared,
                out_path,
                op_types_to_quantize=op_types,
                nodes_to_exclude=excluded,
                per_channel=per_channel,
                reduce_range=reduce_range,
                weight_type=QuantType.QInt8,
            )
            settings |= {"format": "QOperator", "activations": "uint8 (dynamic)"}
        else:
            if calibration is None or not len(calibration):
                raise CosaConfigError("static INT8 quantisation needs calibration images: pass --data SPEC")
            reader = calibration_reader(calibration, model.graph.input[0].name)
            activation = QuantType.QInt8 if symmetric else QuantType.QUInt8
            quantize_static(
                prepared,
                out_path,
                reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                nodes_to_exclude=excluded,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=activation,
                weight_type=QuantType.QInt8,
                # Only inputs of quantised ops are quantised: outputs stay fp32, so Softmax and LayerNorm never
                # see 8-bit attention scores or residuals.
                extra_options={
                    "ActivationSymmetric": symmetric,
                    "WeightSymmetric": True,
                    "OpTypesToExcludeOutputQuantization": op_types,
                },
            )
            settings |= {
                "format": "QDQ",
                "activations": "int8 symmetric" if symmetric else "uint8",
                "calibration_images": len(calibration),
            }
    count = quantized_ops(onnx.load_model(str(out_path), load_external_data=False))
    return Int8Result(path=out_path, mode=mode, settings=settings, quantized_nodes=count)


def prepare_for_quantization(fp32_path: str | Path, out_path: Path) -> Path:
    """ONNX Runtime's recommended pre-pass: symbolic shape inference and basic graph optimisation."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=False)
    return out_path


def quantized_ops(model: Any) -> int:
    """Operators that run in int8: integer/QLinear kernels, or (QDQ) MatMul/Gemm/Conv fed by DequantizeLinear."""
    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return sum(
        1
        for node in model.graph.node
        if node.op_type in ("MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv")
        or (node.op_type in STATIC_OP_TYPES and any(name in dequantized for name in node.input))
    )


def latencies_ms(session: Any, batch: np.ndarray, *, repeats: int) -> list[float]:
    name = session.get_inputs()[0].name
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {name: batch})
        times.append(1000 * (time.perf_counter() - start))
    return times


def measure_int8(
    result: Int8Result,
    fp32_path: str | Path,
    images: np.ndarray,
    *,
    repeats: int = 10,
    threads: int = 1,
) -> Int8Result:
    """Argmax agreement of INT8 vs fp32 on `images`; with `repeats`, batch-1 latencies too (interleaved)."""
    fp32 = ort_session(fp32_path, threads=threads)
    int8 = ort_session(result.path, threads=threads)
    name = fp32.get_inputs()[0].name
    comparison = Comparison()
    for start in range(len(images)):
        batch = images[start : start + 1]
        comparison.add(fp32.run(None, {name: batch})[0], int8.run(None, {name: batch})[0])
    result.agreement = comparison.agreement
    result.max_abs_diff = comparison.max_abs_diff
    if repeats <= 0:
        return result
    one = images[:1]
    fp32_times: list[float] = []
    int8_times: list[float] = []
    for _ in range(max(1, repeats // 2)):  # interleaved so both see the same machine load
        fp32_times += latencies_ms(fp32, one, repeats=2)
        int8_times += latencies_ms(int8, one, repeats=2)
    result.fp32_ms = float(np.median(fp32_times))
    result.int8_ms = float(np.median(int8_times))
    result.timing = {"batch": 1, "threads": threads, "runs": len(fp32_times), "vnni": has_vnni()}
    return result


def int8_candidates(fp32_path: str | Path, mode: str) -> list[tuple[str, bool]]:
    """(mode, reduce_range) pairs in the order they are tried: portable 7-bit weights first; after static,
    dynamic (measured more tolerant of the activation outliers of DINOv2 ViTs) when the graph has MatMuls."""
    import onnx

    modes = [mode]
    if mode == "static":
        model = onnx.load_model(str(fp32_path), load_external_data=False)
        if any(node.op_type in DYNAMIC_OP_TYPES for node in model.graph.node):
            modes.append("dynamic")
    return [(m, reduce_range) for m in modes for reduce_range in (True, False)]


def quantize_checked(
    fp32_path: str | Path,
    out_path: str | Path,
    evaluation: np.ndarray,
    *,
    mode: str = "static",
    calibration: np.ndarray | None = None,
    min_agreement: float = INT8_MIN_AGREEMENT,
) -> Int8Result:
    """The first INT8 candidate (`int8_candidates` order) whose masks agree with fp32, timed; CosaModelError if none.

    A 7-bit candidate is taken at once only if it clears the limit by PORTABLE_MARGIN; otherwise it is kept
    as the answer in case no 8-bit candidate does better than the limit.
    """
    out_path = Path(out_path)
    tried: list[dict[str, Any]] = []
    chosen: Int8Result | None = None
    fallback: Int8Result | None = None
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=out_path.parent) as scratch:
        prepared = prepare_for_quantization(fp32_path, Path(scratch) / "prepared.onnx")
        for index, (candidate, reduce_range) in enumerate(int8_candidates(fp32_path, mode)):
            path = out_path.with_name(f".{out_path.stem}.candidate{index}.onnx")
            result = quantize_int8(
                fp32_path, path, mode=candidate, calibration=calibration, reduce_range=reduce_range, prepared=prepared
            )
            measure_int8(result, fp32_path, evaluation, repeats=0)
            tried.append({"mode": candidate, "reduce_range": reduce_range, "argmax_agreement": result.agreement})
            if result.agreement >= min_agreement + (PORTABLE_MARGIN if reduce_range else 0.0):
                chosen = result
                break
            if fallback is None and result.agreement >= min_agreement:
                fallback = result
    chosen = chosen or fallback
    for leftover in out_path.parent.glob(f".{out_path.stem}.candidate*.onnx"):
        if chosen is None or leftover != chosen.path:
            leftover.unlink()
    if chosen is None:
        attempts = ", ".join(
            f"{t['mode']} {'7' if t['reduce_range'] else '8'}-bit {100 * t['argmax_agreement']:.2f} %" for t in tried
        )
        raise CosaModelError(
            f"no INT8 version agrees with fp32 on {100 * min_agreement:g} % of pixels (tried {attempts}); nothing "
            "was written. This happens when the fp32 model is undecided on many pixels (an early checkpoint): ship "
            "fp32 only (drop --int8), export a later checkpoint, or calibrate on the training data (--data SPEC)"
        )
    chosen.path = Path(chosen.path).replace(out_path)
    chosen.settings |= {
        "attempts": tried,
        "needs_vnni": not chosen.settings["reduce_range"],
        "evaluation_images": len(evaluation),
    }
    return measure_int8(chosen, fp32_path, evaluation)

"""TensorRT 10 engines from the exported ONNX graph.

The decisions (profile shapes, builder flags, which layers stay fp32, whether the parser can read the
graph, file names) are plain functions over the ONNX graph, tested without TensorRT. `build_engine`
only carries them out with the TensorRT 10 Python API: OnnxParser -> builder config (workspace,
precision flags, precision constraints on pinned layers) -> one optimisation profile ->
`build_serialized_network` -> the IHostMemory bytes on disk. Engines are specific to the GPU model
and TensorRT version they are built with; the ONNX graph stays the portable artifact.
Every output of the graph becomes an output tensor of the engine (`logits`, and `class_scores` for
bundles with image-level class scores); the class-score head is pinned to fp32 in reduced precision.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cosa_sdk.errors import CosaConfigError, CosaModelError

PRECISIONS = ("fp32", "fp16", "int8")

# ONNX operators the TensorRT 10.x ONNX parser converts natively, as listed by onnx-tensorrt in
# https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md
# ORT-only forms are absent on purpose: ConvInteger, MatMulInteger, DynamicQuantizeLinear, QLinearConv
# and QLinearMatMul (the dynamic/QOperator INT8 graphs) cannot be parsed; TensorRT INT8 takes QDQ graphs.
_TRT10_OPS_TEXT = """
Abs Acos Acosh Add AffineGrid And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor
Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If
ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax
Loop LpNormalization LpPool LRN LSTM MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg
NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal
RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid
Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
"""
TRT10_ONNX_OPS = frozenset(_TRT10_OPS_TEXT.split())

# The ops of a LayerNorm written out (opset < 17 or hand-made): mean, centre, square, variance, eps, root, divide.
_LAYERNORM_CHAIN = ("ReduceMean", "Sub", "Pow", "ReduceMean", "Add", "Sqrt", "Div")
SCORES_OUTPUT = "class_scores"
_GLOBAL_POOLS = ("GlobalMaxPool", "ReduceMax", "MaxPool")


@dataclass(frozen=True)
class ProfileShapes:
    """One optimisation profile for the image input: min/opt/max (N, 3, H, W)."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"input": self.name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def engine_filename(precision: str) -> str:
    """model.<precision>.plan: the precision is visible to whoever copies the file around."""
    if precision not in PRECISIONS:
        raise CosaConfigError(f"unknown TensorRT precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return f"model.{precision}.plan"


def engine_precision(*, fp16: bool, int8: bool) -> str:
    return "int8" if int8 else "fp16" if fp16 else "fp32"


def builder_flags(precision: str) -> list[str]:
    """Names of `trt.BuilderFlag` members to set. Precision constraints are obeyed so pinned layers stay fp32."""
    engine_filename(precision)
    if precision == "fp32":
        return []
    flags = ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    return ["INT8", *flags] if precision == "int8" else flags


def _dims(model: Any) -> tuple[str, list[int | str]]:
    value = model.graph.input[0]
    return value.name, [d.dim_value or d.dim_param or "?" for d in value.type.tensor_type.shape.dim]


def profile_shapes(
    model: Any,
    *,
    input_size: tuple[int, int],
    stride: int,
    batch: tuple[int, int, int] = (1, 4, 16),
    size_scale: tuple[float, float] = (0.5, 2.0),
) -> ProfileShapes:
    """Profile from the graph's input: free dims get a range, fixed dims stay as declared.

    Free batch: `batch` (min, opt, max). Free height/width: from `size_scale` times the bundle's input
    size, snapped to multiples of the stride, optimised for the input size itself.
    """
    name, dims = _dims(model)
    if len(dims) != 4:
        raise CosaModelError(f"the ONNX input {name!r} has shape {dims}; expected N x 3 x H x W")
    low, opt, high = batch
    if not 1 <= low <= opt <= high:
        raise CosaConfigError(f"TensorRT batch profile must satisfy 1 <= min <= opt <= max, got {batch}")

    def snap(value: float) -> int:
        return max(stride, round(value / stride) * stride)

    shapes: list[tuple[int, int, int]] = []
    for axis, dim in enumerate(dims):
        if isinstance(dim, int):
            shapes.append((dim, dim, dim))
        elif axis == 0:
            shapes.append((low, opt, high))
        elif axis in (2, 3):
            size = input_size[axis - 2]
            shapes.append((snap(size * size_scale[0]), size, snap(size * size_scale[1])))
        else:
            raise CosaModelError(f"the ONNX input {name!r} has a free channel dimension; expected 3 channels")
    return ProfileShapes(
        name=name, min=tuple(s[0] for s in shapes), opt=tuple(s[1] for s in shapes), max=tuple(s[2] for s in shapes)
    )


def unsupported_ops(model: Any) -> dict[str, str]:
    """Operators of the graph that TensorRT 10's ONNX parser cannot take, with the reason ({} = all fine)."""
    from onnx import numpy_helper

    problems: dict[str, str] = {}
    constants = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            problems[f"{node.domain}.{node.op_type}"] = f"custom-domain operator ({node.domain}) of ONNX Runtime"
        elif node.op_type not in TRT10_ONNX_OPS:
            problems[node.op_type] = "not supported by the TensorRT 10 ONNX parser"
        elif node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zero = constants.get(node.input[2])
            if zero is not None and numpy_helper.to_array(zero).any():
                problems[node.op_type] = "zero point must be 0 (symmetric int8 quantisation) for TensorRT"
    return problems


def check_tensorrt_graph(model: Any) -> None:
    problems = unsupported_ops(model)
    if problems:
        listed = "; ".join(f"{op}: {why}" for op, why in sorted(problems.items()))
        raise CosaModelError(
            f"TensorRT cannot build this graph ({listed}). Build engines from the fp32 model.onnx (or a "
            "symmetric QDQ INT8 graph), not from ONNX Runtime's INT8 file"
        )


def graph_outputs(model: Any) -> list[str]:
    """The graph's output names, in order: the engine's output tensors must be the same."""
    return [value.name for value in model.graph.output]


def class_score_nodes(model: Any) -> list[str]:
    """The nodes of the image-level class-score head: from the `class_scores` output back through input 0
    to its global max pool (pool, 1x1 Conv, Flatten); [] for a graph without the output."""
    producers = {out: node for node in model.graph.node for out in node.output}
    node = producers.get(SCORES_OUTPUT) if SCORES_OUTPUT in graph_outputs(model) else None
    names = []
    while node is not None:
        names.append(node.name)
        if node.op_type in _GLOBAL_POOLS or not node.input:
            break
        node = producers.get(node.input[0])
    return names if node is not None else []


def fp32_pinned_nodes(model: Any, *, pin_softmax: bool = False) -> list[str]:
    """ONNX nodes to keep fp32 in a reduced-precision engine: every LayerNorm, written as one node or as a chain,
    and the class-score head (its logits decide present/absent at 0, where fp16 rounding would flip them).

    In fp16 the variance of a LayerNorm overflows (squares of activations in the hundreds) and the
    mean/variance reductions lose precision; the other layers are fine in fp16. Softmax is optional.
    """
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    pinned = [n.name for n in model.graph.node if n.op_type == "LayerNormalization"]
    if pin_softmax:
        pinned += [n.name for n in model.graph.node if n.op_type == "Softmax"]
    for start in (n for n in model.graph.node if n.op_type == "ReduceMean"):
        pinned += _layernorm_chain(start, consumers)
    pinned += class_score_nodes(model)
    return list(dict.fromkeys(pinned))


def _layernorm_chain(start: Any, consumers: dict[str, list[Any]]) -> list[str]:
    """Names of a written-out LayerNorm beginning at `start` (its mean), or [] if the pattern does not follow."""
    chain = [start]
    frontier = [start]
    for op_type in _LAYERNORM_CHAIN[1:]:
        following = [
            c for node in frontier for out in node.output for c in consumers.get(out, []) if c.op_type == op_type
        ]
        if not following:
            return []
        chain += following
        frontier = following
    return [node.name for node in chain]


def layer_is_pinned(
    layer_name: str, output_names: Iterable[str], pinned_nodes: set[str], pinned_tensors: set[str]
) -> bool:
    """Whether a TensorRT layer comes from a pinned ONNX node: by its name or by the tensors it produces."""
    return layer_name in pinned_nodes or any(name in pinned_tensors for name in output_names)


def pinned_tensors(model: Any, pinned: Sequence[str]) -> set[str]:
    names = set(pinned)
    return {out for node in model.graph.node if node.name in names for out in node.output}


def require_tensorrt() -> Any:
    """The `tensorrt` module on a machine with an NVIDIA GPU, or a CosaModelError that says what is missing."""
    try:
        import tensorrt as trt
    except ImportError as err:
        raise CosaModelError(
            'building a TensorRT engine needs the tensorrt package and an NVIDIA GPU: pip install "cosa-sdk[trt]" '
            "on the machine with the NVIDIA GPU that will run the engine (engines are specific to the GPU), or "
            "export without --tensorrt (model.onnx runs on any GPU with onnxruntime-gpu)"
        ) from err
    from cosa_sdk.backends.tensorrt import gpu_count

    if gpu_count() == 0:
        raise CosaModelError(
            "building a TensorRT engine needs an NVIDIA GPU, and none is visible here (check the driver and "
            'CUDA_VISIBLE_DEVICES); with pip install "cosa-sdk[trt]" done, build on the GPU machine that will run '
            "it, or export without --tensorrt"
        )
    return trt


def build_engine(
    onnx_path: str | Path,
    out_path: str | Path,
    *,
    precision: str,
    profile: ProfileShapes,
    pinned: Sequence[str] = (),
    workspace_gib: float = 4.0,
) -> dict[str, Any]:
    """Parse, configure and build a serialized engine at `out_path`; returns what cosa.json records."""
    import onnx

    trt = require_tensorrt()
    model = onnx.load_model(str(onnx_path), load_external_data=False)
    check_tensorrt_graph(model)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CosaModelError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    if outputs != graph_outputs(model):
        raise CosaModelError(
            f"TensorRT's network from {onnx_path} has outputs {outputs}, the graph {graph_outputs(model)}; "
            "re-export the ONNX graph with `cosa export`"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    for flag in builder_flags(precision):
        config.set_flag(getattr(trt.BuilderFlag, flag))
    kept = _pin_layers(trt, network, model, pinned) if precision != "fp32" else 0
    shapes = builder.create_optimization_profile()
    shapes.set_shape(profile.name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(shapes)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CosaModelError(f"TensorRT could not build a {precision} engine from {onnx_path}; see its log above")
    Path(out_path).write_bytes(bytes(serialized))
    return {
        "precision": precision,
        "outputs": outputs,
        "profile": profile.as_dict(),
        "fp32_layers": kept,
        "tensorrt_version": trt.__version__,
        "workspace_gib": workspace_gib,
    }


def _pin_layers(trt: Any, network: Any, model: Any, pinned: Sequence[str]) -> int:
    """Constrain LayerNorm layers (and the pinned nodes' layers) to fp32 compute and fp32 outputs."""
    nodes = set(pinned)
    tensors = pinned_tensors(model, pinned)
    count = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        outputs = [layer.get_output(i).name for i in range(layer.num_outputs)]
        if layer.type == trt.LayerType.NORMALIZATION or layer_is_pinned(layer.name, outputs, nodes, tensors):
            layer.precision = trt.float32
            for i in range(layer.num_outputs):
                layer.set_output_type(i, trt.float32)
            count += 1
    return count

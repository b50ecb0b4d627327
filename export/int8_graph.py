"""Which nodes of an ONNX graph INT8 quantises, and what a quantised graph holds (its weight width, its
int8 operators). Graph inspection only: `export/quantize.py` runs the quantiser and measures the result.

- Only MatMul/Gemm and the dense Convs are quantised. LayerNormalization, Softmax, GELU (Erf) and the
  resizes stay fp32: they are cheap and sensitive. The first Conv (patch embedding / CNN stem, fed the
  raw normalised image), depthwise Convs and the Convs that make the outputs (the decoder's logits, the
  CAM head's image-level class scores, `output_convs`) also stay fp32: on the trained CNN test model
  quantising the stem alone cost 4 points of argmax agreement, and the class head is a 1x1 Conv on a
  1x1 map, nothing to speed up.
- For ONNX Runtime on CPUs (uint8 activations, static) two more groups stay fp32, found by op pattern:
  MatMuls with no constant input (attention's q @ k^T and softmax @ v: per-tensor uint8 probabilities
  and keys are the largest single error, yet ~6 % of a ViT's MACs), and the weighted MatMul/Gemm of
  the first transformer block (between the first and the third LayerNormalization: the layer whose
  ranges follow the image most closely, so calibration images unlike the user's photos hurt it most).
  On the `tiny` benchmark model (DINOv2 ViT-S/14, 168 px, 7-bit weights) these took agreement on the
  validation images / the photographs / 54 crops of them / 42 crops of 7 other scikit-image photos from
  99.70 / 98.58 / 98.41 / 99.43 % to 99.71 / 99.22 / 98.74 / 99.66 % (logit RMS error on the
  photographs 0.147 -> 0.059) for 11 % more INT8 time (15.8 -> 17.6 ms: 4.8x -> 4.3x torch eager, one
  thread, AMD EPYC with VNNI). Measured and not taken: per-tensor weights, symmetric activations, QOperator
  and Percentile calibration (all worse), Entropy (no change), SmoothQuant-style LayerNorm -> MatMul
  scaling and GPTQ weight rounding (better on some image sets, worse on others), every fc2 fp32 too
  (better, but INT8 36 % slower).
  CNNs have neither pattern, so their plan is unchanged; TensorRT's symmetric graph keeps the base plan.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cosa_sdk.errors import CosaConfigError, CosaModelError

SAFE_WEIGHT_MAX = 64  # |w| <= 64: u8 x s8 pairs stay within int16 (2 x 255 x 64 = 32640 <= 32767)
STATIC_OP_TYPES = ("MatMul", "Gemm", "Conv")
DYNAMIC_OP_TYPES = ("MatMul", "Gemm")


def max_abs_weight(model: Any) -> int:
    """The largest |value| of the graph's int8 initializers (quantised weights; their zero points are 0)."""
    from onnx import TensorProto, numpy_helper

    largest = 0
    for tensor in model.graph.initializer:
        if tensor.data_type == TensorProto.INT8:
            values = numpy_helper.to_array(tensor)
            if values.size:
                largest = max(largest, int(np.abs(values.astype(np.int16)).max()))
    return largest


def weight_bits(model: Any) -> int:
    """7 when every int8 weight is within SAFE_WEIGHT_MAX (safe on CPUs without VNNI), else 8."""
    return 7 if max_abs_weight(model) <= SAFE_WEIGHT_MAX else 8


def constant_names(model: Any) -> set[str]:
    """Tensors known before run time: initializers and Constant outputs."""
    names = {tensor.name for tensor in model.graph.initializer}
    return names | {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}


def activation_matmuls(model: Any) -> list[str]:
    """MatMul/Gemm nodes without a constant operand (attention's q @ k^T and softmax @ v in a transformer)."""
    constants = constant_names(model)
    return [
        node.name
        for node in model.graph.node
        if node.name and node.op_type in DYNAMIC_OP_TYPES and not any(name in constants for name in node.input[:2])
    ]


def first_block_matmuls(model: Any) -> list[str]:
    """The weighted MatMul/Gemm nodes of a transformer's first block: after the first LayerNormalization and
    before the third (pre-norm blocks have two each). Empty without LayerNormalization (CNNs), or when no
    weighted MatMul/Gemm would be left to quantise after the block."""
    constants = constant_names(model)
    norms = 0
    first, later = [], []
    for node in model.graph.node:
        if node.op_type == "LayerNormalization":
            norms += 1
        elif node.name and node.op_type in DYNAMIC_OP_TYPES and any(name in constants for name in node.input[:2]):
            if 1 <= norms < 3:
                first.append(node.name)
            elif norms >= 3:
                later.append(node.name)
    return first if later else []


PASS_THROUGH_OPS = ("Resize", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Cast", "Transpose")


def output_convs(model: Any) -> list[str]:
    """The Convs that make the graph's outputs: followed back from each output through the data input
    (input 0) of resizes and reshapes (`PASS_THROUGH_OPS`) and through both terms of an Add (the detail
    refiner's upsampled logits + correction) to the nodes that compute it."""
    producers = {out: node for node in model.graph.node for out in node.output}
    found: list[str] = []
    pending = [producers.get(output.name) for output in model.graph.output]
    while pending:
        node = pending.pop(0)
        if node is None:
            continue
        if node.op_type in PASS_THROUGH_OPS and node.input:
            pending.append(producers.get(node.input[0]))
        elif node.op_type == "Add":
            pending.extend(producers.get(name) for name in node.input)
        elif node.op_type == "Conv" and node.name and node.name not in found:
            found.append(node.name)
    return found


def image_convs(model: Any) -> list[str]:
    """The Convs fed the graph's input (the normalised image): the patch embedding or CNN stem, and the detail
    refiner's stem."""
    inputs = {i.name for i in model.graph.input}
    return [n.name for n in model.graph.node if n.op_type == "Conv" and n.input and n.input[0] in inputs]


def quantization_plan(model: Any, mode: str, *, ort_cpu: bool = True) -> tuple[list[str], list[str]]:
    """(op types to quantise, node names to keep fp32) for a graph; see the module docstring for why.

    `ort_cpu`: the plan for ONNX Runtime's uint8 kernels; static mode then also keeps attention's activation x
    activation MatMuls and the first transformer block fp32. False (TensorRT's symmetric QDQ graph): the base plan.
    """
    if mode not in ("static", "dynamic"):
        raise CosaConfigError(f"unknown INT8 calibration {mode!r}: use static or dynamic")
    op_types = list(STATIC_OP_TYPES if mode == "static" else DYNAMIC_OP_TYPES)
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    excluded = []
    if convs:
        excluded += [convs[0].name, convs[-1].name, *output_convs(model), *image_convs(model)]
        excluded += [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    if ort_cpu and mode == "static":
        excluded += activation_matmuls(model) + first_block_matmuls(model)
    if not any(node.op_type in op_types and node.name not in excluded for node in model.graph.node):
        fix = "use --calibration static" if mode == "dynamic" else "skip --int8 for this model"
        raise CosaModelError(
            f"the graph has no {'/'.join(op_types)} nodes that INT8 {mode} quantisation would speed up: {fix}"
        )
    return op_types, sorted(set(excluded))


def quantized_ops(model: Any) -> int:
    """Operators that run in int8: integer/QLinear kernels, or (QDQ) MatMul/Gemm/Conv fed by DequantizeLinear."""
    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return sum(
        1
        for node in model.graph.node
        if node.op_type in ("MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv")
        or (node.op_type in STATIC_OP_TYPES and any(name in dequantized for name in node.input))
    )

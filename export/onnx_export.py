"""The seg stream as an ONNX graph: image (N, 3, H, W) normalised -> logits (N, K, H, W), class_scores (N, C).

`class_scores` are the CAM head's image-level logits from the same backbone pass (sigmoid > 0.5: present);
`class_scores=False` writes the one-output graph of bundles exported before them.

The batch dimension is always free. A fixed-size graph has a fixed height and width and folds the
ViT's resized position embedding into a constant (the safe path for TensorRT); `dynamic=True` keeps
the bicubic resize in the graph and leaves height and width free too.
The exporter follows the opset: torch.export (`dynamo=True`, torch's default since 2.9, cleaner graphs)
writes opset 18 and up natively; opset 17 goes through the TorchScript exporter, because converting the
dynamo graph down to 17 fails for some operators (Pad). Opset 17 is the floor: from 17 on
LayerNormalization stays one node instead of a ReduceMean/Pow/Sqrt chain.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cosa_sdk.errors import CosaConfigError, CosaModelError

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
SCORES_NAME = "class_scores"
METADATA_KEY = "cosa.json"
MIN_OPSET = 17
DYNAMO_MIN_OPSET = 18
MAX_DYNAMIC_BATCH = 1024
DYNAMIC_DIM_NAMES = ("batch", "height", "width")


@dataclass
class OnnxExport:
    """What `export_onnx` wrote: file, exporter, opset, shape policy and the operator census."""

    path: Path
    exporter: str
    opset: int
    dynamic: bool
    input_size: tuple[int, int]
    op_types: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    class_scores: bool = True

    def info(self) -> dict[str, Any]:
        """The cosa.json "onnx" entry."""
        return {
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
            "outputs": output_names(class_scores=self.class_scores),
            "dynamic": self.dynamic,
            "opset": self.opset,
            "exporter": self.exporter,
        }


def output_names(*, class_scores: bool) -> list[str]:
    """The graph's outputs in order: logits, then the image-level class scores when exported."""
    return [OUTPUT_NAME, SCORES_NAME] if class_scores else [OUTPUT_NAME]


def pick_exporter(opset: int, exporter: str = "auto") -> str:
    """ "dynamo" or "torchscript" for a requested opset; CosaConfigError for opsets below 17."""
    if opset < MIN_OPSET:
        raise CosaConfigError(
            f"--opset {opset} is too old: opset {MIN_OPSET}+ keeps LayerNormalization a single node; use --opset 18"
        )
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise CosaConfigError(f"unknown ONNX exporter {exporter!r}: use auto, dynamo or torchscript")
    if exporter == "auto":
        return "dynamo" if opset >= DYNAMO_MIN_OPSET else "torchscript"
    if exporter == "dynamo" and opset < DYNAMO_MIN_OPSET:
        raise CosaConfigError(f"the dynamo exporter writes opset {DYNAMO_MIN_OPSET}+; use --opset 18")
    return exporter


@contextlib.contextmanager
def _fixed_pos_embed(stream: Any, size: tuple[int, int] | None):
    """Fold the ViT position embedding for one size (None: resize in the graph); restored afterwards."""
    backbone = stream.backbone
    if not hasattr(backbone, "freeze_pos_embed_for"):
        yield
        return
    before = backbone.fixed_pos_embed
    backbone.freeze_pos_embed_for(size)
    try:
        yield
    finally:
        backbone.fixed_pos_embed = before


def _quiet():
    """Silence the exporters' progress prints and tracer warnings; errors still raise."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def _export_dynamo(stream: Any, example: Any, *, opset: int, dynamic: bool, outputs: list[str]) -> Any:
    import torch
    from torch.export import Dim

    dims = {0: Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)}
    if dynamic:
        dims |= {2: Dim.DYNAMIC, 3: Dim.DYNAMIC}
    with _quiet():
        program = torch.onnx.export(
            stream,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_shapes={"images": dims},
            optimize=True,
            verbose=False,
        )
    return program.model_proto


def _fold_constants(model: Any) -> Any:
    """Constant folding, common subexpressions and dead nodes (onnxscript's passes, without its slow rewriter)."""
    import onnx_ir as ir
    import onnxscript.optimizer

    graph = ir.serde.deserialize_model(model)
    onnxscript.optimizer.fold_constants(graph)
    common = ir.passes.common
    ir.passes.Sequential(
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.CommonSubexpressionEliminationPass(),
        common.RemoveUnusedNodesPass(),
        common.DeduplicateInitializersPass(),
    )(graph)
    return ir.serde.serialize_model(graph)


def _export_torchscript(stream: Any, example: Any, *, opset: int, dynamic: bool, outputs: list[str]) -> Any:
    import onnx
    import torch

    names = dict(zip((0, 2, 3), DYNAMIC_DIM_NAMES)) if dynamic else {0: "batch"}
    axes = {INPUT_NAME: names, OUTPUT_NAME: names, SCORES_NAME: {0: "batch"}}
    axes = {name: axes[name] for name in [INPUT_NAME, *outputs]}
    buffer = io.BytesIO()
    with _quiet():
        torch.onnx.export(
            stream,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    # The TorchScript graph carries Identity/Constant clutter (1027 nodes for a ViT-Ti, 624 after folding).
    return _fold_constants(onnx.load_from_string(buffer.getvalue()))


def expected_shapes(
    *, input_size: tuple[int, int], num_outputs: int, dynamic: bool, class_scores: bool
) -> dict[str, list[int | str]]:
    """The bundle's I/O contract: tensor name -> shape, symbolic dims by name (docs/contracts.md, "ONNX graph")."""
    spatial: list[int | str] = ["height", "width"] if dynamic else list(input_size)
    shapes: dict[str, list[int | str]] = {
        INPUT_NAME: ["batch", 3, *spatial],
        OUTPUT_NAME: ["batch", num_outputs, *spatial],
    }
    if class_scores:
        shapes[SCORES_NAME] = ["batch", num_outputs - 1]
    return shapes


def _name_dims(
    model: Any, *, input_size: tuple[int, int], num_outputs: int, dynamic: bool, class_scores: bool = True
) -> None:
    """Readable symbolic dims (batch, height, width) everywhere, and the exact shapes on the outputs.

    The exporters name free dims after internal symbols ("s54") and sometimes leave output dims symbolic
    that are fixed (the channel count after a Resize); consumers such as TensorRT read these declarations.
    """
    dims = model.graph.input[0].type.tensor_type.shape.dim
    rename = {dims[p].dim_param: n for p, n in zip((0, 2, 3), DYNAMIC_DIM_NAMES) if dims[p].dim_param}
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]
    shapes = expected_shapes(input_size=input_size, num_outputs=num_outputs, dynamic=dynamic, class_scores=class_scores)
    for value in [*model.graph.input, *model.graph.output]:
        for dim, want in zip(value.type.tensor_type.shape.dim, shapes.get(value.name, [])):
            if isinstance(want, str):
                dim.dim_param = want
            else:
                dim.dim_value = want


def check_graph(
    model: Any, *, input_size: tuple[int, int], num_outputs: int, dynamic: bool, class_scores: bool = True
) -> Any:
    """onnx.checker (full) + strict shape inference; the I/O contract of the bundle is asserted."""
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise CosaModelError(f"the exported ONNX graph does not validate: {err}") from err
    inputs = [i.name for i in inferred.graph.input]
    outputs = [o.name for o in inferred.graph.output]
    wanted = output_names(class_scores=class_scores)
    if inputs != [INPUT_NAME] or outputs != wanted:
        expected = f"{INPUT_NAME} -> {', '.join(wanted)}"
        raise CosaModelError(f"the exported graph has inputs {inputs} and outputs {outputs}, expected {expected}")
    shapes = expected_shapes(input_size=input_size, num_outputs=num_outputs, dynamic=dynamic, class_scores=class_scores)
    for value in [*inferred.graph.input, *inferred.graph.output]:
        got = [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]
        if got != shapes[value.name]:
            raise CosaModelError(f"the exported {value.name!r} has shape {got}, expected {shapes[value.name]}")
    return inferred


def export_onnx(
    stream: Any,
    path: str | Path,
    *,
    input_size: tuple[int, int],
    num_outputs: int,
    dynamic: bool = False,
    opset: int = DYNAMO_MIN_OPSET,
    exporter: str = "auto",
    class_scores: bool = True,
) -> OnnxExport:
    """Export the seg stream (eval mode, CPU) to `path` and validate the graph; returns what was written.

    class_scores: a second output with the CAM head's image-level logits (`stream` needs its classifier);
    False writes the one-output graph of bundles exported before class scores.
    """
    import onnx
    import torch

    chosen = pick_exporter(opset, exporter)
    path = Path(path)
    example = torch.zeros(2, 3, *input_size)  # a batch of 1 would let torch.export specialise the batch to 1
    notes: list[str] = []
    stream = stream.class_score_view(class_scores).eval()
    outputs = output_names(class_scores=class_scores)
    with _fixed_pos_embed(stream, None if dynamic else input_size), torch.no_grad():
        try:
            model = (_export_dynamo if chosen == "dynamo" else _export_torchscript)(
                stream, example, opset=opset, dynamic=dynamic, outputs=outputs
            )
        except Exception as err:
            if chosen != "dynamo":
                raise CosaModelError(
                    f"ONNX export failed with the TorchScript exporter ({err}); try --opset 18, which uses torch.export"
                ) from err
            logger.warning("the dynamo exporter failed (%s); retrying with the TorchScript exporter", err)
            notes.append(f"dynamo exporter failed ({type(err).__name__}); used torchscript")
            chosen = "torchscript"
            try:
                model = _export_torchscript(stream, example, opset=opset, dynamic=dynamic, outputs=outputs)
            except Exception as second:
                raise CosaModelError(f"ONNX export failed with both exporters: {err}; then: {second}") from second
    graph = {"input_size": input_size, "num_outputs": num_outputs, "dynamic": dynamic, "class_scores": class_scores}
    _name_dims(model, **graph)
    model.producer_name = "cosa-sdk"
    written_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    check_graph(model, **graph)
    onnx.save_model(model, str(path))
    census = Counter(node.op_type for node in model.graph.node)
    return OnnxExport(
        path=path,
        exporter=chosen,
        opset=int(written_opset),
        dynamic=dynamic,
        input_size=input_size,
        op_types=dict(sorted(census.items())),
        notes=notes,
        class_scores=class_scores,
    )


def embed_metadata(path: str | Path, config: dict[str, Any], *, artifact: str | None = None) -> None:
    """Store cosa.json in the model's metadata_props (key "cosa.json"), so a lone .onnx file loads too.

    artifact: the file's key in cosa.json "artifacts" (key "cosa.artifact"): a lone INT8 file then follows
    the SDK's CPU rule for its weights, whatever it is renamed to.
    """
    import onnx

    from cosa_sdk.backends import ARTIFACT_KEY

    model = onnx.load_model(str(path))
    kept = [p for p in model.metadata_props if p.key not in (METADATA_KEY, ARTIFACT_KEY)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(config, sort_keys=True))
    if artifact:
        model.metadata_props.add(key=ARTIFACT_KEY, value=artifact)
    onnx.save_model(model, str(path))

"""TensorRT engine building: the pure decisions without TensorRT, the clear error without it, the build with it."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from trained_model import cached_checkpoint  # noqa: E402

from cosa_sdk.backends import tensorrt as trt_backend  # noqa: E402
from cosa_sdk.cli import main  # noqa: E402
from cosa_sdk.errors import CosaConfigError, CosaModelError  # noqa: E402
from cosa_sdk.export import pipeline  # noqa: E402
from cosa_sdk.export import tensorrt as trt_logic  # noqa: E402


def graph(nodes: list, *, dims: list, initializers: list | None = None, opset: int = 17) -> onnx.ModelProto:
    """A small model with input `image` of shape `dims` and output `logits`."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)
    body = helper.make_graph(nodes, "g", [image], [logits], initializer=initializers or [])
    return helper.make_model(body, opset_imports=[helper.make_opsetid("", opset)])


def written_out_layernorm(prefix: str, source: str, out: str) -> list:
    """LayerNorm as opset < 17 exporters write it: ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div."""
    p = prefix
    return [
        helper.make_node("ReduceMean", [source], [f"{p}mean"], name=f"{p}mean", axes=[-1]),
        helper.make_node("Sub", [source, f"{p}mean"], [f"{p}centred"], name=f"{p}sub"),
        helper.make_node("Pow", [f"{p}centred", "two"], [f"{p}squared"], name=f"{p}pow"),
        helper.make_node("ReduceMean", [f"{p}squared"], [f"{p}var"], name=f"{p}var", axes=[-1]),
        helper.make_node("Add", [f"{p}var", "eps"], [f"{p}var_eps"], name=f"{p}add"),
        helper.make_node("Sqrt", [f"{p}var_eps"], [f"{p}std"], name=f"{p}sqrt"),
        helper.make_node("Div", [f"{p}centred", f"{p}std"], [out], name=f"{p}div"),
    ]


CONSTANTS = [numpy_helper.from_array(np.float32(2.0), "two"), numpy_helper.from_array(np.float32(1e-6), "eps")]


def test_profile_of_a_fixed_size_graph_ranges_only_the_batch() -> None:
    model = graph([helper.make_node("Identity", ["image"], ["logits"], name="id")], dims=["batch", 3, 448, 448])
    profile = trt_logic.profile_shapes(model, input_size=(448, 448), stride=16, batch=(1, 8, 32))
    assert profile.name == "image"
    assert (profile.min, profile.opt, profile.max) == ((1, 3, 448, 448), (8, 3, 448, 448), (32, 3, 448, 448))


def test_profile_of_a_dynamic_graph_ranges_size_in_stride_multiples() -> None:
    model = graph(
        [helper.make_node("Identity", ["image"], ["logits"], name="id")], dims=["batch", 3, "height", "width"]
    )
    profile = trt_logic.profile_shapes(model, input_size=(168, 224), stride=14)
    assert profile.min == (1, 3, 84, 112) and profile.opt == (4, 3, 168, 224) and profile.max == (16, 3, 336, 448)
    assert all(v % 14 == 0 for shape in (profile.min, profile.opt, profile.max) for v in shape[2:])
    with pytest.raises(CosaConfigError, match="min <= opt <= max"):
        trt_logic.profile_shapes(model, input_size=(168, 224), stride=14, batch=(4, 2, 8))


def test_flags_and_file_names_per_precision() -> None:
    assert trt_logic.builder_flags("fp32") == []
    assert trt_logic.builder_flags("fp16") == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    assert trt_logic.builder_flags("int8") == ["INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"]
    assert trt_logic.engine_filename("fp16") == "model.fp16.plan"
    assert trt_logic.engine_precision(fp16=True, int8=False) == "fp16"
    assert trt_logic.engine_precision(fp16=False, int8=True) == "int8"
    assert trt_logic.engine_precision(fp16=False, int8=False) == "fp32"
    with pytest.raises(CosaConfigError, match="precision"):
        trt_logic.builder_flags("bf8")


def test_layernorms_are_pinned_to_fp32_in_both_forms() -> None:
    nodes = [
        helper.make_node("LayerNormalization", ["image", "two", "eps"], ["ln1"], name="block.norm1", axis=-1),
        helper.make_node("MatMul", ["ln1", "two"], ["mm"], name="block.qkv"),
        helper.make_node("Softmax", ["mm"], ["attn"], name="block.softmax"),
        *written_out_layernorm("old.", "attn", "normed"),
        helper.make_node("ReduceMean", ["normed"], ["logits"], name="pool", axes=[-1]),  # not a LayerNorm
    ]
    model = graph(nodes, dims=[1, 3, 8, 8], initializers=CONSTANTS)
    pinned = trt_logic.fp32_pinned_nodes(model)
    assert pinned == ["block.norm1", "old.mean", "old.sub", "old.pow", "old.var", "old.add", "old.sqrt", "old.div"]
    assert "block.softmax" in trt_logic.fp32_pinned_nodes(model, pin_softmax=True)
    tensors = trt_logic.pinned_tensors(model, pinned)
    assert {"ln1", "old.var", "normed"} <= tensors and "mm" not in tensors
    assert trt_logic.layer_is_pinned("old.sqrt", [], set(pinned), tensors)
    assert trt_logic.layer_is_pinned("(Unnamed Layer* 12) [Shuffle]", ["normed"], set(pinned), tensors)
    assert not trt_logic.layer_is_pinned("block.qkv", ["mm"], set(pinned), tensors)


def test_parser_check_flags_onnx_runtime_int8_graphs() -> None:
    zero = numpy_helper.from_array(np.uint8(128), "zp")
    scale = numpy_helper.from_array(np.float32(0.1), "scale")
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["image"], ["q", "s", "z"], name="dq"),
        helper.make_node("MatMulInteger", ["q", "q"], ["mi"], name="mmi"),
        helper.make_node("QuantizeLinear", ["image", "scale", "zp"], ["qq"], name="ql"),
        helper.make_node("FusedMatMul", ["image", "image"], ["logits"], name="fm", domain="com.microsoft"),
    ]
    problems = trt_logic.unsupported_ops(graph(nodes, dims=[1, 3, 8, 8], initializers=[zero, scale]))
    assert set(problems) == {"DynamicQuantizeLinear", "MatMulInteger", "QuantizeLinear", "com.microsoft.FusedMatMul"}
    assert "zero point" in problems["QuantizeLinear"]
    with pytest.raises(CosaModelError, match="MatMulInteger"):
        trt_logic.check_tensorrt_graph(graph(nodes, dims=[1, 3, 8, 8], initializers=[zero, scale]))


def test_exported_fp32_graph_is_parseable(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from cosa_sdk.export.onnx_export import export_onnx
    from cosa_sdk.training.model.network import CoSANetwork

    torch.manual_seed(0)
    stream = CoSANetwork(backbone="vit_tiny_patch16_224", num_classes=2, decoder_channels=16).seg_stream().eval()
    exported = export_onnx(stream, tmp_path / "m.onnx", input_size=(32, 32), num_outputs=3, opset=17)
    model = onnx.load(str(exported.path))
    assert trt_logic.unsupported_ops(model) == {}
    assert trt_logic.graph_outputs(model) == ["logits", "class_scores"]  # two output tensors in the engine
    head = trt_logic.class_score_nodes(model)
    assert [n.op_type for n in model.graph.node if n.name in head] == ["GlobalMaxPool", "Conv", "Flatten"]
    pinned = trt_logic.fp32_pinned_nodes(model)
    norms = [n for n in model.graph.node if n.name in pinned and n.op_type == "LayerNormalization"]
    assert len(norms) == 25 and set(pinned) == {n.name for n in norms} | set(head)
    one_output = export_onnx(
        stream, tmp_path / "old.onnx", input_size=(32, 32), num_outputs=3, opset=17, class_scores=False
    )
    assert trt_logic.class_score_nodes(onnx.load(str(one_output.path))) == []


def test_missing_tensorrt_names_the_extra_and_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(CosaModelError) as err:
        trt_logic.require_tensorrt()
    assert 'pip install "cosa-sdk[trt]"' in str(err.value) and "NVIDIA GPU" in str(err.value)


def test_tensorrt_without_gpu_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setattr(trt_backend, "gpu_count", lambda: 0)
    with pytest.raises(CosaModelError, match="NVIDIA GPU, and none is visible"):
        trt_logic.require_tensorrt()


def test_cli_fails_fast_and_writes_nothing_without_tensorrt(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    missing = tmp_path / "never-read.pt"  # TensorRT is checked before the checkpoint is even opened
    assert main(["export", str(missing), "--out", str(tmp_path / "b"), "--tensorrt", "--fp16"]) == 2
    err = capsys.readouterr().err
    assert 'pip install "cosa-sdk[trt]"' in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


def test_fp16_without_tensorrt_is_refused(tmp_path: Path, capsys) -> None:
    assert main(["export", str(tmp_path / "best.pt"), "--out", str(tmp_path / "b"), "--fp16"]) == 2
    assert "add --tensorrt" in capsys.readouterr().err


@pytest.mark.gpu
def test_fp16_engine_builds_and_agrees(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt")
    if trt_backend.gpu_count() == 0:
        pytest.skip("no NVIDIA GPU")
    out = tmp_path / "b"
    assert main(["export", str(cached_checkpoint()), "--out", str(out), "--tensorrt", "--fp16"]) == 0
    metrics = json.loads((out / "cosa.json").read_text())["metrics"]["tensorrt"]
    assert (out / "model.fp16.plan").stat().st_size > 0
    assert metrics["precision"] == "fp16" and metrics["argmax_agreement"] >= 0.99 and metrics["fp32_layers"] >= 25


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_engine_build_is_wired_into_the_bundle(precision: str, tmp_path: Path, monkeypatch) -> None:
    """TensorRT itself replaced by fakes: what the pipeline hands the builder, and what lands in the bundle."""
    import onnxruntime as ort

    calls = {}

    def fake_build(graph_path, engine, *, precision, profile, pinned):
        model = onnx.load(str(graph_path))
        calls.update(
            precision=precision,
            profile=profile,
            pinned=pinned,
            problems=trt_logic.unsupported_ops(model),
            quantized=sum(n.op_type == "QuantizeLinear" for n in model.graph.node),
        )
        Path(engine).write_bytes(Path(graph_path).read_bytes())  # the "engine" runs the graph it was built from
        return {"precision": precision, "profile": profile.as_dict(), "fp32_layers": len(pinned)}

    class FakeEngine:
        def __init__(self, path, *, input_name, output_name):
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(self, batch):
            return self.session.run(None, {"image": batch})[0]

        def close(self):
            pass

    monkeypatch.setattr(pipeline.trt_logic, "require_tensorrt", lambda: None)
    monkeypatch.setattr(pipeline.trt_logic, "build_engine", fake_build)
    monkeypatch.setattr(trt_backend, "TensorRTBackend", FakeEngine)
    flags = ["--fp16"] if precision == "fp16" else ["--int8"]
    out = tmp_path / "b"
    assert main(["export", str(cached_checkpoint()), "--out", str(out), "--tensorrt", *flags, "--skip-parity"]) == 0

    config = json.loads((out / "cosa.json").read_text())
    assert config["artifacts"]["tensorrt"] == f"model.{precision}.plan" and (out / f"model.{precision}.plan").is_file()
    assert calls["precision"] == precision and calls["problems"] == {}  # the parser would accept the graph
    assert (calls["profile"].min, calls["profile"].opt, calls["profile"].max) == (
        (1, 3, 64, 64),
        (4, 3, 64, 64),
        (16, 3, 64, 64),
    )
    assert len(calls["pinned"]) == 25 + 3  # the LayerNorms and the class-score head (pool, Conv, Flatten)
    assert (calls["quantized"] > 0) is (precision == "int8")  # int8 engines come from a symmetric QDQ graph
    assert config["metrics"]["tensorrt"]["argmax_agreement"] >= 0.98
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the QDQ scratch graph is gone

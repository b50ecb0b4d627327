"""INT8 quantisation choices: which nodes stay fp32, when a mode cannot help, and the dynamic mode end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from trained_model import cached_checkpoint, one_torch_thread  # noqa: E402, F401 (one_torch_thread: autouse)

from cosa_sdk.cli import main  # noqa: E402
from cosa_sdk.errors import CosaConfigError, CosaModelError  # noqa: E402
from cosa_sdk.export import quantize  # noqa: E402
from cosa_sdk.export.quantize import Int8Result, has_vnni, quantization_plan  # noqa: E402


def conv(name: str, source: str, out: str, weight: str, group: int = 1) -> onnx.NodeProto:
    return helper.make_node("Conv", [source, weight], [out], name=name, group=group)


def cnn_like(with_matmul: bool = False) -> onnx.ModelProto:
    weights = [
        numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w_stem"),
        numpy_helper.from_array(np.zeros((8, 1, 3, 3), np.float32), "w_dw"),
        numpy_helper.from_array(np.zeros((16, 8, 1, 1), np.float32), "w_pw"),
        numpy_helper.from_array(np.zeros((4, 16, 1, 1), np.float32), "w_cls"),
    ]
    nodes = [
        conv("stem", "image", "a", "w_stem"),
        conv("dw", "a", "b", "w_dw", group=8),
        conv("pw", "b", "c", "w_pw"),
        conv("classifier", "c", "logits", "w_cls"),
    ]
    if with_matmul:
        weights.append(numpy_helper.from_array(np.zeros((4, 4), np.float32), "w_mm"))
        nodes[-1] = conv("classifier", "c", "d", "w_cls")
        nodes.append(helper.make_node("MatMul", ["d", "w_mm"], ["logits"], name="mm"))
    body = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        initializer=weights,
    )
    return helper.make_model(body)


def test_static_plan_keeps_stem_depthwise_and_logits_in_fp32() -> None:
    op_types, excluded = quantization_plan(cnn_like(), "static")
    assert op_types == ["MatMul", "Gemm", "Conv"]
    assert excluded == ["classifier", "dw", "stem"]  # only the dense pointwise conv is quantised


def test_dynamic_plan_needs_matmuls() -> None:
    op_types, _ = quantization_plan(cnn_like(with_matmul=True), "dynamic")
    assert op_types == ["MatMul", "Gemm"]
    with pytest.raises(CosaModelError, match="use --calibration static"):
        quantization_plan(cnn_like(), "dynamic")
    with pytest.raises(CosaConfigError, match="static or dynamic"):
        quantization_plan(cnn_like(), "qat")


def test_vnni_detection_reads_cpu_flags() -> None:
    assert has_vnni({"avx2", "avx512_vnni"}) and has_vnni({"avx_vnni"})
    assert not has_vnni({"avx2", "fma", "avx512f"})


def test_candidates_try_portable_weights_first_then_dynamic(tmp_path: Path) -> None:
    onnx.save(cnn_like(with_matmul=True), tmp_path / "vit_like.onnx")
    onnx.save(cnn_like(), tmp_path / "cnn.onnx")
    assert quantize.int8_candidates(tmp_path / "vit_like.onnx", "static") == [
        ("static", True),
        ("static", False),
        ("dynamic", True),
        ("dynamic", False),
    ]
    assert quantize.int8_candidates(tmp_path / "cnn.onnx", "static") == [("static", True), ("static", False)]
    assert quantize.int8_candidates(tmp_path / "vit_like.onnx", "dynamic") == [("dynamic", True), ("dynamic", False)]


@pytest.mark.parametrize(
    ("agreements", "expected"),
    [
        ([0.99, 0.999], ("static", True)),  # portable and clear of the limit: taken at once
        ([0.982, 0.99, 0.97, 0.97], ("static", False)),  # 7-bit too close to the limit, 8-bit better
        ([0.982, 0.97, 0.97, 0.975], ("static", True)),  # nothing better: the 7-bit one that passed
        ([0.95, 0.96, 0.97, 0.985], ("dynamic", False)),  # static cannot, dynamic can
        ([0.95, 0.96, 0.97, 0.975], None),  # none: refused, with every attempt in the message
    ],
)
def test_quantize_checked_picks_the_first_good_candidate(agreements, expected, tmp_path: Path, monkeypatch) -> None:
    onnx.save(cnn_like(with_matmul=True), tmp_path / "fp32.onnx")
    scores = iter(agreements)

    def fake_quantize(fp32_path, path, *, mode, calibration, reduce_range, prepared):
        assert prepared.is_file()  # ONNX Runtime's pre-pass ran once, for every candidate
        Path(path).write_text(f"{mode} {reduce_range}")
        return Int8Result(path=Path(path), mode=mode, settings={"reduce_range": reduce_range}, quantized_nodes=1)

    def fake_measure(result, fp32_path, images, *, repeats=10, threads=1):
        if repeats == 0:
            result.agreement = next(scores)
        return result

    monkeypatch.setattr(quantize, "quantize_int8", fake_quantize)
    monkeypatch.setattr(quantize, "measure_int8", fake_measure)
    out = tmp_path / "model.int8.onnx"
    if expected is None:
        with pytest.raises(CosaModelError, match=r"static 7-bit 95\.00 %.*dynamic 8-bit 97\.50 %.*drop --int8"):
            quantize.quantize_checked(tmp_path / "fp32.onnx", out, np.zeros((1, 3, 8, 8), np.float32))
        assert not out.exists()
    else:
        result = quantize.quantize_checked(tmp_path / "fp32.onnx", out, np.zeros((1, 3, 8, 8), np.float32))
        assert (result.mode, result.settings["reduce_range"]) == expected
        assert out.read_text() == f"{expected[0]} {expected[1]}" and result.path == out
        assert result.settings["needs_vnni"] is (not expected[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["fp32.onnx"] + ([out.name] if expected else []))


@pytest.mark.slow  # a second INT8 export of the ViT (~7 s); the static one runs by default
def test_dynamic_int8_vit_bundle(tmp_path: Path, capsys) -> None:
    out = tmp_path / "b"
    assert (
        main(
            [
                "export",
                str(cached_checkpoint()),
                "--out",
                str(out),
                "--int8",
                "--calibration",
                "dynamic",
                "--skip-parity",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "cosa.json").read_text())["metrics"]["int8"]
    assert metrics["mode"] == "dynamic" and metrics["format"] == "QOperator"
    assert metrics["argmax_agreement"] >= 0.98 and metrics["op_types"] == ["MatMul", "Gemm"]
    ops = [n.op_type for n in onnx.load(str(out / "model.int8.onnx")).graph.node]
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    assert ops.count("LayerNormalization") == 25 and "ConvInteger" not in ops  # norms and convs stay fp32
    assert "int8: argmax agreement" in capsys.readouterr().out

"""INT8 quantisation choices: which nodes stay fp32, when a mode cannot help, and the dynamic mode end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from trained_model import cached_checkpoint  # noqa: E402

from cosa_sdk import cpu  # noqa: E402
from cosa_sdk.cli import main  # noqa: E402
from cosa_sdk.errors import CosaConfigError, CosaModelError  # noqa: E402
from cosa_sdk.export import int8_graph, quantize  # noqa: E402
from cosa_sdk.export.int8_graph import quantization_plan  # noqa: E402
from cosa_sdk.export.parity import ort_session  # noqa: E402
from cosa_sdk.export.quantize import Int8Result  # noqa: E402


def conv(name: str, source: str, out: str, weight: str, group: int = 1) -> onnx.NodeProto:
    return helper.make_node("Conv", [source, weight], [out], name=name, group=group)


def image_to_logits_model(nodes: list, weights: list) -> onnx.ModelProto:
    """A graph from a 1 x 3 x 8 x 8 `image` to `logits` with the given nodes and initializers."""
    body = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        initializer=weights,
    )
    return helper.make_model(body)


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
    return image_to_logits_model(nodes, weights)


def test_static_plan_keeps_stem_depthwise_and_logits_in_fp32() -> None:
    op_types, excluded = quantization_plan(cnn_like(), "static")
    assert op_types == ["MatMul", "Gemm", "Conv"]
    assert excluded == ["classifier", "dw", "stem"]  # only the dense pointwise conv is quantised


def test_the_convs_that_make_both_outputs_stay_fp32() -> None:
    """A class-score head (global max pool -> 1x1 Conv -> Flatten) that the exporter wrote before the decoder."""
    weights = [
        numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w_stem"),
        numpy_helper.from_array(np.zeros((8, 8, 1, 1), np.float32), "w_mid"),
        numpy_helper.from_array(np.zeros((2, 8, 1, 1), np.float32), "w_head"),
        numpy_helper.from_array(np.zeros((3, 8, 1, 1), np.float32), "w_seg"),
        numpy_helper.from_array(np.array([8.0, 8.0], np.float32), "scales"),
    ]
    nodes = [
        conv("stem", "image", "a", "w_stem"),
        conv("mid", "a", "f", "w_mid"),
        helper.make_node("GlobalMaxPool", ["f"], ["pooled"], name="pool"),
        conv("head", "pooled", "h", "w_head"),
        helper.make_node("Flatten", ["h"], ["class_scores"], name="flatten"),
        conv("seg", "f", "coarse", "w_seg"),
        helper.make_node("Resize", ["coarse", "", "scales"], ["logits"], name="resize"),
    ]
    body = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("logits", "class_scores")],
        initializer=weights,
    )
    model = helper.make_model(body)
    assert int8_graph.output_convs(model) == ["seg", "head"]
    assert quantization_plan(model, "static")[1] == ["head", "seg", "stem"]  # only "mid" is quantised


def test_a_detail_refiner_keeps_its_image_stem_and_correction_in_fp32() -> None:
    """logits = Resize(Resize(coarse) + correction(fuse(detail_stem(image)))): both terms of the Add make the
    output, and the refiner's stem reads the raw image like the patch embedding."""
    shapes = {"w_stem": (8, 3, 3, 3), "w_seg": (3, 8, 1, 1), "w_dstem": (8, 3, 3, 3), "w_fuse": (8, 8, 1, 1)}
    weights = [numpy_helper.from_array(np.zeros(s, np.float32), n) for n, s in shapes.items()]
    weights += [
        numpy_helper.from_array(np.zeros((3, 8, 1, 1), np.float32), "w_corr"),
        numpy_helper.from_array(np.array([1.0, 1.0, 8.0, 8.0], np.float32), "scales"),
    ]
    nodes = [
        conv("patch_embed", "image", "f", "w_stem"),
        conv("seg", "f", "coarse", "w_seg"),
        helper.make_node("Resize", ["coarse", "", "scales"], ["up"], name="up"),
        conv("detail_stem", "image", "d", "w_dstem"),
        conv("fuse", "d", "e", "w_fuse"),
        conv("correction", "e", "corr", "w_corr"),
        helper.make_node("Add", ["up", "corr"], ["logits"], name="add"),
    ]
    model = image_to_logits_model(nodes, weights)
    assert sorted(int8_graph.output_convs(model)) == ["correction", "seg"]
    assert int8_graph.image_convs(model) == ["patch_embed", "detail_stem"]
    assert quantization_plan(model, "static")[1] == ["correction", "detail_stem", "patch_embed", "seg"]


def vit_like(blocks: int = 3) -> onnx.ModelProto:
    """Pre-norm blocks: LayerNorm -> x @ w_qkv, q @ k (both activations), LayerNorm -> fc; a final LayerNorm."""
    weights = [numpy_helper.from_array(np.ones(4, np.float32), n) for n in ("gamma", "beta")]
    nodes = [conv("patch_embed", "image", "x0", "w_patch")]
    weights.append(numpy_helper.from_array(np.zeros((4, 3, 2, 2), np.float32), "w_patch"))
    for b in range(blocks):
        x = f"x{b}"
        weights += [numpy_helper.from_array(np.zeros((4, 4), np.float32), f"w{b}_{k}") for k in ("qkv", "fc")]
        nodes += [
            helper.make_node("LayerNormalization", [x, "gamma", "beta"], [f"n{b}a"], name=f"norm{b}a", axis=-1),
            helper.make_node("MatMul", [f"n{b}a", f"w{b}_qkv"], [f"q{b}"], name=f"qkv{b}"),
            helper.make_node("MatMul", [f"q{b}", f"q{b}"], [f"s{b}"], name=f"attn{b}"),
            helper.make_node("Add", [x, f"s{b}"], [f"r{b}"], name=f"add{b}a"),
            helper.make_node("LayerNormalization", [f"r{b}", "gamma", "beta"], [f"n{b}b"], name=f"norm{b}b", axis=-1),
            helper.make_node("MatMul", [f"n{b}b", f"w{b}_fc"], [f"m{b}"], name=f"fc{b}"),
            helper.make_node("Add", [f"r{b}", f"m{b}"], [f"x{b + 1}"], name=f"add{b}b"),
        ]
    nodes.append(helper.make_node("LayerNormalization", [f"x{blocks}", "gamma", "beta"], ["y"], name="norm", axis=-1))
    weights.append(numpy_helper.from_array(np.zeros((3, 4, 1, 1), np.float32), "w_cls"))
    nodes.append(conv("classifier", "y", "logits", "w_cls"))
    return image_to_logits_model(nodes, weights)


def test_static_cpu_plan_keeps_attention_matmuls_and_the_first_block_in_fp32() -> None:
    op_types, excluded = quantization_plan(vit_like(), "static")
    assert op_types == ["MatMul", "Gemm", "Conv"]
    assert excluded == ["attn0", "attn1", "attn2", "classifier", "fc0", "patch_embed", "qkv0"]
    # TensorRT's symmetric graph and the dynamic mode keep the base plan
    assert quantization_plan(vit_like(), "static", ort_cpu=False)[1] == ["classifier", "patch_embed"]
    assert quantization_plan(vit_like(), "dynamic")[1] == ["classifier", "patch_embed"]
    # one block: keeping it fp32 would leave nothing to quantise, so only the attention MatMul stays fp32
    assert quantization_plan(vit_like(blocks=1), "static")[1] == ["attn0", "classifier", "patch_embed"]


def test_dynamic_plan_needs_matmuls() -> None:
    op_types, _ = quantization_plan(cnn_like(with_matmul=True), "dynamic")
    assert op_types == ["MatMul", "Gemm"]
    with pytest.raises(CosaModelError, match="use --calibration static"):
        quantization_plan(cnn_like(), "dynamic")
    with pytest.raises(CosaConfigError, match="static or dynamic"):
        quantization_plan(cnn_like(), "qat")


def test_vnni_detection_reads_cpu_flags() -> None:
    def has_vnni(flags: set[str]) -> bool:
        return cpu.CpuInfo(frozenset(flags), "test").vnni

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
        ([(0.99, 0.995), (0.999, 0.999)], ("static", True)),  # portable and clear of the limit: taken at once
        ([(0.99, 0.982), (0.99, 0.99), (0.97, 0.97)], ("static", False)),  # 7-bit only just passes, 8-bit clear
        ([(0.982, 0.99), (0.983, 0.99), (0.97, 0.97), (0.975, 0.99)], ("static", True)),  # none clear: 7-bit
        ([(0.95, 0.99), (0.983, 0.99), (0.97, 0.97), (0.975, 0.99)], ("static", False)),  # only 8-bit passes
        ([(0.95, 0.99), (0.96, 0.99), (0.97, 0.99), (0.985, 0.99)], ("dynamic", False)),  # static cannot, dynamic can
        ([(0.99, 0.97), (0.99, 0.975), (0.99, 0.96), (0.99, 0.979)], None),  # photos fail: refused, with each attempt
    ],
)
def test_quantize_checked_picks_the_first_good_candidate(agreements, expected, tmp_path: Path, monkeypatch) -> None:
    """Each candidate's (validation, photos) agreement; the gate is the worse of the two."""
    onnx.save(cnn_like(with_matmul=True), tmp_path / "fp32.onnx")
    scores = iter(agreements)

    def fake_quantize(fp32_path, path, *, mode, calibration, reduce_range, prepared):
        assert prepared.is_file()  # ONNX Runtime's pre-pass ran once, for every candidate
        Path(path).write_text(f"{mode} {reduce_range}")
        settings = {"reduce_range": reduce_range}
        bits = 7 if reduce_range else 8
        return Int8Result(path=Path(path), mode=mode, settings=settings, quantized_nodes=1, weight_bits=bits)

    def fake_measure(result, fp32_path, images, *, photos=None, repeats=10, threads=1):
        assert photos is not None
        if repeats == 0:
            result.agreements = dict(zip(("validation", "photos"), next(scores)))
            result.agreement = min(result.agreements.values())
        return result

    monkeypatch.setattr(quantize, "quantize_int8", fake_quantize)
    monkeypatch.setattr(quantize, "measure_int8", fake_measure)
    out = tmp_path / "model.int8.onnx"
    images = np.zeros((1, 3, 8, 8), np.float32)
    if expected is None:
        with pytest.raises(CosaModelError, match=r"static 7-bit 97\.00 %.*dynamic 8-bit 97\.90 %.*drop --int8"):
            quantize.quantize_checked(tmp_path / "fp32.onnx", out, images, photos=images)
        written = []
    else:
        result = quantize.quantize_checked(tmp_path / "fp32.onnx", out, images, photos=images)
        assert (result.mode, result.settings["reduce_range"]) == expected
        target = out if expected[1] else tmp_path / "model.int8-vnni.onnx"  # 8-bit weights: the VNNI-only file
        assert target.read_text() == f"{expected[0]} {expected[1]}" and result.path == target
        assert result.needs_vnni is (not expected[1])
        assert result.artifact == ("onnx_int8" if expected[1] else "onnx_int8_vnni")
        (attempt,) = [t for t in result.settings["attempts"] if (t["mode"], t["reduce_range"]) == expected]
        assert result.metrics()["agreement"] == attempt["agreement"] and attempt["weight_bits"] == result.weight_bits
        written = [target.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["fp32.onnx", *written])


def matmul_graph(weights: np.ndarray) -> onnx.ModelProto:
    """x (1 x K float) @ weights (K x N): the shape of a quantised Linear layer."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weights.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weights.shape[1]])],
        initializer=[numpy_helper.from_array(weights.astype(np.float32), "w")],
    )
    return helper.make_model(body, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("reduce_range", "bits", "largest"), [(True, 7, 64), (False, 8, 127)])
def test_weight_width_is_read_from_the_written_weights(reduce_range, bits, largest, tmp_path: Path) -> None:
    weights = np.random.default_rng(0).normal(size=(32, 8))
    onnx.save(matmul_graph(weights), tmp_path / "fp32.onnx")
    calibration = np.random.default_rng(1).uniform(0, 1, size=(4, 32)).astype(np.float32)
    result = quantize.quantize_int8(
        tmp_path / "fp32.onnx", tmp_path / "q.onnx", calibration=calibration, reduce_range=reduce_range
    )
    assert int8_graph.max_abs_weight(onnx.load(str(tmp_path / "q.onnx"))) == largest
    assert result.weight_bits == bits and result.needs_vnni is (bits == 8)


def avx2_u8s8_dot(activations: np.ndarray, weights: np.ndarray) -> int:
    """What an AVX2 CPU without VNNI computes for a u8 x s8 dot product: `pmaddubsw` adds each pair of
    products into a saturating int16, then `pmaddwd` sums the pairs in int32."""
    pairs = activations.astype(np.int32).reshape(-1, 2) * weights.astype(np.int32).reshape(-1, 2)
    return int(np.clip(pairs.sum(axis=1), -32768, 32767).sum())


def test_seven_bit_weights_cannot_saturate_the_avx2_kernel() -> None:
    """The non-VNNI arithmetic, simulated: with |w| <= 64 every pair fits in int16, with 8-bit weights it does not."""
    activations = np.full(64, 255, dtype=np.uint8)  # the worst case: every activation at its largest
    for bound in (int8_graph.SAFE_WEIGHT_MAX, -int8_graph.SAFE_WEIGHT_MAX):
        weights = np.full(64, bound, dtype=np.int8)
        assert avx2_u8s8_dot(activations, weights) == int(activations.astype(np.int64) @ weights)
    weights = np.full(64, 127, dtype=np.int8)
    assert avx2_u8s8_dot(activations, weights) < int(activations.astype(np.int64) @ weights)  # saturated
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = rng.integers(0, 256, 64).astype(np.uint8)
        w = rng.integers(-int8_graph.SAFE_WEIGHT_MAX, int8_graph.SAFE_WEIGHT_MAX + 1, 64).astype(np.int8)
        assert avx2_u8s8_dot(a, w) == int(a.astype(np.int64) @ w.astype(np.int64))


def test_exact_kernels_give_the_unsaturated_result_on_any_cpu(tmp_path: Path) -> None:
    """What export measures 8-bit weights with on a CPU without VNNI: ONNX Runtime's u8 x u8 kernels, exact.

    The graph is built to saturate AVX2's u8 x s8 kernels (activations 255, weights 127).
    """
    onnx.save(matmul_graph(np.full((64, 8), 127.0)), tmp_path / "fp32.onnx")
    calibration = np.full((2, 64), 255.0, np.float32)
    result = quantize.quantize_int8(
        tmp_path / "fp32.onnx", tmp_path / "q.onnx", calibration=calibration, reduce_range=False
    )
    assert result.weight_bits == 8
    exact = ort_session(tmp_path / "q.onnx", exact_int8=True).run(None, {"x": calibration[:1]})[0]
    np.testing.assert_allclose(exact, np.full((1, 8), 255.0 * 127 * 64), rtol=1e-3)
    if cpu.hardware().vnni:  # VNNI adds into int32: exact with the fast kernels too
        fast = ort_session(tmp_path / "q.onnx").run(None, {"x": calibration[:1]})[0]
        np.testing.assert_allclose(fast, exact, rtol=1e-6)


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

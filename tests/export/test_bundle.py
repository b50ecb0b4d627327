"""`cosa export` end to end on tiny trained models (ViT and CNN): bundle content, SDK loading, parity, INT8."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from trained_model import CLASSES, cached_checkpoint, synthetic_scenes  # noqa: E402

import cosa_sdk  # noqa: E402
from cosa_sdk import cpu  # noqa: E402
from cosa_sdk.cli import main  # noqa: E402
from cosa_sdk.errors import CosaConfigError, CosaModelError  # noqa: E402
from cosa_sdk.export.int8_graph import SAFE_WEIGHT_MAX, max_abs_weight  # noqa: E402
from cosa_sdk.export.onnx_export import embed_metadata, export_onnx  # noqa: E402
from cosa_sdk.export.parity import ort_session  # noqa: E402
from cosa_sdk.export.source import load_source  # noqa: E402
from cosa_sdk.preprocess import sigmoid  # noqa: E402
from cosa_sdk.training.engine.checkpoint import build_network, load_checkpoint  # noqa: E402
from cosa_sdk.training.model.network import STREAM_PREFIXES, SegmentationStream  # noqa: E402


def export(checkpoint: Path, out: Path, *args: str) -> tuple[Path, str]:
    """Run `cosa export`; returns the bundle and the printed report."""
    report = io.StringIO()
    with contextlib.redirect_stdout(report):
        assert main(["export", str(checkpoint), "--out", str(out), *args]) == 0
    return out, report.getvalue()


def torch_stream(checkpoint: Path) -> SegmentationStream:
    return build_network(load_checkpoint(checkpoint)).seg_stream().eval()


def torch_image_logits(checkpoint: Path, batch: np.ndarray) -> np.ndarray:
    """The network's `CoSAOutput.logits`: what the graph's class_scores must equal."""
    with torch.inference_mode():
        return build_network(load_checkpoint(checkpoint)).eval()(torch.from_numpy(batch)).logits.numpy()


def normalised(images: np.ndarray, config: dict) -> np.ndarray:
    mean, std = np.float32(config["mean"]), np.float32(config["std"])
    return ((images.astype(np.float32) / 255.0 - mean) / std).transpose(0, 3, 1, 2).copy()


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


INT8_FILES = {"onnx_int8": "model.int8.onnx", "onnx_int8_vnni": "model.int8-vnni.onnx"}


def int8_key(config: dict) -> str:
    """The one INT8 artifact export wrote: 7-bit weights (any CPU) or 8-bit weights (VNNI CPUs only)."""
    (key,) = [k for k in config["artifacts"] if k in INT8_FILES]
    return key


class BaseBundleTester:
    backbone = ""
    input_size = 64
    detail_channels = 0

    @pytest.fixture(scope="class")
    def checkpoint(self) -> Path:
        return cached_checkpoint(self.backbone, input_size=self.input_size, detail_channels=self.detail_channels)

    @pytest.fixture(scope="class")
    def exported(self, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
        return export(checkpoint, tmp_path_factory.mktemp("export") / "bundle", "--int8")

    @pytest.fixture(scope="class")
    def bundle(self, exported: tuple[Path, str]) -> Path:
        return exported[0]

    @pytest.fixture(scope="class")
    def config(self, bundle: Path) -> dict:
        return json.loads((bundle / "cosa.json").read_text())

    @pytest.fixture(scope="class")
    def scenes(self) -> tuple[np.ndarray, np.ndarray]:
        return synthetic_scenes(6, self.input_size, seed=123)

    def test_bundle_files_and_contract_keys(self, bundle: Path, config: dict) -> None:
        assert config["format"] == "cosa-bundle" and config["version"] == 1
        assert config["classes"] == ["background", *CLASSES]
        assert config["input_size"] == [self.input_size, self.input_size]
        assert config["backbone"] == self.backbone
        key = int8_key(config)
        assert config["artifacts"] == {"torch": "model.safetensors", "onnx": "model.onnx", key: INT8_FILES[key]}
        assert config["onnx"]["input"] == "image" and config["onnx"]["output"] == "logits"
        assert config["onnx"]["outputs"] == ["logits", "class_scores"]
        # the graph gives class scores, so dropping absent classes is the SDK's default
        assert config["postprocess"] == {"drop_absent": True, "class_threshold": 0.5, "edge_aware": False}
        assert config["onnx"]["opset"] >= 17 and config["onnx"]["dynamic"] is False
        assert config["network"] == "online"
        assert sorted(p.name for p in bundle.iterdir()) == sorted(
            ["cosa.json", INT8_FILES[key], "model.onnx", "model.safetensors"]
        )
        parity = config["metrics"]["parity"]
        assert parity["relative_diff"] <= 1e-3 and parity["argmax_agreement"] >= 0.999
        assert parity["class_scores"]["relative_diff"] <= 1e-3
        assert parity["image_source"].startswith("dataset custom:")
        assert {(c["batch"], tuple(c["size"])) for c in parity["cases"]} == {
            (1, (self.input_size,) * 2),
            (4, (self.input_size,) * 2),
        }

    def test_report_lists_artifacts_parity_int8_and_path(self, exported: tuple[Path, str], config: dict) -> None:
        bundle, report = exported
        for name in config["artifacts"].values():
            assert name in report
        assert "parity fp32: max |logit diff|" in report and "over 8 images (dataset custom:" in report
        assert "parity class scores: max |diff|" in report and "postprocess: drop_absent on by default" in report
        int8 = config["metrics"]["int8"]
        assert f"speed-up {int8['speedup']:.2f}x" in report and "int8: argmax agreement" in report
        validation, photos = (100 * int8["agreement"][k] for k in ("validation", "photos"))
        count = int8["evaluation"]["photos"]["images"]
        assert f"validation {validation:.2f} % over 16 images, photos {photos:.2f} % over {count} images" in report
        assert ("VNNI CPUs only" if int8["needs_vnni"] else "safe on every CPU") in report
        assert report.strip().endswith(f"bundle: {bundle}")

    def test_onnx_metadata_carries_cosa_json(self, bundle: Path, config: dict) -> None:
        for key in ("onnx", int8_key(config)):
            model = onnx.load(str(bundle / config["artifacts"][key]), load_external_data=False)
            meta = {p.key: p.value for p in model.metadata_props}
            assert json.loads(meta["cosa.json"]) == config and meta["cosa.artifact"] == key

    def test_fixed_graph_has_free_batch_only(self, bundle: Path) -> None:
        model = onnx.load(str(bundle / "model.onnx"))
        dims = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
        out = [[d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in model.graph.output]
        assert dims == ["batch", 3, self.input_size, self.input_size]
        assert out == [["batch", len(CLASSES) + 1, self.input_size, self.input_size], ["batch", len(CLASSES)]]

    def test_onnx_runtime_matches_torch_at_batch_1_and_4(
        self, bundle: Path, checkpoint: Path, config: dict, scenes: tuple[np.ndarray, np.ndarray]
    ) -> None:
        session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
        stream = torch_stream(checkpoint)
        batch = normalised(scenes[0], config)
        with torch.inference_mode():
            reference = stream(torch.from_numpy(batch)).numpy()
        image_logits = torch_image_logits(checkpoint, batch)
        for size in (1, 4):
            got, scores = session.run(None, {"image": batch[:size]})
            np.testing.assert_allclose(got, reference[:size], atol=1e-4, rtol=0)
            assert agreement(got.argmax(1), reference[:size].argmax(1)) >= 0.999
            np.testing.assert_allclose(scores, image_logits[:size], atol=1e-4, rtol=0)

    def test_sdk_class_scores_are_the_classifier_probabilities(
        self, bundle: Path, checkpoint: Path, config: dict, scenes: tuple[np.ndarray, np.ndarray]
    ) -> None:
        expected = sigmoid(torch_image_logits(checkpoint, normalised(scenes[0][:3], config)))
        for backend in ("onnxruntime", "torch"):
            with cosa_sdk.load(bundle, backend=backend) as seg:
                assert seg.has_class_scores
                got = [list(r.class_scores.values()) for r in seg.segment(list(scenes[0][:3]))]
            np.testing.assert_allclose(got, expected, atol=1e-4)

    def test_sdk_loads_bundle_and_segments_like_torch(
        self, bundle: Path, checkpoint: Path, config: dict, scenes: tuple[np.ndarray, np.ndarray]
    ) -> None:
        images, truth = scenes
        with torch.inference_mode():
            expected = torch_stream(checkpoint)(torch.from_numpy(normalised(images, config))).argmax(1).numpy()
        segmenter = cosa_sdk.load(bundle, backend="onnxruntime")
        masks = np.stack([r.mask for r in segmenter.segment(list(images), drop_absent=False)])
        dropped = np.stack([r.mask for r in segmenter.segment(list(images), drop_absent=True)])
        np.testing.assert_array_equal(np.stack([r.mask for r in segmenter.segment(list(images))]), dropped)
        assert masks.shape == truth.shape
        assert agreement(masks, expected) >= 0.999
        assert agreement(masks, truth) > 0.7  # a trained model, not a constant one
        assert len(np.unique(masks)) > 1

    def test_int8_gate_metrics_and_weights(self, bundle: Path, config: dict) -> None:
        int8, key = config["metrics"]["int8"], int8_key(config)
        assert int8["mode"] == "static" and int8["format"] == "QDQ" and int8["artifact"] == key
        assert set(int8["agreement"]) == {"validation", "photos"}  # the gate: the worse of the two
        assert int8["argmax_agreement"] == min(int8["agreement"].values()) >= 0.98
        assert int8["evaluation"]["photos"]["source"] == "scikit-image photographs"
        assert int8["evaluation"]["photos"]["images"] >= 5 and int8["evaluation"]["validation"]["images"] == 16
        assert int8["evaluation"]["validation"]["source"].startswith("dataset custom:")
        assert int8["speedup"] > 0 and int8["quantized_nodes"] > 0
        assert int8["attempts"][0]["reduce_range"] is True  # the portable 7-bit weights are tried first
        assert int8["needs_vnni"] is (key == "onnx_int8_vnni") is (not int8["reduce_range"])
        assert config["int8"] == {
            key: {"weight_bits": int8["weight_bits"], "agreement": int8["agreement"], "min_agreement": 0.98}
        }
        quantized = onnx.load(str(bundle / config["artifacts"][key]))
        largest = max_abs_weight(quantized)
        assert (largest <= SAFE_WEIGHT_MAX) is (int8["weight_bits"] == 7)  # the width is that of the weights
        assert [o.name for o in quantized.graph.output] == ["logits", "class_scores"]  # both outputs survive
        assert 0.0 <= int8["class_agreement"] <= 1.0

    def test_int8_model_gives_class_scores_close_to_fp32(
        self, bundle: Path, config: dict, scenes: tuple[np.ndarray, np.ndarray]
    ) -> None:
        batch = normalised(scenes[0][:2], config)
        key = int8_key(config)
        # 8-bit weights run as the SDK would run them here: on a CPU without VNNI, on the exact kernels
        exact = cpu.exact_kernels_needed(config["int8"][key]["weight_bits"])
        runs = []
        for path, exact_int8 in ((config["artifacts"]["onnx"], False), (config["artifacts"][key], exact)):
            session = ort_session(bundle / path, exact_int8=exact_int8)
            runs.append(session.run(["class_scores"], {"image": batch})[0])
        fp32, q8 = runs
        assert q8.shape == fp32.shape == (2, len(CLASSES))
        assert np.abs(sigmoid(q8) - sigmoid(fp32)).max() < 0.1

    @pytest.mark.parametrize(
        ("claimed", "hardware"),
        [
            ("avx2 fma", None),  # a CPU without VNNI
            ("avx2 avx512_vnni", None),  # a CPU with VNNI
            ("avx2 avx_vnni", "avx2 fma"),  # told VNNI on hardware without it: 8-bit weights on exact kernels
        ],
    )
    def test_int8_choice_and_agreement_for_each_cpu(
        self, claimed: str, hardware: str | None, bundle: Path, config: dict, scenes, monkeypatch
    ) -> None:
        """The SDK's INT8 choice for either CPU answer, and its masks against fp32 on held-out scenes.

        8-bit weights run either on VNNI or on ONNX Runtime's exact kernels, never on saturating ones, so the
        masks are the same on every machine this test runs on.
        """
        monkeypatch.setenv(cpu.ENV_VAR, claimed)
        if hardware is not None:
            monkeypatch.setattr(cpu, "hardware", lambda: cpu.CpuInfo(cpu.parse_flags(hardware), "test"))
        key = int8_key(config)
        vnni = "vnni" in claimed
        fp32 = np.stack([r.mask for r in cosa_sdk.load(bundle, backend="onnxruntime").segment(list(scenes[0]))])
        seg = cosa_sdk.load(bundle)  # auto: the gated INT8 model when this CPU may run it
        if key == "onnx_int8_vnni" and not vnni:
            assert seg.backend == "onnxruntime" and "int8" not in seg.info()
            assert any("8-bit weights" in note and "VNNI" in note for note in seg.notes)
            with pytest.raises(CosaModelError, match="need a CPU with VNNI"):
                cosa_sdk.load(bundle, backend="onnxruntime-int8")
            return
        assert seg.backend == "onnxruntime-int8" and seg.notes == []
        chosen = seg.info()["int8"]
        assert chosen["artifact"] == key and chosen["file"] == INT8_FILES[key] and chosen["gated"] is True
        assert chosen["cpu"]["vnni"] is vnni and chosen["reason"]
        assert chosen["exact_kernels"] is (key == "onnx_int8_vnni" and not cpu.hardware().vnni)
        q8 = np.stack([r.mask for r in seg.segment(list(scenes[0]))])
        assert agreement(q8, fp32) >= 0.98

    def test_safetensors_rebuild_the_torch_stream(
        self, bundle: Path, checkpoint: Path, config: dict, scenes: tuple[np.ndarray, np.ndarray]
    ) -> None:
        from safetensors.torch import load_file

        weights = load_file(str(bundle / "model.safetensors"))
        assert weights and all(k.startswith(STREAM_PREFIXES) for k in weights)
        assert any(k.startswith("detail.") for k in weights) == bool(self.detail_channels)
        assert any(k.startswith("decoder.") for k in weights) and "classifier.weight" in weights
        rebuilt = SegmentationStream.from_config(config["model_config"]).eval()
        rebuilt.load_state_dict(weights, strict=True)
        batch = torch.from_numpy(normalised(scenes[0][:2], config))
        with torch.inference_mode():
            torch.testing.assert_close(rebuilt(batch), torch_stream(checkpoint)(batch))
            _, scores = rebuilt.class_score_view()(batch)
        np.testing.assert_allclose(scores.numpy(), torch_image_logits(checkpoint, batch.numpy()), atol=1e-5)

    def test_lone_onnx_file_loads_from_its_metadata(self, bundle: Path, scenes: tuple[np.ndarray, np.ndarray]) -> None:
        lone = cosa_sdk.load(bundle / "model.onnx")
        full = cosa_sdk.load(bundle, backend="onnxruntime")
        assert lone.classes == full.classes
        for drop in (False, True):
            np.testing.assert_array_equal(
                lone.segment(scenes[0][0], drop_absent=drop).mask, full.segment(scenes[0][0], drop_absent=drop).mask
            )


def one_output_bundle(bundle: Path, checkpoint: Path, out: Path) -> Path:
    """The bundle as cosa-sdk wrote it before class scores: a one-output graph, no classifier.* weights,
    no "outputs" or "postprocess" in cosa.json."""
    from safetensors.torch import load_file, save_file

    out.mkdir()
    config = json.loads((bundle / "cosa.json").read_text())
    config["onnx"].pop("outputs")
    config.pop("postprocess")
    config["artifacts"] = {"torch": "model.safetensors", "onnx": "model.onnx"}
    source = load_source(checkpoint)
    export_onnx(
        source.stream, out / "model.onnx", input_size=source.input_size, num_outputs=4, opset=17, class_scores=False
    )
    embed_metadata(out / "model.onnx", config, artifact="onnx")
    weights = load_file(str(bundle / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.startswith("classifier.")}, str(out / "model.safetensors"))
    (out / "cosa.json").write_text(json.dumps(config))
    return out


class TestViTBundle(BaseBundleTester):
    backbone = "vit_tiny_patch16_224"
    input_size = 64

    def test_bundle_from_before_class_scores_loads_and_segments_as_before(
        self, bundle: Path, checkpoint: Path, scenes: tuple[np.ndarray, np.ndarray], tmp_path: Path
    ) -> None:
        old = one_output_bundle(bundle, checkpoint, tmp_path / "old")
        images = list(scenes[0][:3])
        for backend in ("onnxruntime", "torch"):
            with cosa_sdk.load(old, backend=backend) as before, cosa_sdk.load(bundle, backend=backend) as now:
                assert not before.has_class_scores and now.has_class_scores
                then = before.segment(images, return_scores=True)
                today = now.segment(images, return_scores=True, drop_absent=False)
                for a, b in zip(then, today):
                    np.testing.assert_array_equal(a.mask, b.mask)
                    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
                    assert a.class_scores is None and "class_scores" not in a.to_dict()
                with pytest.raises(CosaConfigError, match="re-export the bundle with `cosa export`"):
                    before.segment(images[0], drop_absent=True)

    def test_layernorm_stays_one_node(self, bundle: Path) -> None:
        model = onnx.load(str(bundle / "model.onnx"))
        ops = [n.op_type for n in model.graph.node]
        assert ops.count("LayerNormalization") == 2 * 12 + 1  # two per block + the final norm
        assert "ReduceMean" not in ops

    def test_int8_keeps_layernorm_and_softmax_in_fp32(self, bundle: Path, config: dict) -> None:
        model = onnx.load(str(bundle / config["artifacts"][int8_key(config)]))
        dequantized = {out for n in model.graph.node if n.op_type == "DequantizeLinear" for out in n.output}
        sensitive = [n for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax")]
        assert len(sensitive) == 25 + 12
        assert not any(name in dequantized for n in sensitive for name in n.input)
        quantized_matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in dequantized]
        assert len(quantized_matmuls) == 4 * 11  # qkv, proj, fc1, fc2 of every block but the first (kept fp32)
        constants = {t.name for t in model.graph.initializer} | dequantized
        for node in model.graph.node:  # attention's activation x activation MatMuls run fp32
            if node.op_type == "MatMul" and not any(name in constants for name in node.input):
                assert not any(name in dequantized for name in node.input)


class TestCNNBundle(BaseBundleTester):
    backbone = "tf_efficientnet_lite0"
    input_size = 96


class TestDetailRefinedBundle(BaseBundleTester):
    """A seg stream whose logits come out at stride 4 (`detail_channels`): its refiner is in every artifact."""

    backbone = "vit_tiny_patch16_224"
    input_size = 64
    detail_channels = 16

    def test_the_refiner_is_in_the_graph_and_its_stem_and_correction_stay_fp32(
        self, bundle: Path, config: dict
    ) -> None:
        graph = onnx.load(str(bundle / "model.onnx"))
        refiner = [n.name for n in graph.graph.node if n.op_type == "Conv" and "/detail/" in n.name]
        assert len(refiner) == 5  # stem x 2, fuse x 2, correction
        int8 = onnx.load(str(bundle / config["artifacts"][int8_key(config)]))
        dequantized = {out for n in int8.graph.node if n.op_type == "DequantizeLinear" for out in n.output}
        convs = {n.name: n for n in int8.graph.node if n.op_type == "Conv"}
        stem, correction = convs[refiner[0]], convs[refiner[-1]]
        assert stem.input[0] == "image" and "correction" in correction.name
        assert not any(name in dequantized for n in (stem, correction) for name in n.input)
        assert any(name in dequantized for name in convs[refiner[2]].input)  # a fusing conv runs INT8


def fully_supervised_record() -> dict:
    """The cached ViT checkpoint's record, relabelled as a `--supervision full` run."""
    from cosa_sdk.training.run_record import RECORD_KEY

    record = load_checkpoint(cached_checkpoint("vit_tiny_patch16_224", input_size=64))
    if isinstance(record.get(RECORD_KEY), dict):
        record[RECORD_KEY] = {**record[RECORD_KEY], "supervision": "full"}
    else:
        record["supervision"] = "full"
    return record


def test_a_fully_supervised_run_exports_no_class_scores(tmp_path: Path) -> None:
    """`--supervision full` trains the seg loss only: its classifier never learned, so no scores leave the graph."""
    from cosa_sdk.export.pipeline import ExportOptions, export_bundle
    from cosa_sdk.training.engine.checkpoint import save_checkpoint

    checkpoint = save_checkpoint(tmp_path / "full.pt", fully_supervised_record())
    with pytest.raises(CosaConfigError, match="--supervision full"):
        export_bundle(checkpoint, tmp_path / "refused", ExportOptions(drop_absent=True))
    assert not (tmp_path / "refused").exists()
    bundle, _ = export(checkpoint, tmp_path / "bundle")
    graph = onnx.load(str(bundle / "model.onnx"))
    assert [o.name for o in graph.graph.output] == ["logits"]
    with cosa_sdk.load(bundle) as seg:
        assert not seg.has_class_scores
        assert seg.segment(np.zeros((64, 64, 3), dtype=np.uint8)).class_scores is None
        with pytest.raises(CosaConfigError, match="supervision full"):
            seg.segment(np.zeros((64, 64, 3), dtype=np.uint8), drop_absent=True)


def test_a_fully_supervised_run_with_the_class_loss_exports_class_scores(tmp_path: Path) -> None:
    """`full_class_loss=true` trains the CAM head beside the masks: its scores deploy."""
    from cosa_sdk.training.engine.checkpoint import save_checkpoint

    record = fully_supervised_record()
    record["config"] = {**(record.get("config") or {}), "full_class_loss": True}
    bundle, _ = export(save_checkpoint(tmp_path / "full.pt", record), tmp_path / "bundle", "--drop-absent")
    graph = onnx.load(str(bundle / "model.onnx"))
    assert [o.name for o in graph.graph.output] == ["logits", "class_scores"]
    with cosa_sdk.load(bundle) as seg:
        assert seg.has_class_scores and seg.drop_absent_setting() is True

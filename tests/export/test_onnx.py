"""ONNX graphs of the seg stream: dynamic shapes, both exporters, opset floor, parity checks that fail loudly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from trained_model import cached_checkpoint, synthetic_scenes  # noqa: E402

from cosa_sdk.cli import main  # noqa: E402
from cosa_sdk.errors import CosaConfigError, CosaModelError  # noqa: E402
from cosa_sdk.export.images import ImageSet, prepare_batch, sample_images  # noqa: E402
from cosa_sdk.export.onnx_export import check_graph, export_onnx, pick_exporter  # noqa: E402
from cosa_sdk.export.parity import parity_sizes, verify_parity  # noqa: E402
from cosa_sdk.export.source import check_input_size, load_source  # noqa: E402
from cosa_sdk.training.engine.checkpoint import build_network, load_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def source():
    return load_source(cached_checkpoint("vit_tiny_patch16_224", input_size=64))


@pytest.fixture(scope="module")
def photos() -> ImageSet:
    return sample_images(None, 4)


@pytest.fixture(scope="module")
def network(source):
    """The whole CoSA network of the checkpoint: its `CoSAOutput.logits` are what class_scores must equal."""
    return build_network(load_checkpoint(source.checkpoint)).eval()


def run_both(session, stream, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        reference = stream(torch.from_numpy(batch)).numpy()
    return session.run(None, {"image": batch})[0], reference


def image_logits(network, batch: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return network(torch.from_numpy(batch)).logits.numpy()


def dims(value) -> list:
    return [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]


def test_dynamic_export_runs_at_two_sizes_and_batches(source, tmp_path: Path, capsys) -> None:
    checkpoint = source.checkpoint
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "b"), "--dynamic"]) == 0
    config = json.loads((tmp_path / "b" / "cosa.json").read_text())
    assert config["onnx"]["dynamic"] is True
    sizes = {tuple(c["size"]) for c in config["metrics"]["parity"]["cases"]}
    assert sizes == {(64, 64), (48, 48), (48, 80)}  # export-time parity covered three sizes

    assert config["onnx"]["outputs"] == ["logits", "class_scores"]
    session = ort.InferenceSession(str(tmp_path / "b" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    assert session.get_outputs()[1].shape == ["batch", 3]
    scenes = synthetic_scenes(3, 128, seed=5)[0]
    network = build_network(load_checkpoint(checkpoint)).eval()
    for batch_size, size in ((1, (64, 64)), (3, (96, 128))):
        batch = prepare_batch(list(scenes[:batch_size]), size, source.mean, source.std)
        got, reference = run_both(session, source.stream, batch)
        assert got.shape == (batch_size, 4, *size)
        np.testing.assert_allclose(got, reference, atol=1e-4, rtol=0)
        assert (got.argmax(1) == reference.argmax(1)).mean() >= 0.999
        scores = session.run(["class_scores"], {"image": batch})[0]
        np.testing.assert_allclose(scores, image_logits(network, batch), atol=1e-4, rtol=0)


@pytest.mark.slow  # torch.export takes ~10 s here
def test_dynamo_exporter_writes_opset_18_with_single_layernorms(source, photos: ImageSet, tmp_path: Path) -> None:
    exported = export_onnx(source.stream, tmp_path / "m.onnx", input_size=(64, 64), num_outputs=4, opset=18)
    assert exported.exporter == "dynamo" and exported.opset == 18
    assert exported.op_types["LayerNormalization"] == 25 and "ReduceMean" not in exported.op_types
    report = verify_parity(
        source.stream, exported.path, photos, input_size=(64, 64), stride=16, mean=source.mean, std=source.std
    )
    assert report.overall.max_abs_diff < 1e-4 and report.overall.agreement >= 0.999


def test_fixed_graph_folds_the_position_embedding(source, tmp_path: Path) -> None:
    exported = export_onnx(source.stream, tmp_path / "m.onnx", input_size=(64, 64), num_outputs=4, opset=17)
    modes = {
        a.s
        for n in onnx.load(str(exported.path)).graph.node
        if n.op_type == "Resize"
        for a in n.attribute
        if a.name == "mode"
    }
    assert modes == {b"linear"}  # only the logits upsampling; no bicubic position-embedding resize
    assert source.stream.backbone.fixed_pos_embed is None  # the stream is left as it was


def test_parity_failure_is_loud(source, photos: ImageSet, tmp_path: Path) -> None:
    exported = export_onnx(source.stream, tmp_path / "m.onnx", input_size=(64, 64), num_outputs=4, opset=17)
    with torch.no_grad():
        source.stream.decoder.conv8.weight.mul_(1.05)
    try:
        with pytest.raises(CosaModelError, match=r"does not match torch.*Nothing was written"):
            verify_parity(
                source.stream, exported.path, photos, input_size=(64, 64), stride=16, mean=source.mean, std=source.std
            )
    finally:
        with torch.no_grad():
            source.stream.decoder.conv8.weight.div_(1.05)


def test_graph_has_logits_and_class_scores_from_one_pass(source, network, tmp_path: Path) -> None:
    exported = export_onnx(source.stream, tmp_path / "m.onnx", input_size=(64, 64), num_outputs=4, opset=17)
    assert exported.info()["outputs"] == ["logits", "class_scores"] and exported.info()["output"] == "logits"
    model = onnx.load(str(exported.path))
    assert [o.name for o in model.graph.output] == ["logits", "class_scores"]
    assert [dims(o) for o in model.graph.output] == [["batch", 4, 64, 64], ["batch", 3]]
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    batch = prepare_batch(list(synthetic_scenes(3, 64, seed=9)[0]), (64, 64), source.mean, source.std)
    logits, scores = session.run(None, {"image": batch})
    assert logits.shape == (3, 4, 64, 64) and scores.shape == (3, 3)
    np.testing.assert_allclose(scores, image_logits(network, batch), atol=1e-4, rtol=0)
    with torch.inference_mode():
        np.testing.assert_allclose(logits, network.seg_stream()(torch.from_numpy(batch)).numpy(), atol=1e-4, rtol=0)


def test_an_avg_pooled_cam_head_exports_its_own_class_scores(network, source, tmp_path: Path) -> None:
    """`cam_pool="avg"` travels in the model config, so the graph's class_scores pool as training did."""
    from cosa_sdk.training.model.network import CoSANetwork

    pooled = CoSANetwork.from_config({**network.model_config(), "cam_pool": "avg"})
    pooled.load_state_dict(network.state_dict())
    pooled.eval()
    stream = pooled.seg_stream().class_score_view().eval()
    exported = export_onnx(stream, tmp_path / "m.onnx", input_size=(64, 64), num_outputs=4, opset=17, dynamic=True)
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    for size in ((64, 64), (48, 80)):
        batch = prepare_batch(list(synthetic_scenes(2, 64, seed=3)[0]), size, source.mean, source.std)
        scores = session.run(["class_scores"], {"image": batch})[0]
        np.testing.assert_allclose(scores, image_logits(pooled, batch), atol=1e-4, rtol=0)
        assert not np.allclose(scores, image_logits(network, batch), atol=1e-3)  # not the max-pooled head's


def test_old_one_output_graph_and_the_contract_check(source, tmp_path: Path) -> None:
    exported = export_onnx(
        source.stream, tmp_path / "m.onnx", input_size=(64, 64), num_outputs=4, opset=17, class_scores=False
    )
    model = onnx.load(str(exported.path))
    assert [o.name for o in model.graph.output] == ["logits"] and exported.info()["outputs"] == ["logits"]
    check_graph(model, input_size=(64, 64), num_outputs=4, dynamic=False, class_scores=False)
    with pytest.raises(CosaModelError, match="expected image -> logits, class_scores"):
        check_graph(model, input_size=(64, 64), num_outputs=4, dynamic=False)


def test_class_score_parity_failure_is_loud(source, photos: ImageSet, tmp_path: Path) -> None:
    exported = export_onnx(source.stream, tmp_path / "m.onnx", input_size=(64, 64), num_outputs=4, opset=17)
    kwargs = {"input_size": (64, 64), "stride": 16, "mean": source.mean, "std": source.std}
    report = verify_parity(source.stream, exported.path, photos, **kwargs)
    assert report.class_scores is not None and report.class_scores.relative_diff < 1e-4
    assert set(report.metrics()["class_scores"]) == {"max_abs_diff", "relative_diff", "presence_agreement"}
    with torch.no_grad():
        source.stream.classifier.weight.mul_(1.05)
    try:
        with pytest.raises(CosaModelError, match=r"class scores do not match torch.*Nothing was written"):
            verify_parity(source.stream, exported.path, photos, **kwargs)
    finally:
        with torch.no_grad():
            source.stream.classifier.weight.div_(1.05)


def test_exporter_follows_the_opset() -> None:
    assert pick_exporter(17) == "torchscript"
    assert pick_exporter(18) == "dynamo" and pick_exporter(20) == "dynamo"
    assert pick_exporter(18, "torchscript") == "torchscript"
    with pytest.raises(CosaConfigError, match="opset 18"):
        pick_exporter(17, "dynamo")
    with pytest.raises(CosaConfigError, match="LayerNormalization"):
        pick_exporter(16)


def test_input_size_rules() -> None:
    assert check_input_size([64], 16) == (64, 64)
    assert check_input_size([48, 80], 16) == (48, 80)
    assert check_input_size([168], 14) == (168, 168)
    with pytest.raises(CosaConfigError, match="multiple of the backbone stride 14: use 168 or 182"):
        check_input_size([170], 14)
    with pytest.raises(CosaConfigError, match="H or H W"):
        check_input_size([64, 64, 64], 16)


def test_parity_sizes_cover_the_dynamic_range() -> None:
    assert parity_sizes((448, 448), 16, dynamic=False) == [(448, 448)]
    assert parity_sizes((448, 448), 16, dynamic=True) == [(448, 448), (336, 336), (336, 560)]
    assert all(h % 14 == 0 and w % 14 == 0 for h, w in parity_sizes((168, 168), 14, dynamic=True))


def test_photographs_are_real_and_varied() -> None:
    photos = sample_images(None, 4)
    assert photos.source == "scikit-image photographs" and len(photos.images) == 4
    assert len({p.shape for p in photos.images}) > 1
    assert all(p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3 and p.std() > 10 for p in photos.images)

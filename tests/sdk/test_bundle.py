"""Bundle reading and backend choice: every malformed bundle gives a CosaModelError that names the fix."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from toy_bundle import FakeSession, cached_toy_bundle, make_toy_bundle

import cosa_sdk
from cosa_sdk.backends import tensorrt as trt_backend
from cosa_sdk.backends.base import Backend
from cosa_sdk.bundle import read_bundle
from cosa_sdk.constants import TTA_SCALES
from cosa_sdk.errors import CosaInputError, CosaModelError


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A private copy of the toy bundle that a test may break."""
    return Path(shutil.copytree(cached_toy_bundle(), tmp_path / "bundle"))


def edit_config(bundle: Path, **changes) -> None:
    path = bundle / "cosa.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def test_reads_the_contract_fields() -> None:
    bundle = read_bundle(cached_toy_bundle())
    assert bundle.classes == ("background", "red", "green")
    assert bundle.input_size == (64, 64)
    assert bundle.mean == pytest.approx((0.485, 0.456, 0.406))
    assert bundle.palette[1] == (200, 0, 0)
    assert bundle.artifact("onnx").name == "model.onnx"
    assert bundle.onnx.input == "image" and bundle.onnx.dynamic is False
    assert read_bundle(cached_toy_bundle() / "cosa.json").classes == bundle.classes


def test_optional_fields_get_defaults(bundle: Path) -> None:
    edit_config(bundle, palette=None, tta_scales=None, patch_size=None, onnx=None, classes=["bg", "a", "b"])
    loaded = read_bundle(bundle)
    assert loaded.tta_scales == TTA_SCALES
    assert loaded.patch_size == 16
    assert loaded.palette[:3] == ((0, 0, 0), (128, 0, 0), (0, 128, 0))  # VOC colours
    assert cosa_sdk.load(bundle).segment(np.zeros((5, 5, 3), np.uint8)).classes == ["bg", "a", "b"]


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"format": "something-else"}, "not a cosa-sdk bundle"),
        ({"format": None}, "not a cosa-sdk bundle"),
        ({"version": 2}, "upgrade"),
        ({"version": "1"}, "'version' must be a positive integer"),
        ({"classes": None}, "'classes' is missing"),
        ({"classes": ["background"]}, "2 to 256"),
        ({"classes": ["background", "a", "a"]}, "duplicate"),
        ({"classes": "background,red"}, "list of class names"),
        ({"input_size": None}, "'input_size' is missing"),
        ({"input_size": [64, -1]}, "height, width"),
        ({"mean": [123.7, 116.3, 103.5]}, "0-1 pixel scale"),
        ({"std": [0.2, 0.0, 0.2]}, "'std'"),
        ({"mean": [0.5, 0.5]}, "'mean' must be 3 numbers"),
        ({"artifacts": None}, "'artifacts' is missing"),
        ({"artifacts": {}}, "'artifacts' must map"),
        ({"palette": [[0, 0, 0], [300, 0, 0]]}, "palette entry 1"),
        ({"tta_scales": [1.0, -0.5]}, "tta_scales"),
        ({"onnx": {"input": 3}}, "'onnx'"),
    ],
)
def test_malformed_config_is_refused(bundle: Path, changes: dict, needle: str) -> None:
    edit_config(bundle, **changes)
    with pytest.raises(CosaModelError, match=needle) as info:
        cosa_sdk.load(bundle)
    assert "cosa.json" in str(info.value)


def test_invalid_json_names_the_line(bundle: Path) -> None:
    (bundle / "cosa.json").write_text('{"format": "cosa-bundle",\n "version": 1,,}')
    with pytest.raises(CosaModelError, match=r"not valid JSON \(line 2"):
        cosa_sdk.load(bundle)
    (bundle / "cosa.json").write_text("[1, 2]")
    with pytest.raises(CosaModelError, match="JSON object"):
        cosa_sdk.load(bundle)


@pytest.mark.parametrize(
    "name", ["/etc/passwd", "../outside.onnx", "sub/../../outside.onnx", "C:\\models\\m.onnx", "\\\\server\\m.onnx"]
)
def test_artifact_names_cannot_escape_the_bundle(bundle: Path, name: str) -> None:
    edit_config(bundle, artifacts={"onnx": name})
    with pytest.raises(CosaModelError, match="outside the bundle"):
        cosa_sdk.load(bundle)


def test_artifact_symlink_out_of_the_bundle_is_refused(bundle: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(bundle / "model.onnx", outside)
    os.symlink(outside, bundle / "linked.onnx")
    edit_config(bundle, artifacts={"onnx": "linked.onnx"})
    with pytest.raises(CosaModelError, match="link to a file outside"):
        cosa_sdk.load(bundle)


def test_missing_bundle_and_artifacts(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(CosaModelError, match="not found"):
        cosa_sdk.load(tmp_path / "nope")
    with pytest.raises(CosaModelError, match=r"has no cosa\.json"):
        cosa_sdk.load(tmp_path)
    with pytest.raises(CosaModelError, match="--int8"):
        cosa_sdk.load(bundle, backend="onnxruntime-int8")
    with pytest.raises(CosaModelError, match="no 'torch' artifact"):
        cosa_sdk.load(bundle, backend="torch")
    (bundle / "model.onnx").unlink()
    with pytest.raises(CosaModelError, match=r"model.onnx is missing"):
        cosa_sdk.load(bundle, backend="onnxruntime")
    with pytest.raises(CosaModelError, match="no backend can run"):
        cosa_sdk.load(bundle)


def test_damaged_onnx_file(bundle: Path) -> None:
    (bundle / "model.onnx").write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(CosaModelError, match="ONNX Runtime cannot load"):
        cosa_sdk.load(bundle, backend="onnxruntime")


def test_config_that_does_not_fit_the_model(bundle: Path) -> None:
    edit_config(bundle, classes=["background", "red", "green", "blue"])
    with pytest.raises(CosaModelError, match=r"cosa\.json lists 4 classes"):
        cosa_sdk.load(bundle)
    edit_config(bundle, classes=["background", "red", "green"], input_size=[32, 32])
    with pytest.raises(CosaModelError, match="takes 64x64 images"):
        cosa_sdk.load(bundle)


def test_unknown_backend_and_bad_options() -> None:
    with pytest.raises(CosaInputError, match=r"unknown backend 'openvino'.*auto, onnxruntime"):
        cosa_sdk.load(cached_toy_bundle(), backend="openvino")
    with pytest.raises(CosaInputError, match="batch_size"):
        cosa_sdk.load(cached_toy_bundle(), batch_size=0)
    assert cosa_sdk.load(cached_toy_bundle(), backend="ONNXRuntime").backend == "onnxruntime"


def test_lone_onnx_file_loads_from_its_metadata(tmp_path: Path) -> None:
    lone = tmp_path / "renamed.onnx"
    shutil.copy(cached_toy_bundle() / "model.onnx", lone)
    seg = cosa_sdk.load(lone)
    assert seg.classes == ["background", "red", "green"]
    assert seg.bundle.artifacts == {"onnx": "renamed.onnx"}
    assert read_bundle(lone).input_size == (64, 64)
    image = np.zeros((20, 30, 3), np.uint8)
    image[:, :10] = (230, 20, 20)
    np.testing.assert_array_equal(seg.segment(image).mask, cosa_sdk.load(cached_toy_bundle()).segment(image).mask)
    with pytest.raises(CosaInputError, match="ONNX Runtime only"):
        cosa_sdk.load(lone, backend="torch")


def test_lone_onnx_without_metadata_is_refused(tmp_path: Path) -> None:
    import onnx

    proto = onnx.load(str(cached_toy_bundle() / "model.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(CosaModelError, match=r"no 'cosa\.json' metadata"):
        cosa_sdk.load(tmp_path / "bare.onnx")
    entry = proto.metadata_props.add()
    entry.key, entry.value = "cosa.json", "{not json"
    onnx.save(proto, str(tmp_path / "broken.onnx"))
    with pytest.raises(CosaModelError, match="not valid JSON"):
        cosa_sdk.load(tmp_path / "broken.onnx")


# -- backend choice ---------------------------------------------------------------------------------


class FakeEngine(Backend):
    """Stands in for a TensorRT engine: doubles as a check that `auto` picked it."""

    def __init__(self, path: Path, **_: object) -> None:
        self.name, self.device = "tensorrt", "cuda"
        self.fixed_size = (64, 64)
        self.path = path

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros((batch.shape[0], 3, *batch.shape[2:]), dtype=np.float32)


@pytest.fixture
def bundle_with_engine(bundle: Path) -> Path:
    (bundle / "model.fp16.plan").write_bytes(b"not a real engine")
    edit_config(bundle, artifacts={"onnx": "model.onnx", "tensorrt": "model.fp16.plan"})
    return bundle


def test_tensorrt_is_reported_unavailable_here() -> None:
    assert trt_backend.unavailable_reason() is not None


def test_auto_skips_tensorrt_without_gpu_and_says_why(bundle_with_engine: Path, monkeypatch) -> None:
    monkeypatch.setattr(trt_backend, "unavailable_reason", lambda: "no CUDA GPU is visible")
    seg = cosa_sdk.load(bundle_with_engine)
    assert seg.backend == "onnxruntime" and seg.device == "cpu"
    assert seg.notes == ["tensorrt: no CUDA GPU is visible"]
    with pytest.raises(CosaModelError, match="TensorRT backend cannot run here: no CUDA GPU"):
        cosa_sdk.load(bundle_with_engine, backend="tensorrt")


def test_auto_prefers_tensorrt_when_it_can_run(bundle_with_engine: Path, monkeypatch) -> None:
    monkeypatch.setattr(trt_backend, "unavailable_reason", lambda: None)
    monkeypatch.setattr(trt_backend, "TensorRTBackend", FakeEngine)
    seg = cosa_sdk.load(bundle_with_engine)
    assert seg.backend == "tensorrt" and seg.device == "cuda"
    assert seg.segment(np.zeros((7, 9, 3), np.uint8)).mask.shape == (7, 9)


def test_auto_falls_back_when_the_engine_does_not_load(bundle_with_engine: Path, monkeypatch) -> None:
    def incompatible(path: Path, **_: object) -> Backend:
        raise CosaModelError("TensorRT could not load the engine (built for another GPU)")

    monkeypatch.setattr(trt_backend, "unavailable_reason", lambda: None)
    monkeypatch.setattr(trt_backend, "TensorRTBackend", incompatible)
    seg = cosa_sdk.load(bundle_with_engine)
    assert seg.backend == "onnxruntime"
    assert "another GPU" in seg.notes[0]


def test_int8_is_only_used_when_asked() -> None:
    int8_bundle = cached_toy_bundle(int8=True)
    assert cosa_sdk.load(int8_bundle).backend == "onnxruntime"
    seg = cosa_sdk.load(int8_bundle, backend="onnxruntime-int8")
    assert seg.backend == "onnxruntime-int8"
    assert seg.info()["providers"] == ["CPUExecutionProvider"]


@pytest.mark.parametrize(
    ("real_providers", "device"),
    [(["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda"), (["CPUExecutionProvider"], "cpu")],
)
def test_device_follows_the_providers_the_session_really_got(monkeypatch, real_providers, device) -> None:
    from cosa_sdk.backends import onnxruntime as ort_backend

    requested: list = []
    original = ort_backend.create_session

    def fake_create(path, *, providers=None, threads=None):
        requested.append(list(providers or ort_backend.default_providers()))
        return FakeSession(original(path, providers=["CPUExecutionProvider"]), real_providers)

    monkeypatch.setattr(ort_backend, "create_session", fake_create)
    monkeypatch.setattr(
        "onnxruntime.get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    seg = cosa_sdk.load(cached_toy_bundle())
    assert requested == [["CUDAExecutionProvider", "CPUExecutionProvider"]]  # CUDA asked for first
    assert seg.device == device


def test_make_toy_bundle_writes_what_it_lists(tmp_path: Path) -> None:
    root = make_toy_bundle(tmp_path / "b", classes=("background", "red", "green", "blue"), input_size=(32, 48))
    seg = cosa_sdk.load(root)
    assert seg.input_size == (32, 48) and len(seg.classes) == 4
    image = np.zeros((10, 30, 3), np.uint8)
    image[:, 20:] = (10, 20, 230)
    assert seg.segment(image).mask[5, 28] == 3

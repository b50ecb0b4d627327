"""Every inference backend through the same checks (tests/sdk/conformance.py): one subclass per backend.

To add a backend: a `Test...(BackendConformance)` class here with its `backend` name, the bundle it runs
(`bundle_options`, or `make_bundle` when it needs an artifact the toy bundle lacks), its `device` and its
tolerances; `requirements` skips it where it cannot run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from toy_bundle import cached_toy_bundle

import cosa_sdk

from .conformance import BackendConformance
from .scenes import need_network, noise, torch_reference


class TestOnnxRuntime(BackendConformance):
    """fp32 ONNX Runtime, the reference of the others; its own reference is the colour model in torch."""

    backend = "onnxruntime"
    sample_size = (97, 131)
    scores_atol = 1e-4

    def reference_scores(self, bundle: Path, image: np.ndarray) -> np.ndarray:
        return torch_reference(image, sizes=None).numpy()


class TestOnnxRuntimeInt8(BackendConformance):
    """The quantised model of the toy bundle (hand-made, no agreement gate: it runs only when asked for)."""

    backend = "onnxruntime-int8"
    bundle_options: ClassVar[dict] = {"int8": True}
    device = "cpu"
    min_agreement = 0.97
    # dynamic quantisation scales the activations of the whole batch at once: a batch is not bit-identical
    batch_mask_agreement = 0.999
    batch_scores_atol = 1e-3

    def test_runs_on_the_cpu_provider(self, seg: cosa_sdk.Segmenter) -> None:
        assert seg.info()["providers"] == ["CPUExecutionProvider"]


class TestTorch(BackendConformance):
    """The SegmentationStream rebuilt from model_config + model.safetensors (a tiny random ViT)."""

    backend = "torch"
    bundle_options: ClassVar[dict] = {"with_torch": True}
    device = "cpu"
    scores_atol = 1e-4

    def requirements(self) -> None:
        need_network()

    def sample(self) -> np.ndarray:
        return noise(71, 93, seed=7)  # a random network: colours mean nothing to it

    def test_torch_backend_refuses_a_mismatched_state_dict(self, bundle: Path, tmp_path: Path) -> None:
        from safetensors.torch import save_file

        broken = Path(shutil.copytree(bundle, tmp_path / "b"))
        save_file({"unrelated": torch.zeros(2)}, str(broken / "model.safetensors"))
        with pytest.raises(cosa_sdk.CosaModelError, match="does not match model_config"):
            cosa_sdk.load(broken, backend="torch")


@pytest.mark.gpu
class TestTensorRT(BackendConformance):
    """An fp16 engine built here from the toy bundle's model.onnx; skipped without TensorRT and a GPU."""

    backend = "tensorrt"
    device = "cuda"
    min_agreement = 0.99

    def requirements(self) -> None:
        pytest.importorskip("tensorrt")
        from cosa_sdk.backends import tensorrt as trt_backend

        reason = trt_backend.unavailable_reason()
        if reason is not None:
            pytest.skip(reason)

    def make_bundle(self, tmp_path_factory: pytest.TempPathFactory) -> Path:
        import onnx

        from cosa_sdk.export import tensorrt as trt_logic

        root = Path(shutil.copytree(cached_toy_bundle(), tmp_path_factory.mktemp("tensorrt") / "bundle"))
        model = onnx.load(str(root / "model.onnx"))
        profile = trt_logic.profile_shapes(model, input_size=(64, 64), stride=8)
        engine = root / trt_logic.engine_filename("fp16")
        trt_logic.build_engine(
            root / "model.onnx", engine, precision="fp16", profile=profile, pinned=trt_logic.fp32_pinned_nodes(model)
        )
        config = json.loads((root / "cosa.json").read_text())
        config["artifacts"]["tensorrt"] = engine.name
        (root / "cosa.json").write_text(json.dumps(config))
        return root


def test_every_registered_backend_has_a_conformance_variant() -> None:
    from cosa_sdk.backends import REGISTRY

    variants = {cls.backend for cls in BackendConformance.__subclasses__()}
    assert variants == set(REGISTRY), "add a BackendConformance subclass for each new entry of REGISTRY"

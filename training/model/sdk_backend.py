"""The SDK's torch backend: the SegmentationStream rebuilt from cosa.json's model_config + model.safetensors.

It lives with the network it rebuilds; the SDK's backend registry names it by module path, so the SDK
itself never imports training code. Needs the `[train]` extra (torch, timm, safetensors). Weights are
read with safetensors only: nothing from a bundle is ever unpickled. Bundles exported before class scores
hold no `classifier.*` tensors: they load as before and give no class scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cosa_sdk.backends.base import Backend
from cosa_sdk.errors import CosaModelError


class TorchBackend(Backend):
    """Eager PyTorch on CUDA when available, else CPU; forward passes are thread-safe in eval mode."""

    def __init__(self, weights: str | Path, model_config: dict[str, Any] | None, *, device: str | None = None) -> None:
        try:
            import torch
            from safetensors.torch import load_file

            from cosa_sdk.training.model.network import SegmentationStream
        except ImportError as err:
            raise CosaModelError(
                f'the torch backend needs {err.name or "torch"}: pip install "cosa-sdk[train]", '
                "or use backend='onnxruntime'"
            ) from err
        if not isinstance(model_config, dict):
            raise CosaModelError(
                "cosa.json has no 'model_config', so the torch backend cannot rebuild the network; "
                "re-export the bundle with `cosa export` or use backend='onnxruntime'"
            )
        self.torch = torch
        self.name = "torch"
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            model = SegmentationStream.from_config(model_config)
            missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
        except Exception as err:  # a config that does not build, or a damaged safetensors file
            raise CosaModelError(
                f"cannot rebuild the torch model from {weights} and model_config: {err}; re-export the bundle"
            ) from err
        if missing and all(key.startswith("classifier.") for key in missing):
            model.drop_classifier()  # an old bundle: backbone and decoder only
            missing = []
        if missing or unexpected:
            raise CosaModelError(
                f"{weights} does not match model_config ({len(missing)} missing, {len(unexpected)} unexpected "
                f"tensors, e.g. {(missing or unexpected)[:3]}); re-export the bundle"
            )
        self.model = model.to(self.device).eval()
        self.has_class_scores = model.has_class_scores
        self._scoring = model.class_score_view(self.has_class_scores).eval()

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._forward(self.model, batch)[0]

    def run_with_scores(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = self._forward(self._scoring, batch)
        return outputs[0], outputs[1] if len(outputs) > 1 else None

    def _forward(self, model: Any, batch: np.ndarray) -> list[np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            out = model(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
        return [t.float().cpu().numpy() for t in (out if isinstance(out, tuple) else (out,))]

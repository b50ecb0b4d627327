"""A real, tiny model bundle for SDK tests: cosa.json + model.onnx exported with torch.

The default model segments by colour: reddish pixels -> class 1, greenish -> class 2 (and bluish ->
class 3 when a fourth class is given), everything else -> class 0. It is a 1x1 convolution on the
de-normalised pixels, a 4x4 average pool (a coarse "stride" like a real backbone) and a bilinear
upsample back to the input size, so its logits behave like a SegmentationStream's.

`with_torch=True` instead builds a tiny random `SegmentationStream` (needs `training/model/network.py`)
and writes it as both model.safetensors and model.onnx, so the torch and ONNX backends can be
compared; its masks carry no colour meaning.

`class_scores=True` gives the graph its second output, the image-level class logits (N, C): for the
colour model the largest coarse logit of each class less `SCORE_MARGIN` (so a clearly coloured 4x4 cell
makes its class present, while a faint one still takes pixels but is scored absent: what `drop_absent`
removes); for the torch stream its CAM head. Without it the bundle is the one-output kind exported
before class scores (and the torch stream's safetensors lack `classifier.*`, as such bundles do).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
TINY_STREAM_CONFIG: dict[str, Any] = {
    "backbone": "vit_tiny_patch16_224",
    "num_classes": 2,
    "decoder_channels": 16,
    "backbone_kwargs": {"img_size": 64, "depth": 3},
}


class ColourNet(nn.Module):
    """Normalised images -> colour-class logits at the input size."""

    def __init__(self, num_classes: int, *, pool: int = 4) -> None:
        super().__init__()
        self.pool = pool
        self.conv = nn.Conv2d(3, num_classes, 1)
        weight = torch.zeros(num_classes, 3)
        bias = torch.zeros(num_classes)
        for k in range(1, num_classes):
            channel = (k - 1) % 3
            weight[k] = -1.0
            weight[k, channel] = 2.0
            bias[k] = -0.5 if k <= 3 else -10.0
        # fold the normalisation in: the scores are linear in the 0-1 pixel values
        std, mean = torch.tensor(STD), torch.tensor(MEAN)
        with torch.no_grad():
            self.conv.weight.copy_((weight * std).view(num_classes, 3, 1, 1))
            self.conv.bias.copy_(bias + weight @ mean)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        coarse = F.avg_pool2d(self.conv(images), self.pool, ceil_mode=True)
        return F.interpolate(coarse, size=images.shape[-2:], mode="bilinear", align_corners=False)


SCORE_MARGIN = 0.25


class ScoredColourNet(ColourNet):
    """ColourNet that also returns image-level class logits: each class's largest coarse logit less SCORE_MARGIN."""

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        coarse = F.avg_pool2d(self.conv(images), self.pool, ceil_mode=True)
        logits = F.interpolate(coarse, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits, coarse[:, 1:].amax(dim=(2, 3)) - SCORE_MARGIN


class BusyColourNet(ColourNet):
    """ColourNet plus a stack of wide convolutions whose output barely touches the logits.

    It makes every model call take a known, noticeable time (tens of milliseconds per image), so a
    test can rely on concurrent requests queueing behind a busy model worker.
    """

    def __init__(self, num_classes: int, *, layers: int = 6, width: int = 48) -> None:
        super().__init__(num_classes)
        convs: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1)]
        convs += [nn.Conv2d(width, width, 3, padding=1) for _ in range(layers - 1)]
        self.busy = nn.Sequential(*convs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        noise = self.busy(images).mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)
        return super().forward(images) + 1e-6 * torch.tanh(noise)


def output_names(class_scores: bool) -> list[str]:
    return ["logits", "class_scores"] if class_scores else ["logits"]


def bundle_config(
    classes: Sequence[str],
    input_size: Sequence[int],
    *,
    dynamic: bool,
    artifacts: dict[str, str],
    class_scores: bool = False,
    drop_absent: bool | None = None,
) -> dict[str, Any]:
    """cosa.json; `drop_absent` None leaves "postprocess" out (as bundles exported before it)."""
    onnx_entry: dict[str, Any] = {"input": "image", "output": "logits", "dynamic": dynamic, "opset": 17}
    if class_scores:
        onnx_entry["outputs"] = output_names(True)
    postprocess = {} if drop_absent is None else {"postprocess": {"drop_absent": drop_absent, "class_threshold": 0.5}}
    return {
        "format": "cosa-bundle",
        "version": 1,
        "name": "toy",
        "classes": list(classes),
        "input_size": list(input_size),
        "mean": list(MEAN),
        "std": list(STD),
        "palette": [[0, 0, 0], [200, 0, 0], [0, 200, 0], [0, 0, 200]][: len(classes)],
        "backbone": "toy-colour",
        "patch_size": 8,
        "tta_scales": [1.0, 0.5, 1.5, 0.75, 1.25],
        "artifacts": artifacts,
        "onnx": onnx_entry,
        "created_by": "tests/toy_bundle.py",
        **postprocess,
    }


def export_onnx(
    model: nn.Module,
    path: Path,
    input_size: Sequence[int],
    *,
    dynamic: bool,
    metadata: str,
    fixed_batch: int | None = None,
    class_scores: bool = False,
) -> None:
    """Export with the TorchScript exporter (opset 17) and store cosa.json in metadata_props.

    dynamic: height and width are free. The batch axis is free unless `fixed_batch` is given.
    class_scores: the model returns (logits, class logits), written as a second output.
    """
    import onnx

    example = torch.zeros(fixed_batch or 1, 3, *input_size)
    spatial = {2: "height", 3: "width"} if dynamic else {}
    batch = {} if fixed_batch else {0: "batch"}
    axes = {"image": {**batch, **spatial}, "logits": {**batch, **spatial}, "class_scores": batch}
    torch.onnx.export(
        model.eval(),
        (example,),
        str(path),
        input_names=["image"],
        output_names=output_names(class_scores),
        dynamic_axes={name: axes[name] for name in ["image", *output_names(class_scores)]},
        opset_version=17,
        dynamo=False,
    )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "cosa.json", metadata
    onnx.save(proto, str(path))


def make_toy_bundle(
    path: str | Path,
    *,
    classes: Sequence[str] = ("background", "red", "green"),
    input_size: Sequence[int] = (64, 64),
    dynamic: bool = False,
    int8: bool = False,
    with_torch: bool = False,
    fixed_batch: int | None = None,
    busy: bool = False,
    class_scores: bool = False,
    drop_absent: bool | None = None,
) -> Path:
    """Write a bundle folder at `path` (created) and return it.

    busy: the colour model with a slow, negligible extra branch (`BusyColourNet`).
    class_scores: a second graph output with image-level class logits (see the module docstring);
    drop_absent: cosa.json's postprocess.drop_absent (None: no "postprocess" key).

    dynamic: free height and width (for multi-scale TTA); otherwise a fixed input size. The batch
    axis is free unless `fixed_batch` is given.
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    artifacts = {"onnx": "model.onnx"}
    extra: dict[str, Any] = {}
    if with_torch:
        from safetensors.torch import save_file

        from cosa_sdk.training.model.network import SegmentationStream

        torch.manual_seed(0)
        classes = ("background", "thing", "other")
        stream = SegmentationStream.from_config(TINY_STREAM_CONFIG).eval()
        state = {k: v.contiguous() for k, v in stream.state_dict().items()}
        if not class_scores:  # as bundles exported before class scores: backbone and decoder only
            state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        save_file(state, str(root / "model.safetensors"))
        artifacts["torch"] = "model.safetensors"
        extra["model_config"] = TINY_STREAM_CONFIG
        model: nn.Module = stream.class_score_view(class_scores)
    elif busy:
        model = BusyColourNet(len(classes))
    else:
        model = ScoredColourNet(len(classes)) if class_scores else ColourNet(len(classes))
    if int8:
        artifacts["onnx_int8"] = "model.int8.onnx"
    scoring = {"class_scores": class_scores}
    config = {
        **bundle_config(classes, input_size, dynamic=dynamic, artifacts=artifacts, drop_absent=drop_absent, **scoring),
        **extra,
    }
    text = json.dumps(config, indent=2)
    export_onnx(
        model, root / "model.onnx", input_size, dynamic=dynamic, metadata=text, fixed_batch=fixed_batch, **scoring
    )
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(root / "model.onnx"), str(root / "model.int8.onnx"), weight_type=QuantType.QUInt8)
    (root / "cosa.json").write_text(text)
    return root


_CACHE: dict[tuple, Path] = {}


def cached_toy_bundle(**options: Any) -> Path:
    """`make_toy_bundle` once per process and option set, in a temporary folder; do not modify it."""
    import atexit
    import shutil
    import tempfile

    key = tuple(sorted((k, tuple(v) if isinstance(v, list | tuple) else v) for k, v in options.items()))
    if key not in _CACHE:
        folder = tempfile.mkdtemp(prefix="cosa-toy-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _CACHE[key] = make_toy_bundle(Path(folder) / "bundle", **options)
    return _CACHE[key]


class FakeSession:
    """An InferenceSession double whose real providers we control."""

    def __init__(self, real, providers: list[str]) -> None:
        self.real, self._providers = real, providers

    def get_providers(self) -> list[str]:
        return self._providers

    def __getattr__(self, name: str):
        return getattr(self.real, name)

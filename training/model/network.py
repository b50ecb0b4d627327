"""The CoSA network (docs/method.md, "The network"): backbone, CAM head, auxiliary CAM head, LargeFOV decoder.

The online network and the assignment network are two instances of `CoSANetwork`;
`SegmentationStream` is the deployable part (backbone + decoder, and the CAM head's image-level class
logits beside the masks) that export and the SDK run.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cosa_sdk.errors import CosaModelError
from cosa_sdk.training.config_checks import cam_pool_problem
from cosa_sdk.training.model.backbones import BackboneFeatures, CNNBackbone, ViTBackbone, build_backbone
from cosa_sdk.training.model.detail import DetailRefiner

# the tensors a bundle's model.safetensors holds
STREAM_PREFIXES = ("backbone.", "decoder.", "detail.", "classifier.")


class CoSAOutput(NamedTuple):
    logits: torch.Tensor
    aux_logits: torch.Tensor
    features: torch.Tensor
    seg: torch.Tensor
    cam: torch.Tensor
    aux_cam: torch.Tensor


class LargeFOV(nn.Module):
    """DeepLab-LargeFOV head: two dilated 3x3 convs and a 1x1 classifier, all without bias."""

    def __init__(self, *, in_channels: int, num_outputs: int, channels: int = 512, dilation: int = 5) -> None:
        super().__init__()
        self.conv6 = nn.Conv2d(in_channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.conv7 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.conv8 = nn.Conv2d(channels, num_outputs, 1, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv8(F.relu(self.conv7(F.relu(self.conv6(features)))))


def image_logits(classifier: nn.Module, features: torch.Tensor, pool: str = "max") -> torch.Tensor:
    """Image-level class logits (N, C): the CAM head on the global pool of the features.

    "max" (the released head) rewards the single strongest location of each feature channel, so the CAMs it
    trains tend to mark an object's most telling part; "avg" scores the mean over the map (the original CAM
    recipe), which rewards every part of an object that carries evidence."""
    pooled = F.adaptive_max_pool2d(features, 1) if pool == "max" else F.adaptive_avg_pool2d(features, 1)
    return classifier(pooled).flatten(1)


def segment_logits(
    decoder: nn.Module, detail: DetailRefiner | None, feats: BackboneFeatures, images: torch.Tensor
) -> torch.Tensor:
    """Seg logits at the backbone's stride, or at stride 4 through the detail refiner when there is one."""
    coarse = decoder(feats.seg)
    return coarse if detail is None else detail(coarse, images)


def network_config(
    *,
    backbone: str,
    num_classes: int,
    aux_layer: int | None = None,
    decoder_channels: int = 512,
    dilation: int = 5,
    freeze_blocks: int = 0,
    backbone_kwargs: dict[str, Any] | None = None,
    detail_channels: int = 0,
    cam_pool: str = "max",
) -> dict[str, Any]:
    """The JSON-able architecture description that `CoSANetwork.from_config` rebuilds.

    `detail_channels` is written only when a refiner exists and `cam_pool` only when it is not the released
    "max", so configs of networks without them stay as they were (old ones lack the keys and mean 0, "max")."""
    problem = cam_pool_problem(cam_pool)
    if problem:
        raise CosaModelError(problem)
    config = {
        "backbone": backbone,
        "num_classes": int(num_classes),
        "aux_layer": aux_layer,
        "decoder_channels": int(decoder_channels),
        "dilation": int(dilation),
        "freeze_blocks": int(freeze_blocks),
        "backbone_kwargs": dict(backbone_kwargs or {}),
    }
    if detail_channels:
        config["detail_channels"] = int(detail_channels)
    if cam_pool != "max":
        config["cam_pool"] = cam_pool
    return config


class CoSANetwork(nn.Module):
    """Encoder + CAM head + aux CAM head + LargeFOV decoder with C+1 outputs (channel 0 = background).

    `num_classes` counts foreground classes (C). Image logits are the CAM head applied to the global
    max pool of the features (`cam_pool="avg"`: the mean); CAMs are the same 1x1 weights applied per pixel
    (no ReLU inside).
    `detail_channels` > 0 adds a `DetailRefiner`: the seg logits come out at stride 4 instead of the
    backbone's stride.
    """

    def __init__(
        self,
        *,
        backbone: str = "vit_base_patch16_224",
        num_classes: int = 20,
        aux_layer: int | None = None,
        decoder_channels: int = 512,
        dilation: int = 5,
        freeze_blocks: int = 0,
        backbone_weights: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        detail_channels: int = 0,
        cam_pool: str = "max",
    ) -> None:
        super().__init__()
        self.config = network_config(
            backbone=backbone,
            num_classes=num_classes,
            aux_layer=aux_layer,
            decoder_channels=decoder_channels,
            dilation=dilation,
            freeze_blocks=freeze_blocks,
            backbone_kwargs=backbone_kwargs,
            detail_channels=detail_channels,
            cam_pool=cam_pool,
        )
        self.backbone = build_backbone(
            backbone,
            weights=backbone_weights,
            aux_layer=aux_layer,
            freeze_blocks=freeze_blocks,
            **(backbone_kwargs or {}),
        )
        self.config["aux_layer"] = self._resolved_aux_layer()
        self.classifier = nn.Conv2d(self.backbone.final_channels, num_classes, 1, bias=False)
        self.aux_classifier = nn.Conv2d(self.backbone.aux_channels, num_classes, 1, bias=False)
        self.decoder = LargeFOV(
            in_channels=self.backbone.seg_channels,
            num_outputs=num_classes + 1,
            channels=decoder_channels,
            dilation=dilation,
        )
        self.detail = DetailRefiner(num_outputs=num_classes + 1, channels=detail_channels) if detail_channels else None

    def _resolved_aux_layer(self) -> int:
        if self.config["aux_layer"] is not None:
            return int(self.config["aux_layer"])
        return -3 if isinstance(self.backbone, ViTBackbone) else -2

    @property
    def num_classes(self) -> int:
        return self.config["num_classes"]

    @property
    def stride(self) -> int:
        return self.backbone.stride

    def model_config(self) -> dict[str, Any]:
        """JSON-able keyword arguments that rebuild this architecture (without pretrained weights)."""
        return copy.deepcopy(self.config)

    @classmethod
    def from_config(cls, config: dict[str, Any], **overrides: Any) -> CoSANetwork:
        return cls(**{**config, **overrides})

    @classmethod
    def from_train_config(cls, config: Any, *, num_classes: int) -> CoSANetwork:
        """The network a `TrainConfig` trains, with its pretrained weights, for `num_classes` foreground classes."""
        return cls(
            backbone=config.backbone,
            num_classes=num_classes,
            aux_layer=config.aux_layer,
            decoder_channels=config.decoder_channels,
            dilation=config.dilation,
            detail_channels=config.detail_channels,
            cam_pool=config.cam_pool,
            freeze_blocks=config.freeze_blocks,
            backbone_weights=config.backbone_weights,
            backbone_kwargs=config.backbone_kwargs,
        )

    def _seg(self, feats: BackboneFeatures, images: torch.Tensor) -> torch.Tensor:
        return segment_logits(self.decoder, self.detail, feats, images)

    def _heads(self, feats: BackboneFeatures, images: torch.Tensor) -> CoSAOutput:
        pool = self.config.get("cam_pool", "max")
        logits = image_logits(self.classifier, feats.final, pool)
        aux_logits = image_logits(self.aux_classifier, feats.aux, pool)
        return CoSAOutput(
            logits=logits,
            aux_logits=aux_logits,
            features=feats.final,
            seg=self._seg(feats, images),
            cam=self.classifier(feats.final),
            aux_cam=self.aux_classifier(feats.aux),
        )

    def forward(self, images: torch.Tensor) -> CoSAOutput:
        return self._heads(self.backbone(images), images)

    def forward_cams(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(images)
        return self.classifier(feats.final), self.aux_classifier(feats.aux)

    def forward_all_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cam, aux_cam, seg) at the backbone's stride: what the teacher's multi-scale fusion needs."""
        feats = self.backbone(images)
        return self.classifier(feats.final), self.aux_classifier(feats.aux), self._seg(feats, images)

    def forward_seg(self, images: torch.Tensor) -> torch.Tensor:
        return self._seg(self.backbone(images, with_aux=False), images)

    def seg_stream(self, *, with_class_scores: bool = False) -> SegmentationStream:
        """The deployable segmentation stream, sharing this network's backbone, decoder, detail refiner and CAM
        head modules.

        with_class_scores: forward returns (seg logits, image-level class logits) instead of the seg logits.
        """
        return SegmentationStream(
            backbone_module=self.backbone,
            decoder_module=self.decoder,
            detail_module=self.detail,
            classifier_module=self.classifier,
            config=self.config,
            with_class_scores=with_class_scores,
        )

    def seg_stream_state_dict(self) -> dict[str, torch.Tensor]:
        """The stream's tensors (backbone, decoder, detail refiner, CAM head), as `SegmentationStream` loads them."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(STREAM_PREFIXES)}


class SegmentationStream(nn.Module):
    """Backbone + LargeFOV decoder: images (N, 3, H, W) normalised -> logits (N, C+1, H, W).

    The logits are upsampled bilinearly (align_corners False) to the input size inside the module,
    so an exported graph hands the SDK full-resolution logits. The CAM head (`classifier`) rides along:
    with `with_class_scores=True` forward returns (logits, class logits (N, C)) from the same backbone
    pass, exactly `CoSAOutput.logits`. A stream built from modules without a classifier (or one whose
    weights were absent from an old bundle, `drop_classifier`) has none and only gives the logits.
    """

    def __init__(
        self,
        *,
        config: dict[str, Any],
        backbone_module: ViTBackbone | CNNBackbone | None = None,
        decoder_module: LargeFOV | None = None,
        detail_module: DetailRefiner | None = None,
        classifier_module: nn.Conv2d | None = None,
        with_class_scores: bool = False,
    ) -> None:
        super().__init__()
        self.config = copy.deepcopy(config)
        if backbone_module is None or decoder_module is None:
            donor = CoSANetwork.from_config(self.config)
            backbone_module, decoder_module, detail_module = donor.backbone, donor.decoder, donor.detail
            classifier_module = classifier_module if classifier_module is not None else donor.classifier
        self.backbone = backbone_module
        self.decoder = decoder_module
        self.detail = detail_module
        self.classifier = classifier_module
        self.with_class_scores = self._checked(with_class_scores)

    @classmethod
    def from_config(cls, config: dict[str, Any], *, with_class_scores: bool = False) -> SegmentationStream:
        """Rebuild the architecture from `CoSANetwork.model_config()`; load weights with `load_state_dict`."""
        return cls(config=config, with_class_scores=with_class_scores)

    @property
    def has_class_scores(self) -> bool:
        """Whether this stream holds the CAM head, so it can give image-level class logits."""
        return self.classifier is not None

    def _checked(self, with_class_scores: bool) -> bool:
        if with_class_scores and not self.has_class_scores:
            raise CosaModelError(
                "this segmentation stream has no classifier weights (a bundle exported before class scores), "
                "so it cannot give class scores; re-export the bundle with `cosa export`"
            )
        return bool(with_class_scores)

    def class_score_view(self, enabled: bool = True) -> SegmentationStream:
        """The same modules (shared, not copied, in the modes they are in) with `with_class_scores` = `enabled`."""
        view = SegmentationStream(
            config=self.config,
            backbone_module=self.backbone,
            decoder_module=self.decoder,
            detail_module=self.detail,
            classifier_module=self.classifier,
            with_class_scores=self._checked(enabled),
        )
        view.training = self.training
        return view

    def drop_classifier(self) -> None:
        """Forget the CAM head: what a stream loaded from a bundle without its weights must do."""
        self.classifier = None
        self.with_class_scores = False

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(images, with_aux=False)
        seg = segment_logits(self.decoder, self.detail, feats, images)
        logits = F.interpolate(seg, size=images.shape[-2:], mode="bilinear", align_corners=False)
        if not self.with_class_scores:
            return logits
        return logits, image_logits(self.classifier, feats.final, self.config.get("cam_pool", "max"))

"""ViT or CNN is read from the class timm builds, so a ViT with any name gets the ViT wrapper."""

from __future__ import annotations

import pytest

from cosa_sdk.errors import CosaConfigError
from cosa_sdk.training.model.backbones import CNNBackbone, ViTBackbone, backbone_family, build_backbone


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("vit_base_patch16_224.orig_in21k_ft_in1k", "vit"),
        ("deit_small_distilled_patch16_224", "vit"),  # a VisionTransformer subclass
        ("flexivit_small", "vit"),  # a VisionTransformer whose name has no vit_/deit_ prefix
        ("vit_small_patch14_dinov2", "vit"),
        ("resnet18", "cnn"),
        ("tf_efficientnet_lite0", "cnn"),
        ("convnext_atto", "cnn"),
    ],
)
def test_family_comes_from_the_model_class(name: str, family: str) -> None:
    assert backbone_family(name) == family


@pytest.mark.parametrize(("name", "kind"), [("eva02_tiny_patch14_224", "Eva"), ("beit_base_patch16_224", "Beit")])
def test_other_transformers_are_refused_not_built_as_cnns(name: str, kind: str) -> None:
    with pytest.raises(CosaConfigError, match=rf"{name}.*timm {kind}.*VisionTransformer"):
        backbone_family(name)
    with pytest.raises(CosaConfigError, match=kind):
        build_backbone(name)


def test_unknown_names_say_where_to_look() -> None:
    with pytest.raises(CosaConfigError, match=r"timm.list_models\(\)"):
        backbone_family("vit_does_not_exist")


def test_a_vit_without_the_usual_prefix_gets_the_vit_wrapper() -> None:
    small = {"embed_dim": 48, "depth": 3, "num_heads": 2}
    assert isinstance(build_backbone("flexivit_small", **small), ViTBackbone)
    assert isinstance(build_backbone("resnet18"), CNNBackbone)

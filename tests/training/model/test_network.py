"""The CoSA network across backbone families: one base tester, one subclass per variant."""

from __future__ import annotations

import logging

import pytest

torch = pytest.importorskip("torch")

from cosa_sdk.errors import CosaConfigError, CosaModelError  # noqa: E402
from cosa_sdk.training.model.network import CoSANetwork, SegmentationStream  # noqa: E402

NUM_CLASSES = 3


class BaseNetworkTester:
    backbone: str = ""
    input_size: tuple[int, int] = (64, 64)
    stride: int = 16
    seg_stride: int | None = None  # the seg logits' stride when it is not the backbone's (a detail refiner)
    extra: dict = {}  # noqa: RUF012

    @pytest.fixture(scope="class")
    def network(self) -> CoSANetwork:
        torch.manual_seed(0)
        return CoSANetwork(backbone=self.backbone, num_classes=NUM_CLASSES, decoder_channels=32, **self.extra).eval()

    def images(self, batch: int = 2, size: tuple[int, int] | None = None) -> torch.Tensor:
        generator = torch.Generator().manual_seed(1)
        return torch.randn(batch, 3, *(size or self.input_size), generator=generator)

    def test_output_shapes(self, network: CoSANetwork) -> None:
        with torch.no_grad():
            out = network(self.images())
        h, w = (s // self.stride for s in self.input_size)
        assert out.logits.shape == (2, NUM_CLASSES)
        assert out.aux_logits.shape == (2, NUM_CLASSES)
        assert out.cam.shape == (2, NUM_CLASSES, h, w)
        assert out.aux_cam.shape == (2, NUM_CLASSES, h, w)
        seg_stride = self.seg_stride or self.stride
        seg_h, seg_w = (-(-s // seg_stride) for s in self.input_size)
        assert out.seg.shape == (2, NUM_CLASSES + 1, seg_h, seg_w)

    def test_logits_are_cam_head_on_pooled_features(self, network: CoSANetwork) -> None:
        """Max pool as released; with `cam_pool="avg"` the logits are the CAMs' spatial means (the head is linear)."""
        with torch.no_grad():
            out = network(self.images())
            mean = self.extra.get("cam_pool") == "avg"
            pooled = out.features.mean(dim=(2, 3)) if mean else out.features.amax(dim=(2, 3))
            expected = pooled @ network.classifier.weight.flatten(1).T
            stream = network.seg_stream().class_score_view().eval()
            _, scores = stream(self.images())
        torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(scores, out.logits)  # what export and the SDK's drop_absent read
        if mean:
            torch.testing.assert_close(out.logits, out.cam.mean(dim=(2, 3)), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(out.aux_logits, out.aux_cam.mean(dim=(2, 3)), rtol=1e-4, atol=1e-5)

    def test_heads_have_no_bias(self, network: CoSANetwork) -> None:
        assert network.classifier.bias is None
        assert network.aux_classifier.bias is None
        assert all(conv.bias is None for conv in (network.decoder.conv6, network.decoder.conv7, network.decoder.conv8))
        assert network.decoder.conv6.dilation == (5, 5)

    def test_seg_stream_matches_network_and_rebuilds_from_config(self, network: CoSANetwork) -> None:
        images = self.images(batch=1, size=(self.input_size[0] + 7, self.input_size[1] - 3))
        stream = network.seg_stream().eval()
        rebuilt = SegmentationStream.from_config(network.model_config()).eval()
        rebuilt.load_state_dict(network.seg_stream_state_dict())
        with torch.no_grad():
            logits = stream(images)
            seg = network.forward_seg(images)
            again = rebuilt(images)
        assert logits.shape == (1, NUM_CLASSES + 1, *images.shape[-2:])
        expected = torch.nn.functional.interpolate(seg, size=images.shape[-2:], mode="bilinear", align_corners=False)
        torch.testing.assert_close(logits, expected)
        torch.testing.assert_close(again, logits)

    def test_forward_all_maps_agrees_with_forward(self, network: CoSANetwork) -> None:
        images = self.images()
        with torch.no_grad():
            out = network(images)
            cam, aux_cam, seg = network.forward_all_maps(images)
        torch.testing.assert_close(cam, out.cam)
        torch.testing.assert_close(aux_cam, out.aux_cam)
        torch.testing.assert_close(seg, out.seg)


class TestViTNetwork(BaseNetworkTester):
    backbone = "vit_tiny_patch16_224"

    def test_224_features_equal_timm(self, network: CoSANetwork) -> None:
        images = self.images(size=(224, 224))
        with torch.no_grad():
            ours = network.backbone(images).final.flatten(2).transpose(1, 2)
            theirs = network.backbone.model.forward_features(images)[:, 1:]
        torch.testing.assert_close(ours, theirs)

    def test_pos_embed_resize_is_bicubic_without_antialias_and_frozen(self, network: CoSANetwork) -> None:
        vit = network.backbone.model
        grid = vit.pos_embed[:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
        expected = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False)
        resized = network.backbone.resized_pos_embed(4, 4)
        torch.testing.assert_close(resized[:, 1:], expected.flatten(2).transpose(1, 2))
        torch.testing.assert_close(resized[:, :1], vit.pos_embed[:, :1])
        assert not vit.pos_embed.requires_grad

    def test_fixed_pos_embed_gives_same_logits(self, network: CoSANetwork) -> None:
        images = self.images(batch=1)
        with torch.no_grad():
            dynamic = network.forward_seg(images)
            network.backbone.freeze_pos_embed_for(self.input_size)
            fixed = network.forward_seg(images)
            network.backbone.freeze_pos_embed_for(None)
        torch.testing.assert_close(fixed, dynamic)

    def test_aux_layer_out_of_range_is_a_config_error(self) -> None:
        with pytest.raises(CosaConfigError, match="aux_layer"):
            CoSANetwork(backbone=self.backbone, num_classes=2, aux_layer=40)

    def test_freeze_blocks(self) -> None:
        net = CoSANetwork(backbone=self.backbone, num_classes=2, freeze_blocks=2, decoder_channels=8)
        vit = net.backbone.model
        assert not any(p.requires_grad for p in vit.blocks[1].parameters())
        assert all(p.requires_grad for p in vit.blocks[2].parameters())

    def test_aux_layer_inside_the_frozen_blocks_is_named_in_a_warning(self, caplog) -> None:
        depth = len(CoSANetwork(backbone=self.backbone, num_classes=2, decoder_channels=8).backbone.model.blocks)
        with caplog.at_level(logging.WARNING, logger="cosa_sdk.training.model.backbones"):
            CoSANetwork(backbone=self.backbone, num_classes=2, decoder_channels=8, freeze_blocks=depth - 1)
        assert "aux_layer=-1 would put it on the first trained block" in caplog.text
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="cosa_sdk.training.model.backbones"):
            CoSANetwork(
                backbone=self.backbone, num_classes=2, decoder_channels=8, freeze_blocks=depth - 1, aux_layer=-1
            )
        assert "frozen" not in caplog.text


class TestCNNNetwork(BaseNetworkTester):
    backbone = "tf_efficientnet_lite0"


class TestPatch14ViT(BaseNetworkTester):
    backbone = "vit_small_patch14_dinov2"
    input_size = (56, 70)
    stride = 14
    extra = {"freeze_blocks": 8}  # noqa: RUF012


class TestDetailRefinedViT(BaseNetworkTester):
    backbone = "vit_small_patch14_dinov2"
    input_size = (56, 70)
    stride = 14
    seg_stride = 4
    extra = {"freeze_blocks": 8, "detail_channels": 16}  # noqa: RUF012

    def test_a_fresh_refiner_returns_the_coarse_logits_upsampled(self) -> None:
        torch.manual_seed(0)
        plain = CoSANetwork(backbone=self.backbone, num_classes=NUM_CLASSES, decoder_channels=32, freeze_blocks=8)
        torch.manual_seed(0)
        refined = CoSANetwork(backbone=self.backbone, num_classes=NUM_CLASSES, decoder_channels=32, **self.extra)
        images = self.images(batch=1)
        with torch.no_grad():
            coarse, seg = plain.eval().forward_seg(images), refined.eval().forward_seg(images)
        expected = torch.nn.functional.interpolate(coarse, size=seg.shape[-2:], mode="bilinear", align_corners=False)
        torch.testing.assert_close(seg, expected)

    def test_the_refiner_learns_and_travels_with_the_stream(self, network: CoSANetwork) -> None:
        trained = CoSANetwork.from_config(network.model_config())
        trained.load_state_dict(network.state_dict())
        images, target = self.images(batch=1), torch.zeros(1, 14, 18, dtype=torch.long)
        target[:, 4:9, 3:5] = 2  # a bar two stride-4 cells wide: thinner than one 14 px patch
        optimizer = torch.optim.Adam(trained.detail.parameters(), lr=1e-2)
        for _ in range(30):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(trained.forward_seg(images), target).backward()
            optimizer.step()
        assert float(trained.detail.correction.weight.detach().abs().sum()) > 0
        assert (trained.forward_seg(images).argmax(1) == target).float().mean() > 0.95
        assert any(k.startswith("detail.") for k in trained.seg_stream_state_dict())
        rebuilt = SegmentationStream.from_config(trained.model_config()).eval()
        rebuilt.load_state_dict(trained.seg_stream_state_dict())
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(images), trained.eval().seg_stream()(images))

    def test_configs_without_a_refiner_do_not_name_one(self) -> None:
        plain = CoSANetwork(backbone=self.backbone, num_classes=NUM_CLASSES, decoder_channels=32, freeze_blocks=8)
        assert "detail_channels" not in plain.model_config()
        assert plain.detail is None
        assert not any(k.startswith("detail.") for k in plain.seg_stream_state_dict())


class TestAvgPooledViT(BaseNetworkTester):
    backbone = "vit_small_patch14_dinov2"
    input_size = (56, 70)
    stride = 14
    extra = {"freeze_blocks": 8, "cam_pool": "avg"}  # noqa: RUF012

    def test_the_pooling_travels_with_the_config_and_old_configs_mean_max(self, network: CoSANetwork) -> None:
        assert network.model_config()["cam_pool"] == "avg"
        assert "cam_pool" not in CoSANetwork(backbone=self.backbone, num_classes=NUM_CLASSES).model_config()
        with pytest.raises(CosaModelError, match="cam_pool must be 'max'"):
            CoSANetwork.from_config({**network.model_config(), "cam_pool": "mean"})


def test_detail_channels_must_be_zero_or_an_even_width() -> None:
    from cosa_sdk.training.config import TrainConfig

    assert TrainConfig(detail_channels=32).detail_channels == 32
    for bad in (-2, 3, 1.5, True):
        with pytest.raises(CosaConfigError, match="detail_channels"):
            TrainConfig(detail_channels=bad)


def test_cam_pool_is_max_or_avg_and_older_runs_read_as_max() -> None:
    from cosa_sdk.training.config import TrainConfig

    assert TrainConfig().cam_pool == "max"
    assert (
        TrainConfig.from_dict({k: v for k, v in TrainConfig().to_dict().items() if k != "cam_pool"}).cam_pool == "max"
    )
    with pytest.raises(CosaConfigError, match="cam_pool must be 'max'"):
        TrainConfig(cam_pool="gap")


def test_unknown_backbone_is_a_config_error() -> None:
    with pytest.raises(CosaConfigError, match="timm backbone"):
        CoSANetwork(backbone="no_such_model_xyz", num_classes=2)


def test_missing_weight_file_is_a_config_error(tmp_path) -> None:
    with pytest.raises(CosaConfigError, match="not found"):
        CoSANetwork(backbone="vit_tiny_patch16_224", num_classes=2, backbone_weights=str(tmp_path / "nope.pth"))


def test_local_weight_file_is_loaded(tmp_path) -> None:
    import timm

    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    net = CoSANetwork(backbone="vit_tiny_patch16_224", num_classes=2, backbone_weights=str(path), decoder_channels=8)
    torch.testing.assert_close(net.backbone.model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)

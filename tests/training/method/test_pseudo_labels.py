"""Teacher fusion, CAM pseudo-labels (CPL) and segmentation pseudo-labels (SPL)."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cosa_sdk.errors import CosaConfigError, CosaInputError
from cosa_sdk.training.config import TrainConfig, apply_overrides, preset
from cosa_sdk.training.method.pseudo_labels import (
    cam_pseudo_label,
    channel_argmax,
    normalize_cams,
    segmentation_pseudo_label,
    teacher_fusion,
    valid_cams,
)


class ToyNet(nn.Module):
    """Stride-4 toy network with CAM, aux CAM and seg heads; records the batch sizes it sees."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 6, 4, stride=4)
        self.cam = nn.Conv2d(6, num_classes, 1)
        self.aux = nn.Conv2d(6, num_classes, 1)
        self.seg = nn.Conv2d(6, num_classes + 1, 3, padding=1)
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.batches.append(x.shape[0])
        f = torch.tanh(self.stem(x))
        return self.cam(f), self.aux(f), self.seg(f)


def _slow_fusion(net: ToyNet, image: torch.Tensor, scales: tuple[float, ...], aux_last: bool):
    """One image, one view at a time, written straight from the spec."""
    h, w = image.shape[-2:]
    cam_sum, aux_list, seg_sum = 0, [], 0
    for s in scales:
        x = F.interpolate(image, size=(int(s * h), int(s * w)), mode="bilinear", align_corners=False)
        views = []
        for flipped in (False, True):
            out = net(x.flip(-1) if flipped else x)
            out = [F.interpolate(o, size=(h, w), mode="bilinear", align_corners=False) for o in out]
            views.append([o.flip(-1) if flipped else o for o in out])
        cam_sum = cam_sum + torch.relu(torch.maximum(views[0][0], views[1][0]))
        aux = torch.relu(torch.maximum(views[0][1], views[1][1]))
        aux_list = [aux] if aux_last else [*aux_list, aux]
        seg_sum = seg_sum + views[0][2] + views[1][2]

    def norm(m: torch.Tensor) -> torch.Tensor:
        m = m - m.amin(dim=(2, 3), keepdim=True)
        return m / (m.amax(dim=(2, 3), keepdim=True) + 1e-5)

    return norm(cam_sum), norm(sum(aux_list)), seg_sum


@pytest.mark.parametrize("aux_last", [True, False])
def test_teacher_fusion_matches_slow_per_sample_reference(aux_last: bool) -> None:
    net = ToyNet()
    images = torch.randn(3, 3, 16, 24)
    scales = (1.0, 0.5, 1.5)
    with torch.no_grad():
        fused = teacher_fusion(net, images, scales=scales, aux_last_scale_only=aux_last)
        assert net.batches == [6, 6, 6]  # one batched forward of 2B images per scale
        for i in range(3):
            cam, aux, seg = _slow_fusion(net, images[i : i + 1], scales, aux_last)
            torch.testing.assert_close(fused.cam[i : i + 1], cam, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(fused.aux_cam[i : i + 1], aux, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(fused.seg[i : i + 1], seg, atol=1e-4, rtol=1e-5)
    assert fused.cam.shape == (3, 3, 16, 24) and fused.seg.shape == (3, 4, 16, 24)
    assert float(fused.cam.min()) >= 0 and float(fused.cam.max()) < 1


def test_teacher_fusion_without_flip_runs_b_images_and_fuses_the_plain_views() -> None:
    net = ToyNet()
    images = torch.randn(2, 3, 16, 20)
    scales = (1.0, 0.5)
    with torch.no_grad():
        fused = teacher_fusion(net, images, scales=scales, flip=False)
        assert net.batches == [2, 2]  # half the teacher's work: no mirrored copies
        cams, segs = [], []
        for s in scales:
            x = F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False)
            cam, _, seg = (F.interpolate(o, size=(16, 20), mode="bilinear", align_corners=False) for o in net(x))
            cams.append(torch.relu(cam))
            segs.append(seg)
    torch.testing.assert_close(fused.cam, normalize_cams(sum(cams)))
    torch.testing.assert_close(fused.seg, sum(segs))
    assert not torch.allclose(fused.cam, teacher_fusion(net, images, scales=scales).cam)


def test_teacher_fusion_aux_bug_flag_changes_the_aux_cam_only() -> None:
    net, images = ToyNet(), torch.randn(2, 3, 16, 16)
    buggy = teacher_fusion(net, images, aux_last_scale_only=True)
    fixed = teacher_fusion(net, images, aux_last_scale_only=False)
    torch.testing.assert_close(buggy.cam, fixed.cam)
    torch.testing.assert_close(buggy.seg, fixed.seg)
    assert not torch.allclose(buggy.aux_cam, fixed.aux_cam)


def test_teacher_fusion_accepts_seg_only_forward_for_tta() -> None:
    net = ToyNet()
    images = torch.randn(2, 3, 16, 16)
    scales = (1.0, 0.5, 1.5, 0.75, 1.25)
    out = teacher_fusion(lambda x: net(x)[2], images, scales=scales)
    full = teacher_fusion(net, images, scales=scales)
    assert out.cam is None and out.aux_cam is None
    torch.testing.assert_close(out.seg, full.seg)


class NamedOutput(NamedTuple):
    logits: torch.Tensor
    seg: torch.Tensor
    cam: torch.Tensor
    aux_cam: torch.Tensor


def test_teacher_fusion_accepts_an_output_object_with_named_maps() -> None:
    net, images = ToyNet(), torch.randn(2, 3, 16, 16)
    named = teacher_fusion(lambda x: NamedOutput(x.mean((1, 2, 3)), net(x)[2], *net(x)[:2]), images)
    plain = teacher_fusion(net, images)
    for a, b in zip(named, plain):
        torch.testing.assert_close(a, b)


def test_teacher_fusion_rejects_bad_forward_and_input() -> None:
    with pytest.raises(CosaInputError, match="must return"):
        teacher_fusion(lambda x: {"seg": x}, torch.randn(1, 3, 8, 8))
    with pytest.raises(CosaInputError, match="B x C x H x W"):
        teacher_fusion(ToyNet(), torch.randn(3, 8, 8))


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ("pseudo_scales=1.0,-2", "each scale must be in \\(0, 4\\]"),
        ("pseudo_scales=0", "each scale must be in"),
        ("pseudo_scales=1.0,8", "each scale must be in"),
        ("pseudo_scales=", "give at least one scale"),
        ("pseudo_flip=maybe", "pseudo_flip"),
    ],
)
def test_a_teacher_training_cannot_run_is_refused_before_any_image(override: str, problem: str) -> None:
    with pytest.raises(CosaConfigError, match=problem):
        apply_overrides(preset("cpu"), [override])


def test_the_teacher_check_also_guards_saved_configs_and_keeps_good_ones() -> None:
    with pytest.raises(CosaConfigError, match="pseudo_scales"):
        TrainConfig.from_dict({**preset("voc").to_dict(), "pseudo_scales": [1.0, True]})
    with pytest.raises(CosaConfigError, match="pseudo_flip must be true or false"):
        TrainConfig.from_dict({**preset("voc").to_dict(), "pseudo_flip": "yes"})
    config = apply_overrides(preset("cpu"), ["pseudo_scales=1.0,0.5,4", "pseudo_flip=on"])
    assert config.pseudo_scales == (1.0, 0.5, 4.0) and config.pseudo_flip is True


def test_normalize_cams_maps_every_class_to_unit_range() -> None:
    cams = torch.randn(2, 3, 5, 7) * 4 + 2
    out = normalize_cams(cams)
    assert torch.allclose(out.amin(dim=(2, 3)), torch.zeros(2, 3))
    assert torch.all(out.amax(dim=(2, 3)) < 1) and torch.all(out.amax(dim=(2, 3)) > 0.999)


def _cams_with_levels() -> torch.Tensor:
    """1 x 2 x 8 x 8: class 1 at 0.9 on the left, class 2 at 0.5 in the middle, ~0 on the right."""
    cams = torch.zeros(1, 2, 8, 8)
    cams[0, 0, :, :3] = 0.9
    cams[0, 1, :, 3:5] = 0.5
    return cams


def test_cpl_splits_foreground_ignore_and_background_without_downscale() -> None:
    cpl = cam_pseudo_label(_cams_with_levels(), torch.tensor([[1.0, 1.0]]), t_high=0.7, t_low=0.3, downscale=1)
    assert cpl.dtype == torch.long and cpl.shape == (1, 8, 8)
    assert torch.all(cpl[0, :, :3] == 1)
    assert torch.all(cpl[0, :, 3:5] == 255)
    assert torch.all(cpl[0, :, 5:] == 0)


def test_cpl_never_labels_absent_classes_and_respects_boxes() -> None:
    cams = torch.rand(2, 3, 8, 8)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    boxes = torch.tensor([[0, 8, 0, 6], [2, 7, 1, 8]])
    cpl = cam_pseudo_label(cams * labels[:, :, None, None], labels, t_high=0.6, t_low=0.2, img_box=boxes)
    assert set(cpl[0].unique().tolist()) <= {0, 1, 3, 255}
    assert set(cpl[1].unique().tolist()) <= {0, 2, 255}
    assert torch.all(cpl[0, :, 6:] == 255)
    assert torch.all(cpl[1, :2] == 255) and torch.all(cpl[1, 7:] == 255) and torch.all(cpl[1, :, :1] == 255)
    single = cam_pseudo_label(
        cams[:1] * labels[:1, :, None, None], labels[:1], t_high=0.6, t_low=0.2, img_box=[0, 8, 0, 6]
    )
    torch.testing.assert_close(single, cpl[:1])


def test_cpl_rejects_wrong_label_and_box_shapes() -> None:
    cams = torch.rand(2, 3, 8, 8)
    with pytest.raises(CosaInputError, match="cls_labels"):
        cam_pseudo_label(cams, torch.ones(2, 4), t_high=0.7, t_low=0.3)
    with pytest.raises(CosaInputError, match="img_box"):
        cam_pseudo_label(cams, torch.ones(2, 3), t_high=0.7, t_low=0.3, img_box=torch.zeros(3, 4))


def test_spl_zeroes_absent_classes_and_sharpens_with_temperature() -> None:
    logits = torch.randn(2, 4, 3, 3)
    labels = torch.tensor([[1, 0, 0], [0, 1, 1]])
    probs = segmentation_pseudo_label(logits, labels, temperature=0.01)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 3, 3))
    assert torch.all(probs[0, 2:] == 0) and torch.all(probs[1, 1] == 0)
    soft = segmentation_pseudo_label(logits, labels, temperature=10.0)
    assert probs.amax(dim=1).mean() > soft.amax(dim=1).mean()
    with pytest.raises(CosaInputError, match="temperature"):
        segmentation_pseudo_label(logits, labels, temperature=0.0)


def test_valid_cams_zeroes_absent_classes() -> None:
    cams = torch.rand(1, 3, 4, 4)
    out = valid_cams(cams, torch.tensor([[0.0, 1.0, 0.0]]))
    assert torch.all(out[0, 0] == 0) and torch.all(out[0, 2] == 0)
    torch.testing.assert_close(out[0, 1], cams[0, 1])


@pytest.mark.parametrize("dim", [0, 1, 2, 3])
def test_channel_argmax_matches_torch_argmax_including_ties(dim: int) -> None:
    torch.manual_seed(0)
    maps = torch.randint(0, 3, (2, 4, 5, 6)).float()  # few values, so most positions hold ties
    assert torch.equal(channel_argmax(maps, dim), maps.argmax(dim=dim))
    smooth = torch.randn(2, 4, 5, 6)
    assert torch.equal(channel_argmax(smooth, dim), smooth.argmax(dim=dim))

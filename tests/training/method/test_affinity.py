"""Pixel-adaptive affinity refinement of CAMs (`refine_cams`) and its `cam_refine` switch in the pseudo-labels."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cosa_sdk.errors import CosaConfigError, CosaInputError
from cosa_sdk.training.config import ADDED_KEYS, PRESETS, TrainConfig, apply_overrides, preset
from cosa_sdk.training.method.affinity import neighbour_offsets, refine_cams
from cosa_sdk.training.method.pseudo_labels import cam_pseudo_label, teacher_fusion, valid_cams
from cosa_sdk.training.method.step import CoSALosses

SIZE, EDGE, LEAK_END = 64, 32, 40


def two_colour_image(batch: int = 1) -> torch.Tensor:
    """Normalised-looking image: one colour left of column EDGE, another right of it, light noise."""
    g = torch.Generator().manual_seed(0)
    image = torch.empty(batch, 3, SIZE, SIZE)
    image[..., :EDGE] = torch.tensor([-1.0, 0.5, 0.2])[:, None, None]
    image[..., EDGE:] = torch.tensor([1.0, -0.5, 0.8])[:, None, None]
    return image + 0.05 * torch.randn(image.shape, generator=g)


def leaking_cam(batch: int = 1) -> torch.Tensor:
    """A CAM of the left-hand object whose soft edge sits at LEAK_END, 8 columns into the right-hand region."""
    columns = torch.arange(SIZE, dtype=torch.float32)
    return torch.sigmoid((LEAK_END - columns) / 2).expand(batch, 1, SIZE, SIZE).clone()


def test_the_mass_that_leaked_across_a_colour_edge_shrinks_and_the_object_keeps_its_own():
    image, cam = two_colour_image(), leaking_cam()
    refined = refine_cams(image, cam)
    wrong_before, wrong_after = cam[..., EDGE:].sum(), refined[..., EDGE:].sum()
    assert wrong_after < 0.6 * wrong_before
    assert refined[..., EDGE:LEAK_END].mean() < 0.3 < 0.8 < cam[..., EDGE:LEAK_END].mean()
    assert refined[..., :EDGE].min() > 0.95  # the object side is not eroded
    assert refined[..., :EDGE].sum() >= 0.99 * cam[..., :EDGE].sum()


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_a_constant_map_stays_constant(scale):
    image = torch.randn(2, 3, 40, 48, generator=torch.Generator().manual_seed(1))
    cams = torch.full((2, 3, 40, 48), 0.37)
    assert torch.allclose(refine_cams(image, cams, scale=scale), cams, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_has_the_shape_and_dtype_of_the_cams(dtype):
    image = torch.randn(2, 3, 30, 36)
    cams = torch.rand(2, 5, 30, 36, dtype=dtype)
    out = refine_cams(image, cams, iterations=2, scale=0.5)
    assert out.shape == cams.shape and out.dtype == dtype
    assert not out.requires_grad


def test_zero_iterations_at_full_scale_return_the_maps():
    cams = torch.rand(1, 2, 20, 20)
    assert torch.equal(refine_cams(torch.randn(1, 3, 20, 20), cams, iterations=0), cams)


def test_half_scale_refinement_is_close_to_full_scale():
    image, cam = two_colour_image(), leaking_cam()
    full, half = refine_cams(image, cam), refine_cams(image, cam, scale=0.5)
    assert (full - half).abs().mean() < 0.05
    away = torch.ones(SIZE, dtype=torch.bool)
    away[EDGE - 2 : EDGE + 2] = False  # the grown-back map blurs the edge by a pixel or two
    assert torch.equal(full[..., away] > 0.5, half[..., away] > 0.5)


def test_the_neighbourhood_is_eight_neighbours_per_dilation():
    offsets = neighbour_offsets((1, 3))
    assert len(offsets) == 16 and len(set(offsets)) == 16
    assert (0, 0) not in offsets and (-3, 3) in offsets and (0, -1) in offsets


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scale": 0.0}, "scale"),
        ({"scale": 1.5}, "scale"),
        ({"iterations": -1}, "iterations"),
        ({"dilations": ()}, "dilations"),
        ({"dilations": (1, 0)}, "dilations"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(CosaInputError, match=message):
        refine_cams(torch.randn(1, 3, 8, 8), torch.rand(1, 2, 8, 8), **kwargs)


def test_cams_and_image_of_different_sizes_are_refused():
    with pytest.raises(CosaInputError, match="resize the CAMs"):
        refine_cams(torch.randn(1, 3, 8, 8), torch.rand(1, 2, 4, 4))


class FixedTeacher:
    """An assignment network whose maps are fixed: class 0 leaks across the image's colour edge, class 1 is
    absent; the aux CAM is the same map."""

    def __init__(self, batch: int) -> None:
        g = torch.Generator().manual_seed(2)
        cam = torch.cat([leaking_cam(batch), torch.rand(batch, 1, SIZE, SIZE, generator=g)], dim=1)
        self.maps = (cam, cam.clone(), torch.randn(batch, 3, SIZE, SIZE, generator=g))

    def forward_all_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.maps


def _pseudo_labels(cam_refine: bool, **overrides):
    config = dataclasses.replace(preset("tiny"), cam_refine=cam_refine, **overrides)
    teacher, weak = FixedTeacher(2), two_colour_image(2)
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    box = torch.tensor([[0, SIZE, 0, SIZE], [0, SIZE, 0, SIZE - 4]])
    losses = CoSALosses(config, grid_size=4, batch_size=2)
    return config, teacher, weak, labels, box, losses.make_pseudo_labels(teacher, weak, labels, box)


def test_with_the_switch_off_the_pseudo_labels_are_the_released_ones():
    config, teacher, weak, labels, box, pseudo = _pseudo_labels(False)
    fused = teacher_fusion(teacher.forward_all_maps, weak, scales=config.pseudo_scales, flip=config.pseudo_flip)
    main, aux = valid_cams(fused.cam, labels), valid_cams(fused.aux_cam, labels)
    assert torch.equal(pseudo.valid_cam, main)
    assert torch.equal(
        pseudo.cpl, cam_pseudo_label(main, labels, t_high=config.t_high, t_low=config.t_low, img_box=box)
    )
    assert torch.equal(
        pseudo.cpl_aux, cam_pseudo_label(aux, labels, t_high=config.aux_t_high, t_low=config.aux_t_low, img_box=box)
    )


def test_with_the_switch_on_the_cpls_follow_the_colour_edge():
    off = _pseudo_labels(False)[-1]
    on = _pseudo_labels(True)[-1]
    for before, after in ((off.cpl, on.cpl), (off.cpl_aux, on.cpl_aux)):
        assert not torch.equal(before, after)
        assert (before[..., EDGE:LEAK_END] == 1).float().mean() > 0.5
        assert (after[..., EDGE:] == 1).sum() == 0
        assert (after[..., : EDGE - 2] == 1).all()
    assert (on.cpl[1, :, SIZE - 4 :] == 255).all()  # padding stays ignored
    assert on.valid_cam[:, 1].abs().max() == 0  # the absent class stays zero
    assert torch.allclose(on.valid_cam[:, 0].amax(dim=(1, 2)), torch.ones(2), atol=1e-4)  # renormalised
    assert torch.equal(on.spl, off.spl)


def test_the_switch_composes_with_dynamic_thresholds():
    pseudo = _pseudo_labels(True, dynamic_threshold=True)[-1]
    assert (pseudo.cpl[..., EDGE:] == 1).sum() == 0


def test_refinement_is_off_in_every_preset_and_in_older_runs():
    assert not any(config.cam_refine for config in PRESETS.values())
    assert {"cam_refine", "cam_refine_iters", "cam_refine_scale", "cam_refine_dilations"} <= set(ADDED_KEYS)
    old = {k: v for k, v in preset("voc").to_dict().items() if not k.startswith("cam_refine")}
    assert TrainConfig.from_dict(old).cam_refine is False


def test_good_overrides_are_read():
    config = apply_overrides(preset("tiny"), ["cam_refine=on", "cam_refine_iters=5", "cam_refine_dilations=1,2,4"])
    assert config.cam_refine is True and config.cam_refine_iters == 5 and config.cam_refine_dilations == (1, 2, 4)
    assert TrainConfig.from_dict({**config.to_dict()}) == config  # the dilations survive a JSON round trip


def test_inert_refinement_keys_do_not_block_a_resume():
    base = preset("tiny")
    assert base.differences(dataclasses.replace(base, cam_refine_iters=3)) == {}
    assert "cam_refine_iters" in dataclasses.replace(base, cam_refine=True).differences(
        dataclasses.replace(base, cam_refine=True, cam_refine_iters=3)
    )


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("cam_refine_scale=0", "cam_refine_scale"),
        ("cam_refine_scale=1.5", "cam_refine_scale"),
        ("cam_refine_iters=0", "cam_refine_iters"),
        ("cam_refine_iters=2.5", "cam_refine_iters"),
        ("cam_refine_dilations=0,2", "cam_refine_dilations"),
        ("cam_refine=maybe", "cam_refine"),
    ],
)
def test_bad_overrides_are_refused_with_the_key_named(override, key):
    with pytest.raises(CosaConfigError, match=key):
        apply_overrides(preset("voc"), [override])


@pytest.mark.parametrize(
    "values",
    [{"cam_refine": "yes"}, {"cam_refine_dilations": []}, {"cam_refine_scale": True}, {"cam_refine_iters": "10"}],
)
def test_a_saved_config_with_bad_refinement_values_is_refused(values):
    with pytest.raises(CosaConfigError, match="cam_refine"):
        TrainConfig.from_dict({**preset("voc").to_dict(), **values})

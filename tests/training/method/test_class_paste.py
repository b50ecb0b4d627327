"""Class paste: one class's pseudo-labelled pixels moved into another image of the batch, with its label."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")

from cosa_sdk.errors import CosaConfigError  # noqa: E402
from cosa_sdk.training.config import TrainConfig  # noqa: E402
from cosa_sdk.training.method.class_paste import paste_classes, paste_generator  # noqa: E402
from cosa_sdk.training.method.losses import classification_loss  # noqa: E402
from cosa_sdk.training.method.step import CoSALosses, PseudoLabels  # noqa: E402

from .test_step import _setup  # noqa: E402


def _batch() -> tuple[torch.Tensor, torch.Tensor, PseudoLabels]:
    """Three 8 x 8 images: image 0 holds class 0 (top rows), image 1 class 2 (left columns), image 2 nothing."""
    strong = torch.arange(3 * 3 * 64, dtype=torch.float32).reshape(3, 3, 8, 8)
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    cpl = torch.zeros(3, 8, 8, dtype=torch.long)
    cpl[0, :2] = 1
    cpl[1, :, :3] = 3
    cpl[:, 7, 7] = 255
    spl = torch.zeros(3, 4, 8, 8)
    spl[:, 0] = 1.0
    valid = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return strong, labels, PseudoLabels(cpl=cpl, cpl_aux=cpl.clone(), spl=spl, valid_cam=valid)


def test_every_chosen_image_gets_its_sources_class_pixels_and_label():
    strong, labels, pseudo = _batch()
    before = [t.clone() for t in (strong, labels, pseudo.cpl, pseudo.spl)]
    generator = paste_generator(seed=0, step=7)
    shift = int(torch.randint(1, 3, (1,), generator=paste_generator(seed=0, step=7)))
    out, new_labels, mixed, count = paste_classes(strong, labels, pseudo, prob=1.0, generator=generator)
    sources = {target: (target + shift) % 3 for target in range(3)}
    expected = sum(1 for source in sources.values() if source != 2)  # image 2 has no class to give
    assert count == expected
    for target, source in sources.items():
        if source == 2:
            assert torch.equal(out[target], strong[target]) and torch.equal(new_labels[target], labels[target])
            continue
        cls = int(torch.nonzero(labels[source])[0])
        region = pseudo.cpl[source] == cls + 1
        assert torch.equal(out[target][:, region], strong[source][:, region])
        assert torch.equal(out[target][:, ~region], strong[target][:, ~region])
        assert new_labels[target, cls] == 1
        assert torch.equal(new_labels[target] - labels[target], torch.eye(3)[cls] * (1 - labels[target, cls]))
        assert (mixed.cpl[target][region] == cls + 1).all() and (mixed.cpl_aux[target][region] == cls + 1).all()
        assert torch.equal(mixed.cpl[target][~region], pseudo.cpl[target][~region])
        assert (mixed.spl[target][cls + 1, region] == 1).all() and mixed.spl[target][:, region].sum(0).eq(1).all()
        assert torch.equal(mixed.valid_cam[target][:, region], pseudo.valid_cam[source][:, region])
    for original, now in zip(before, (strong, labels, pseudo.cpl, pseudo.spl), strict=True):
        assert torch.equal(original, now)  # the inputs are left as they were


def test_probability_zero_and_single_image_batches_paste_nothing():
    strong, labels, pseudo = _batch()
    out = paste_classes(strong, labels, pseudo, prob=0.0, generator=paste_generator(0, 1))
    assert out[0] is strong and out[1] is labels and out[2] is pseudo and out[3] == 0
    single = PseudoLabels(*(t[:1] for t in (pseudo.cpl, pseudo.cpl_aux, pseudo.spl, pseudo.valid_cam)))
    assert paste_classes(strong[:1], labels[:1], single, prob=1.0, generator=paste_generator(0, 1))[3] == 0


def test_the_draws_repeat_for_the_same_seed_and_step():
    strong, labels, pseudo = _batch()
    runs = [paste_classes(strong, labels, pseudo, prob=0.5, generator=paste_generator(3, 11)) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    counts = {paste_classes(strong, labels, pseudo, prob=0.5, generator=paste_generator(3, s))[3] for s in range(40)}
    assert len(counts) > 1  # the step changes the draw


def test_the_step_trains_on_the_pasted_batch_and_returns_the_teachers_labels():
    cfg, network, batch = _setup(0.0)
    cfg = dataclasses.replace(cfg, class_paste=1.0, t_high=0.3, t_low=0.1)
    losses = CoSALosses(cfg, grid_size=4, batch_size=2)
    with torch.no_grad():
        _, terms, pseudo = losses(network, network, batch, step=1)
        teacher = losses.make_pseudo_labels(network, batch["weak"], batch["labels"], batch["box"])
        strong, labels, _, count = paste_classes(
            batch["strong"], batch["labels"], teacher, prob=1.0, generator=paste_generator(cfg.seed, 1)
        )
        expected = classification_loss(network(strong).logits, labels).item()
    assert count == terms["pasted"] == 2
    assert not torch.equal(labels, batch["labels"])  # each image gained its neighbour's class
    assert terms["cls"] == pytest.approx(expected, rel=1e-5)
    assert torch.equal(pseudo.cpl, teacher.cpl)  # what the run's sample pictures show matches the weak view


@pytest.mark.parametrize("value", [-0.1, 1.5, True, "half"])
def test_class_paste_must_be_a_probability(value):
    with pytest.raises(CosaConfigError, match="class_paste must be a probability"):
        TrainConfig(class_paste=value)

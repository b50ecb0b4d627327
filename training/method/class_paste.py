"""Class paste: show co-occurring classes apart by moving one class's pixels into another image of the batch.

Image labels cannot tell two classes apart that nearly always appear together: a classifier may let either
class's channel fire on both objects. After the loss warm-up the teacher's CAM pseudo-label says which pixels
of an image belong to which of its classes, so those pixels can be cut out and pasted into another image of
the same batch, which then holds that class in a new context, usually without its partner. The pasted image
gains the class in its labels and the pasted pixels in its pseudo-labels; everything else is unchanged
(docs/method.md, "Class paste").
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from cosa_sdk.training.method.step import PseudoLabels


def paste_generator(seed: int, step: int) -> torch.Generator:
    """The draws of one step: fixed by the run's seed and the step, so a resumed run pastes the same pixels."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def paste_classes(
    strong: torch.Tensor,
    labels: torch.Tensor,
    pseudo: PseudoLabels,
    *,
    prob: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, PseudoLabels, int]:
    """(images, labels, pseudo-labels, number of pastes) after pasting into each image with probability `prob`.

    The source of image j is image (j + shift) mod B for one random shift, so no image pastes into itself; the
    source gives the pixels its CAM pseudo-label assigns to one of its classes, drawn at random. Inputs are
    not modified."""
    batch = strong.shape[0]
    if batch < 2 or prob <= 0:
        return strong, labels, pseudo, 0
    shift = int(torch.randint(1, batch, (1,), generator=generator))
    chosen = torch.rand(batch, generator=generator) < prob
    picks = torch.rand(batch, generator=generator)
    out_strong, out_labels = strong.clone(), labels.clone()
    cpl, cpl_aux, spl, valid_cam = (t.clone() for t in (pseudo.cpl, pseudo.cpl_aux, pseudo.spl, pseudo.valid_cam))
    pasted = 0
    for target in torch.nonzero(chosen)[:, 0].tolist():
        source = (target + shift) % batch
        classes = torch.nonzero(labels[source] != 0)[:, 0]
        if classes.numel() == 0:
            continue
        cls = int(classes[min(int(picks[target] * classes.numel()), classes.numel() - 1)])
        region = pseudo.cpl[source] == cls + 1
        if not bool(region.any()):
            continue
        out_strong[target][:, region] = strong[source][:, region]
        out_labels[target, cls] = 1
        cpl[target][region] = cls + 1
        cpl_aux[target][region] = cls + 1
        spl[target][:, region] = 0.0
        spl[target][cls + 1, region] = 1.0
        valid_cam[target][:, region] = pseudo.valid_cam[source][:, region]
        pasted += 1
    mixed = replace(pseudo, cpl=cpl, cpl_aux=cpl_aux, spl=spl, valid_cam=valid_cam)
    return out_strong, out_labels, mixed, pasted

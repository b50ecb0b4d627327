"""The assignment network: an EMA of the online network (docs/method.md, "Online and assignment networks")."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_assignment_network(online: nn.Module, *, independent_heads: bool = False) -> nn.Module:
    """An exact copy of `online` that never receives gradients.

    `independent_heads=True` reproduces the official code, which builds the assignment network by a
    second constructor call: same pretrained backbone, freshly initialised heads.
    """
    assignment = copy.deepcopy(online)
    if independent_heads:
        for head in (assignment.classifier, assignment.aux_classifier, assignment.decoder):
            for module in head.modules():
                if isinstance(module, nn.Conv2d):
                    module.reset_parameters()
    assignment.requires_grad_(False)
    return assignment.eval()


@torch.no_grad()
def ema_update(assignment: nn.Module, online: nn.Module, momentum: float) -> None:
    """xi <- m * xi + (1 - m) * theta over every parameter (frozen ones included) and floating buffer."""
    online_state = online.state_dict()
    for name, target in assignment.state_dict().items():
        source = online_state[name]
        if target.dtype.is_floating_point:
            target.mul_(momentum).add_(source.detach(), alpha=1.0 - momentum)
        else:
            target.copy_(source)

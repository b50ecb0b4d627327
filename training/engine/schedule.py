"""Optimizer and learning-rate schedule of the released CoSA recipe (docs/method.md, "Schedule")."""

from __future__ import annotations

import torch
from torch import nn

from cosa_sdk.errors import CosaConfigError


def poly_warmup_lr(
    step: int,
    base_lr: float,
    *,
    warmup_iter: int = 1500,
    max_iter: int,
    warmup_ratio: float = 1e-6,
    power: float = 0.9,
) -> float:
    """Learning rate used at optimizer step ``step`` (0-based).

    Linear warm-up from ``base_lr * warmup_ratio`` for ``warmup_iter`` steps, then polynomial decay
    ``base_lr * (1 - step / max_iter) ** power``, floored at 0 past ``max_iter``.
    """
    if max_iter <= 0:
        raise CosaConfigError(f"max_iter must be > 0, got {max_iter}.")
    if step < warmup_iter:
        return base_lr * (1 - (1 - step / warmup_iter) * (1 - warmup_ratio))
    return base_lr * max(1 - step / max_iter, 0.0) ** power


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    head_lr_mult: float = 10.0,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW with two groups: ``model.backbone``'s trainable parameters at ``lr``, every other
    trainable parameter at ``lr * head_lr_mult``. Each group keeps its base lr in ``group["base_lr"]``;
    weight decay applies to all parameters, as in the released recipe."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise CosaConfigError(
            f"build_optimizer needs a model with a `backbone` sub-module, got {type(model).__name__}."
        )
    in_backbone = {id(p) for p in backbone.parameters()}
    backbone_params = [p for p in backbone.parameters() if p.requires_grad]
    head_params = [p for p in model.parameters() if p.requires_grad and id(p) not in in_backbone]
    groups = [
        {"params": params, "lr": group_lr, "base_lr": group_lr, "name": name}
        for name, params, group_lr in (
            ("backbone", backbone_params, lr),
            ("heads", head_params, lr * head_lr_mult),
        )
        if params
    ]
    if not groups:
        raise CosaConfigError("the model has no trainable parameters; unfreeze some blocks or heads.")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def set_lr(
    optimizer: torch.optim.Optimizer,
    step: int,
    *,
    warmup_iter: int = 1500,
    max_iter: int,
    warmup_ratio: float = 1e-6,
    power: float = 0.9,
) -> list[float]:
    """Set every group's lr for ``step`` from its ``base_lr`` and return the new lrs."""
    lrs = []
    for group in optimizer.param_groups:
        base = group.setdefault("base_lr", group["lr"])
        group["lr"] = poly_warmup_lr(
            step, base, warmup_iter=warmup_iter, max_iter=max_iter, warmup_ratio=warmup_ratio, power=power
        )
        lrs.append(group["lr"])
    return lrs

"""One training iteration, in the order of the released loop: the step's learning rates, the losses (the
assignment network's pseudo-labels from the weak view, the online network's terms on the strong view),
backward, the AdamW step, then the EMA update of the assignment network.

The engine runs it for every batch; `tests/trajectory_adapter.py` runs the very same object on the
batches of a recorded official trajectory.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from cosa_sdk.errors import CosaConfigError, CosaModelError
from cosa_sdk.training.config import TrainConfig
from cosa_sdk.training.engine.precision import autocast_dtype
from cosa_sdk.training.engine.schedule import build_optimizer, set_lr
from cosa_sdk.training.method.ema import ema_update, make_assignment_network
from cosa_sdk.training.method.step import CoSALosses, PseudoLabels, supervised_loss


@dataclass
class IterationResult:
    loss: torch.Tensor
    terms: dict[str, float]
    pseudo: PseudoLabels | None
    lrs: list[float]


def per_process_batch(global_batch: int, world_size: int) -> int:
    """The batch each process loads: presets state the global batch, as the released recipes do."""
    if global_batch < 1 or global_batch % world_size:
        raise CosaConfigError(
            f"batch_size={global_batch} (the global batch) does not split over {world_size} processes: run "
            f"with a world size that divides it, or set batch_size to a multiple of {world_size} "
            f"(e.g. batch_size={max(world_size, -(-global_batch // world_size) * world_size)})"
        )
    return global_batch // world_size


class TrainingIteration:
    """The networks, losses and optimiser of a run, and `__call__(batch, step)` that trains one iteration.

    `model` is what the online forward goes through: the online network itself, or its DDP wrapper.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        online: nn.Module,
        assignment: nn.Module | None,
        losses: CoSALosses | None,
        optimizer: torch.optim.Optimizer,
    ) -> None:
        self.config, self.online, self.assignment = config, online, assignment
        self.losses, self.optimizer = losses, optimizer
        self.model: nn.Module = online
        device = next(online.parameters()).device
        self.autocast_dtype, self.precision_note = autocast_dtype(config.amp, device)

    @classmethod
    def build(
        cls, config: TrainConfig, online: nn.Module, *, supervision: str = "weak", world_size: int = 1
    ) -> TrainingIteration:
        """Assignment network (EMA copy), losses and AdamW for `online`; supervision "full" trains on masks."""
        assignment, losses = None, None
        if supervision == "weak":
            assignment = make_assignment_network(online, independent_heads=config.independent_assignment_heads)
            losses = CoSALosses(
                config,
                grid_size=config.crop_size // online.stride,
                batch_size=per_process_batch(config.batch_size, world_size),
            )
        optimizer = build_optimizer(
            online, lr=config.lr, head_lr_mult=config.head_lr_mult, weight_decay=config.weight_decay
        )
        return cls(config, online=online, assignment=assignment, losses=losses, optimizer=optimizer)

    def _autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    def __call__(self, batch: dict[str, torch.Tensor], step: int) -> IterationResult:
        cfg = self.config
        lrs = set_lr(self.optimizer, step, warmup_iter=cfg.lr_warmup_iters, max_iter=cfg.iters)
        with self._autocast(batch["strong"].device):
            if self.losses is not None:
                loss, terms, pseudo = self.losses(self.model, self.assignment, batch, step)
            else:
                (loss, terms), pseudo = supervised_loss(self.model, batch, class_loss=cfg.full_class_loss), None
        if not torch.isfinite(loss):
            raise CosaModelError(
                f"the loss became {loss.item()} at iteration {step}: lower lr "
                f"(now {cfg.lr}) or check the data; resume from last.pt with a new run"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.assignment is not None:
            ema_update(self.assignment, self.online, cfg.ema_momentum)
        return IterationResult(loss=loss.detach(), terms=terms, pseudo=pseudo, lrs=lrs)

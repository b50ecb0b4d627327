"""The training engine: one loop for CPU, one GPU and torchrun DDP, with exact resume.

Per iteration (docs/method.md, "Schedule"): the assignment network's pseudo-labels from the weak view, the online
network's losses on the strong view, an AdamW step with the poly/warm-up schedule, then the EMA update.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from cosa_sdk import __version__
from cosa_sdk.errors import CosaConfigError, CosaDataError, CosaModelError
from cosa_sdk.training.config import BEST_METRICS, TrainConfig
from cosa_sdk.training.data import build_dataset, seed_worker
from cosa_sdk.training.data.resolution import resolve_resolution
from cosa_sdk.training.data.sampling import label_set_weights
from cosa_sdk.training.engine.checkpoint import save_checkpoint
from cosa_sdk.training.engine.distributed import DistContext, barrier, broadcast_object, cleanup, setup_distributed
from cosa_sdk.training.engine.iteration import IterationResult, TrainingIteration, per_process_batch
from cosa_sdk.training.engine.run_dir import prepare_run_dir
from cosa_sdk.training.engine.sampler import StepBatchSampler
from cosa_sdk.training.evaluation.evaluate import evaluate
from cosa_sdk.training.evaluation.visualize import save_training_samples
from cosa_sdk.training.method.step import CoSALosses
from cosa_sdk.training.model.network import CoSANetwork
from cosa_sdk.training.run_record import RECORD_KEY, RunRecord


class Trainer:
    """Trains CoSA (or, with `supervision="full"`, the same network on ground-truth masks) into `run_dir`."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        run_dir: str | Path,
        data_spec: str = "synthetic",
        supervision: str = "weak",
        preset_name: str | None = None,
        resume: bool = False,
        force: bool = False,
    ) -> None:
        config, self.resolution_note = resolve_resolution(config, data_spec)
        self.config, self.data_spec, self.supervision = config, data_spec, supervision
        self.preset_name = preset_name
        self.run_dir = Path(run_dir)
        self.ctx: DistContext = setup_distributed(config.device)
        self.batch_per_process = per_process_batch(config.batch_size, self.ctx.world_size)
        if config.best_metric not in BEST_METRICS:
            raise CosaConfigError(f"best_metric must be one of {', '.join(BEST_METRICS)}, got {config.best_metric!r}")
        self.resume_record = self._prepare_run_dir(resume=resume, force=force)
        cfg = config
        self.train_set = build_dataset(
            data_spec,
            "train",
            crop_size=cfg.crop_size,
            mean=cfg.mean,
            std=cfg.std,
            seed=cfg.seed,
            supervision=supervision,
            rescale_range=cfg.rescale_range,
            base_size=cfg.rescale_base_size,
        )
        self.run = RunRecord.for_training(
            cfg,
            classes=self.train_set.classes,
            palette=self.train_set.palette,
            data_spec=data_spec,
            supervision=supervision,
            preset=preset_name,
        )
        self.val_set = self._optional_val_set()
        torch.manual_seed(cfg.seed)
        self.online = CoSANetwork.from_train_config(cfg, num_classes=self.train_set.num_classes).to(self.ctx.device)
        self.iteration = TrainingIteration.build(
            cfg, self.online, supervision=supervision, world_size=self.ctx.world_size
        )
        self.step, self.best_score, self.last_metrics = 0, float("-inf"), {}
        if self.resume_record is not None:
            self._restore(self.resume_record)
        if self.ctx.distributed:
            device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            self.iteration.model = DistributedDataParallel(
                self.online, device_ids=device_ids, find_unused_parameters=True
            )

    @property
    def precision_note(self) -> str:
        """What the training forward passes compute in, and why (`amp`, training/engine/precision.py)."""
        return self.iteration.precision_note

    # The iteration owns the networks, losses and optimiser; the Trainer reads them through it.
    @property
    def assignment(self) -> torch.nn.Module | None:
        return self.iteration.assignment

    @property
    def losses(self) -> CoSALosses | None:
        return self.iteration.losses

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.iteration.optimizer

    # ----------------------------------------------------------------------------------------- run dir
    def _prepare_run_dir(self, *, resume: bool, force: bool) -> dict[str, Any] | None:
        record = prepare_run_dir(
            self.run_dir,
            self.config,
            data_spec=self.data_spec,
            supervision=self.supervision,
            preset_name=self.preset_name,
            resume=resume,
            force=force,
            is_main=self.ctx.is_main,
        )
        barrier(self.ctx)
        return record

    def _optional_val_set(self):
        try:
            val = self.run.eval_dataset()
        except CosaDataError:  # a dataset without masks trains fine but cannot be scored
            return None
        return val if len(val) else None

    # ------------------------------------------------------------------------------------ checkpoints
    def _record(self, *, with_state: bool) -> dict[str, Any]:
        record = {
            "model_config": self.online.model_config(),
            "classes": list(self.train_set.classes),
            "palette": [list(c) for c in self.train_set.palette],
            "supervision": self.supervision,
            "data": {
                "spec": self.data_spec,
                "crop_size": self.config.crop_size,
                "mean": list(self.config.mean),
                "std": list(self.config.std),
            },
            "preset": self.preset_name,
            "config": self.config.to_dict(),
            RECORD_KEY: self.run.to_dict(),
            "backbone_weights": self.config.backbone_weights,
            "backbone_weights_info": getattr(self.online.backbone.model, "cosa_weights_info", None),
            "online": self.online.state_dict(),
            "selected": self.last_metrics.get("selected", "assignment" if self.assignment is not None else "online"),
            "iteration": self.step,
            "metrics": self.last_metrics,
            "best_score": self.best_score,
        }
        if self.assignment is not None:
            record["assignment"] = self.assignment.state_dict()
        if with_state:
            record["optimizer"] = self.optimizer.state_dict()
            record["losses"] = self.losses.state_dict_extra() if self.losses is not None else {}
            record["rng"] = torch.get_rng_state()
        return record

    def _restore(self, record: dict[str, Any]) -> None:
        try:
            self.online.load_state_dict(record["online"])
            if self.assignment is not None:
                self.assignment.load_state_dict(record["assignment"])
            self.optimizer.load_state_dict(record["optimizer"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise CosaModelError(f"cannot resume from {self.run_dir / 'last.pt'}: {err}") from err
        if self.losses is not None:
            self.losses.load_state_dict_extra(record.get("losses", {"thresholds": vars(self.losses.thresholds)}))
        torch.set_rng_state(record["rng"])
        self.step = int(record["iteration"])
        self.best_score = float(record.get("best_score", float("-inf")))
        self.last_metrics = dict(record.get("metrics") or {})

    def _save_last(self) -> None:
        if self.ctx.is_main:
            save_checkpoint(self.run_dir / "last.pt", self._record(with_state=True))

    # -------------------------------------------------------------------------------------- evaluation
    def score_networks(self) -> dict[str, Any] | None:
        """Both networks scored on the validation set as the run is scored (None without one), and which is best."""
        if self.val_set is None:
            return None
        cfg = self.config
        scores = {}
        networks = {"online": self.online}
        if self.assignment is not None:
            networks["assignment"] = self.assignment
        for name, network in networks.items():
            scores[name] = evaluate(
                network,
                self.val_set,
                num_classes=self.train_set.num_classes,
                device=self.ctx.device,
                cam_threshold=cfg.cam_threshold,
                with_cams=self.supervision == "weak",
                tta=cfg.eval_tta,
                limit=cfg.eval_limit,
                class_names=self.train_set.classes,
            )
        self.online.train()
        selected = max(scores, key=lambda n: scores[n][cfg.best_metric] or 0.0)
        return {"selected": selected, "best_metric": cfg.best_metric, **scores}

    def _maybe_evaluate(self, done: int) -> dict[str, Any] | None:
        cfg = self.config
        if not (done % cfg.eval_every == 0 or done == cfg.iters):
            return None
        result = self.score_networks() if self.ctx.is_main else None
        result = broadcast_object(self.ctx, result)
        if result is None:
            return None
        self.last_metrics = result
        score = result[result["selected"]][self.config.best_metric] or 0.0
        if score > self.best_score and self.ctx.is_main:
            self.best_score = score
            save_checkpoint(self.run_dir / "best.pt", self._record(with_state=False))
        return result

    # ------------------------------------------------------------------------------------------- loop
    def _log(self, entry: dict[str, Any]) -> None:
        if self.ctx.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(entry) + "\n")

    def _sampling_weights(self) -> np.ndarray | None:
        power = self.config.label_set_balance
        if power < 0:
            raise CosaConfigError(f"label_set_balance must be >= 0 (0 turns it off), got {power}.")
        if power == 0:
            return None
        return label_set_weights(self.train_set.label_sets(), power=power)

    def _loader(self) -> DataLoader:
        cfg = self.config
        sampler = StepBatchSampler(
            num_samples=len(self.train_set),
            batch_size=self.batch_per_process,
            total_steps=cfg.iters,
            start_step=self.step,
            seed=cfg.seed,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            weights=self._sampling_weights(),
        )
        return DataLoader(
            self.train_set,
            batch_sampler=sampler,
            num_workers=cfg.num_workers,
            worker_init_fn=seed_worker,
            pin_memory=self.ctx.device.type == "cuda",
            persistent_workers=False,
        )

    def fit(
        self,
        *,
        stop_after: int | None = None,
        on_iteration: Callable[[int, IterationResult], bool | None] | None = None,
    ) -> dict[str, Any]:
        """Train until `config.iters` (or `stop_after` iterations, for tests of resume); returns a summary.

        `on_iteration(step, result)` is called after every iteration (step = iterations done so far), e.g.
        to time steps; returning False stops the run there (last.pt is saved, as with `stop_after`).
        """
        cfg, device = self.config, self.ctx.device
        if self.ctx.is_main and self.resume_record is None:
            self._write_config()
        self.online.train()
        bar = _progress(total=cfg.iters, initial=self.step, enabled=cfg.progress and self.ctx.is_main)
        started, steps_run, window = time.perf_counter(), 0, time.perf_counter()
        for batch in self._loader():
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            outcome = self.iteration(batch, self.step)
            loss, terms, pseudo = outcome.loss, outcome.terms, outcome.pseudo
            self.step += 1
            steps_run += 1
            if self.step % cfg.log_every == 0 or self.step == cfg.iters:
                now = time.perf_counter()
                entry = {
                    "step": self.step,
                    "loss": loss.item(),
                    **terms,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "it_per_s": cfg.log_every / max(now - window, 1e-9),
                }
                if self.losses is not None:
                    entry.update({f"t_{k}": v for k, v in vars(self.losses.thresholds).items()})
                window = now
                self._log(entry)
                bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items()}, refresh=False)
            bar.update(1)
            if pseudo is not None and self.step % cfg.sample_every == 0 and self.ctx.is_main:
                save_training_samples(
                    self.run_dir / "samples" / f"step_{self.step:06d}.png",
                    batch,
                    pseudo,
                    self.online,
                    palette=self.train_set.palette,
                    mean=cfg.mean,
                    std=cfg.std,
                )
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.iters:
                self._save_last()
            result = self._maybe_evaluate(self.step)
            if result is not None:
                self._log({"step": self.step, "eval": result})
            stop = on_iteration is not None and on_iteration(self.step, outcome) is False
            if stop or (stop_after is not None and steps_run >= stop_after):
                self._save_last()
                break
        bar.close()
        elapsed = time.perf_counter() - started
        if self.ctx.is_main and not (self.run_dir / "best.pt").exists():
            save_checkpoint(self.run_dir / "best.pt", self._record(with_state=False))
        barrier(self.ctx)
        summary = {
            "iterations": self.step,
            "seconds": elapsed,
            "it_per_s": steps_run / max(elapsed, 1e-9),
            "best_seg_miou": None if self.best_score == float("-inf") else self.best_score,
            "metrics": self.last_metrics,
            "run_dir": str(self.run_dir),
        }
        cleanup(self.ctx)
        return summary

    def _write_config(self) -> None:
        payload = {
            "cosa_sdk_version": __version__,
            "preset": self.preset_name,
            "data": self.data_spec,
            "supervision": self.supervision,
            "classes": list(self.train_set.classes),
            "world_size": self.ctx.world_size,
            "autocast": str(self.iteration.autocast_dtype or torch.float32).removeprefix("torch."),
            "config": self.config.to_dict(),
        }
        (self.run_dir / "config.json").write_text(json.dumps(payload, indent=2))


def _progress(*, total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="cosa train", dynamic_ncols=True)

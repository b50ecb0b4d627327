"""The train section: the `voc` preset through the engine's `Trainer`, timed per phase via `fit(on_iteration=)`.

Rates per phase (warm-up, co-training), peak GPU memory per phase, the forward's autocast dtype and the wall
time of the full 32k schedule projected from the measured rates.
"""

from __future__ import annotations

import inspect
import json
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cosa_sdk.training.config import TrainConfig, preset
from cosa_sdk.training.engine.iteration import IterationResult
from cosa_sdk.training.engine.trainer import Trainer

from .common import MIB, PRESET, REFERENCE, Context, PartialFailure, Plan, num, train_config


class StepClock:
    """The `on_iteration` callback: times each step, splits peak memory by phase, stops the run at a deadline.

    `fit` calls it after every iteration (its logging, checkpoint and evaluation included), so a step is timed
    from the previous call: the first iteration of the run is not timed, and steps that also saved a checkpoint,
    evaluated or wrote samples are left out, so that the rates are those of training alone.
    """

    def __init__(self, config: TrainConfig, deadline: float, *, cuda: bool, is_cotrain: Callable[[int], bool]) -> None:
        self.config, self.deadline, self.cuda, self.is_cotrain = config, deadline, cuda, is_cotrain
        self.steps: list[int] = []  # every iteration that ran, numbered as the engine passes it to `iteration`
        self.timed: list[tuple[int, float]] = []  # (iteration, seconds) of the steps timed
        self.peak_bytes: dict[str, int] = {}  # torch.cuda.max_memory_allocated per phase
        self.peak_reserved: dict[str, int] = {}  # torch.cuda.max_memory_reserved per phase
        self.stopped_early = False
        self._previous: float | None = None

    def phase(self, iteration: int) -> str:
        return "cotrain" if self.is_cotrain(iteration) else "warmup"

    def __call__(self, step: int, result: IterationResult) -> bool:
        """`step` iterations are done; returns False to stop the run when the deadline has passed."""
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        iteration = step - 1
        phase = self.phase(iteration)
        self.steps.append(iteration)
        if self._previous is not None and not self._extra_work(step, result):
            self.timed.append((iteration, now - self._previous))
        self._previous = now
        last = step >= self.config.iters
        if not last and now >= self.deadline:
            self.stopped_early = True
            last = True
        if last or self.phase(step) != phase:
            self._close_phase(phase)
        return not self.stopped_early

    def _extra_work(self, step: int, result: IterationResult) -> bool:
        """Whether `fit` did more than log after this step: a checkpoint, an evaluation or training samples."""
        cfg = self.config
        return (
            step % cfg.eval_every == 0
            or step % cfg.checkpoint_every == 0
            or step == cfg.iters
            or (result.pseudo is not None and step % cfg.sample_every == 0)
        )

    def _close_phase(self, phase: str) -> None:
        if self.cuda:
            self.peak_bytes[phase] = torch.cuda.max_memory_allocated()
            self.peak_reserved[phase] = torch.cuda.max_memory_reserved()
            torch.cuda.reset_peak_memory_stats()


class DtypeProbe:
    """Records the dtype of the decoder's output in each phase: bfloat16 when AMP is really in effect."""

    def __init__(self, module: torch.nn.Module, trainer: Trainer) -> None:
        self.trainer, self.seen = trainer, {}
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, _module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        if torch.is_tensor(output) and torch.is_grad_enabled():  # the online network's training forward
            losses = self.trainer.losses
            phase = "cotrain" if losses is not None and losses.pseudo_labels_active(self.trainer.step) else "warmup"
            self.seen.setdefault(phase, str(output.dtype).replace("torch.", ""))


def train_section(ctx: Context, extra: list[str]) -> dict[str, Any]:
    plan = ctx.plan
    if plan.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device visible: run with --cpu-smoke on a machine without a GPU")
    if "on_iteration" not in inspect.signature(Trainer.fit).parameters:
        raise RuntimeError("Trainer.fit has no on_iteration hook: update StepClock in benchmarks/gpu_check_parts")
    config = train_config(plan, extra)
    run_dir = ctx.work / "run"
    setup_start = time.perf_counter()
    trainer = Trainer(config, run_dir=run_dir, data_spec=plan.data_spec, preset_name=PRESET, force=True)
    setup_s = time.perf_counter() - setup_start
    cuda = trainer.ctx.device.type == "cuda"
    losses = trainer.losses
    clock = StepClock(
        config,
        ctx.budget.start + ctx.budget.total - plan.reserve_s,
        cuda=cuda,
        is_cotrain=lambda step: losses is not None and losses.pseudo_labels_active(step),
    )
    probe = DtypeProbe(trainer.online.decoder, trainer)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        summary = trainer.fit(on_iteration=clock)
    except Exception as err:  # keep what the steps before the failure measured (e.g. an OOM in co-training)
        partial = {"iterations": trainer.step, "phases": phase_numbers(trainer, clock, config, plan)}
        if cuda:
            partial["peak_mem_mib_at_failure"] = torch.cuda.max_memory_allocated() / MIB
        raise PartialFailure(f"{type(err).__name__} in training: {err}", partial) from err
    finally:
        probe.handle.remove()
    ctx.checkpoint = run_dir / "best.pt"
    result = train_numbers(trainer, clock, summary, config, plan)
    result.update(setup_s=setup_s, autocast_dtype=probe.seen, data_spec=plan.data_spec)
    result["notes"] = train_notes(result, config, trainer.ctx.device.type)
    print_train(result)
    return result


def phase_numbers(trainer: Trainer, clock: StepClock, config: TrainConfig, plan: Plan) -> dict[str, dict[str, Any]]:
    """Steps, rates (own clock and metrics.jsonl) and peak memory of the warm-up and co-training phases.

    The first `plan.skip_steps` iterations of each phase are left out of the rates, unless nothing else was timed.
    """
    phases = {}
    for phase in ("warmup", "cotrain"):
        steps = [s for s in clock.steps if clock.phase(s) == phase]
        settled = set(steps[plan.skip_steps :])
        timed = [d for s, d in clock.timed if s in settled] or [d for s, d in clock.timed if clock.phase(s) == phase]
        phases[phase] = {
            "steps": len(steps),
            "timed_steps": len(timed),
            "it_per_s": len(timed) / sum(timed) if timed else None,
            "median_s_per_it": statistics.median(timed) if timed else None,
            "metrics_jsonl_it_per_s": logged_rate(trainer.run_dir / "metrics.jsonl", config.log_every, clock, phase),
            "peak_mem_mib": clock.peak_bytes[phase] / MIB if phase in clock.peak_bytes else None,
        }
    return phases


def train_numbers(
    trainer: Trainer, clock: StepClock, summary: dict[str, Any], config: TrainConfig, plan: Plan
) -> dict[str, Any]:
    """The run's shape, its per-phase rates, peak memory and the projected full schedule."""
    phases = phase_numbers(trainer, clock, config, plan)
    full = preset(PRESET)
    return {
        "preset": PRESET,
        "backbone": config.backbone,
        "backbone_kwargs": config.backbone_kwargs,
        "crop_size": config.crop_size,
        "batch_size": config.batch_size,
        "amp": config.amp,
        "device": str(trainer.ctx.device),
        "num_classes": trainer.train_set.num_classes,
        "train_images": len(trainer.train_set),
        "iters_planned": config.iters,
        "loss_warmup_iters": config.loss_warmup_iters,
        "iterations": summary["iterations"],
        "stopped_by_budget": clock.stopped_early,
        "fit_seconds": summary["seconds"],
        "fit_it_per_s": summary["it_per_s"],
        "phases": phases,
        "peak_mem_mib": max(clock.peak_bytes.values()) / MIB if clock.peak_bytes else None,
        "peak_reserved_mib": max(clock.peak_reserved.values()) / MIB if clock.peak_reserved else None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "projection": projection(phases, full.iters, full.loss_warmup_iters),
    }


def logged_rate(path: Path, log_every: int, clock: StepClock, phase: str) -> float | None:
    """Median `it_per_s` the engine logged over windows lying wholly in one phase (None without such windows)."""
    if not path.is_file():
        return None
    rates = []
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if "it_per_s" not in entry:
            continue
        window = range(entry["step"] - log_every, entry["step"])
        if all(clock.phase(s) == phase for s in window):
            rates.append(entry["it_per_s"])
    return statistics.median(rates) if rates else None


def projection(phases: dict[str, dict[str, Any]], iters: int, warmup: int) -> dict[str, Any]:
    """Wall time of the full schedule at the measured rates (a phase without a rate borrows the other's)."""
    rates = [p["it_per_s"] for p in phases.values() if p["it_per_s"]]
    if not rates:
        return {"iters": iters, "loss_warmup_iters": warmup, "seconds": None}
    warm = phases["warmup"]["it_per_s"] or min(rates)
    cotrain = phases["cotrain"]["it_per_s"] or min(rates)
    seconds = (warmup + 1) / warm + (iters - warmup - 1) / cotrain  # co-training starts after step `warmup`
    return {
        "iters": iters,
        "loss_warmup_iters": warmup,
        "seconds": seconds,
        "reference": REFERENCE,
        "speedup_vs_reference": REFERENCE["seconds"] / seconds,
        "cotrain_rate_measured": phases["cotrain"]["it_per_s"] is not None,
    }


def train_notes(result: dict[str, Any], config: TrainConfig, device_type: str) -> list[str]:
    notes = []
    if config.amp == "bf16" and "bfloat16" not in result["autocast_dtype"].values():
        notes.append(
            f"amp=bf16 but the training forward ran in {sorted(set(result['autocast_dtype'].values()))} on "
            f"{device_type}: the engine does not autocast there"
        )
    if result["stopped_by_budget"]:
        notes.append(f"stopped by the time budget after {result['iterations']} of {config.iters} iterations")
    if result["phases"]["cotrain"]["it_per_s"] is None:
        notes.append("no co-training step was timed: the projection uses the warm-up rate for the whole schedule")
    return notes


def hms(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def print_train(r: dict[str, Any]) -> None:
    print(
        f"{r['preset']} preset: {r['backbone']} {r['backbone_kwargs'] or ''}, crop {r['crop_size']}, batch "
        f"{r['batch_size']}, amp {r['amp']} (forward dtype {r['autocast_dtype']}), {r['device']}, "
        f"{r['num_classes']} classes, {r['train_images']} training images ({r['data_spec']})"
    )
    print(
        f"{r['iterations']} of {r['iters_planned']} iterations (loss warm-up {r['loss_warmup_iters']}) in "
        f"{r['fit_seconds']:.1f} s ({r['fit_it_per_s']:.2f} it/s over the whole fit); set-up {r['setup_s']:.1f} s"
    )
    head = f"{'phase':<9} {'steps':>6} {'timed':>6} {'it/s':>8} {'median s/it':>12} {'logged it/s':>12} {'peak MiB':>9}"
    print(head + "\n" + "-" * len(head))
    for name, p in r["phases"].items():
        print(
            f"{name:<9} {p['steps']:>6} {p['timed_steps']:>6} {num(p['it_per_s'], '.2f'):>8} "
            f"{num(p['median_s_per_it'], '.4f'):>12} {num(p['metrics_jsonl_it_per_s'], '.2f'):>12} "
            f"{num(p['peak_mem_mib'], '.0f'):>9}"
        )
    proj, ref = r["projection"], REFERENCE
    speedup = f" ({proj['speedup_vs_reference']:.2f}x)" if proj["seconds"] else ""
    print(
        f"projected {proj['iters']}-iteration schedule ({proj['loss_warmup_iters']} warm-up): "
        f"{hms(proj['seconds'])} on this device, batch {r['batch_size']}{speedup}; released reference: "
        f"{hms(ref['seconds'])} on {ref['hardware']}, global batch {ref['global_batch']}"
    )
    for note in r["notes"]:
        print(f"note: {note}")

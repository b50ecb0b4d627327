"""Fit the demo's training into its time budget on this machine, measured rather than assumed.

A few real training steps (warm-up and co-training) and a small evaluation are timed first; when the
preset's schedule would not finish within the budget, the batch is halved, and if that is not enough,
every iteration count of the schedule is scaled by one factor, so the run keeps its shape (warm-up
share, evaluations, checkpoints) and only gets shorter.
The demo prints what it measured and what it chose; `--budget 0` trains the preset's full schedule.
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cosa_sdk.training.config import TrainConfig

# What the stages after training (evaluation, export with the INT8 gate, segmentation, latency, report)
# cost, in co-training steps: 35 s at 1.58 s a step on the development machine; 93 s at 3.29 s on an
# AVX2-only EPYC, whose export timed two INT8 candidates on exact kernels (x1.3 for safety).
REST_IN_STEPS = 36.0
# The same in held-out images evaluated, which run in float32 whatever `amp` is: under bf16 autocast a step
# shrinks (1.6-1.8x with AVX512-BF16) and the stages after training do not (35 s at 0.11 s an image, 93 s at 0.22 s;
# x1.3). The larger of the two is reserved.
REST_IN_EVAL_IMAGES = 550.0
# Checkpoints, logging and the data loader on top of the timed steps: a 456 s prediction trained in 490 s.
TRAINING_OVERHEAD = 1.1
# The part of a step that does not shrink with the batch: 330 steps of 8 images took 0.54 of the time of 16.
FIXED_STEP_SHARE = 0.08
MIN_FRACTION = 0.35  # below this the demo would show too little; it says so and runs over the budget
SCHEDULE_KEYS = ("iters", "loss_warmup_iters", "lr_warmup_iters", "eval_every", "checkpoint_every", "sample_every")
CALIBRATION_STEPS = (4, 6)  # warm-up, co-training; the first step of each phase is not counted
CALIBRATION_EVAL_IMAGES = 16


@dataclass(frozen=True)
class StepTimes:
    """Seconds per training step of each phase, and per held-out image evaluated (both networks)."""

    warmup_s: float
    cotraining_s: float
    eval_image_s: float
    calibration_s: float = 0.0

    def with_batch(self, ratio: float) -> StepTimes:
        """The step times at `ratio` times the measured batch (a step's fixed part does not shrink)."""
        factor = FIXED_STEP_SHARE + (1.0 - FIXED_STEP_SHARE) * ratio
        return dataclasses.replace(self, warmup_s=self.warmup_s * factor, cotraining_s=self.cotraining_s * factor)

    def rest_seconds(self) -> float:
        """What the demo reserves for calibration and the stages after training (see REST_IN_STEPS)."""
        return max(REST_IN_STEPS * self.cotraining_s, REST_IN_EVAL_IMAGES * self.eval_image_s) + self.calibration_s

    def training_seconds(self, config: TrainConfig, val_images: int) -> float:
        """Predicted wall time of training `config` with evaluations on `val_images` images."""
        warm = min(config.loss_warmup_iters, config.iters)
        evaluations = config.iters // max(config.eval_every, 1)
        if config.iters % max(config.eval_every, 1):
            evaluations += 1  # the run also evaluates at its end
        steps = warm * self.warmup_s + (config.iters - warm) * self.cotraining_s
        return TRAINING_OVERHEAD * steps + evaluations * val_images * self.eval_image_s


@dataclass(frozen=True)
class SizedSchedule:
    config: TrainConfig
    fraction: float
    predicted_s: float
    full_predicted_s: float
    message: str


def scale_schedule(config: TrainConfig, fraction: float) -> TrainConfig:
    """Every iteration count of the schedule times `fraction` (at least 1 each; warm-up stays below iters)."""
    if fraction >= 1.0:
        return config
    values = {key: max(1, round(getattr(config, key) * fraction)) for key in SCHEDULE_KEYS}
    values["loss_warmup_iters"] = min(values["loss_warmup_iters"], values["iters"] - 1)
    return dataclasses.replace(config, **values)


def fit_schedule(config: TrainConfig, times: StepTimes, *, budget_min: float, val_images: int) -> SizedSchedule:
    """The schedule to train within `budget_min` minutes of the whole demo on a machine this fast.

    First the batch is halved (the schedule keeps every step: on benchmark v2, 330 steps of 8 images scored
    49.5 seg mIoU where 156 steps of 16, the same minutes, scored 31.9), then the iterations are scaled.
    """
    full = times.training_seconds(config, val_images)
    rest = times.rest_seconds()
    available = budget_min * 60.0 - rest
    speed = (
        f"this machine: {times.warmup_s:.2f} s per warm-up step, {times.cotraining_s:.2f} s per co-training step "
        f"(measured); the preset's {config.iters} iterations take about {full / 60:.1f} min"
    )
    if full <= available:
        return SizedSchedule(config, 1.0, full, full, f"{speed}: training all of them")
    half = max(2, config.batch_size // 2)
    smaller = dataclasses.replace(config, batch_size=half)
    times = times.with_batch(half / config.batch_size)
    batch_note = f"batch {half} instead of {config.batch_size}"
    predicted = times.training_seconds(smaller, val_images)
    if predicted <= available:
        message = (
            f"{speed}: training all of them with {batch_note} to finish the demo within {budget_min:g} min; "
            "`cosa demo --budget 0` trains the preset as it is"
        )
        return SizedSchedule(smaller, 1.0, predicted, full, message)
    fraction = max(MIN_FRACTION, available / predicted) if available > 0 else MIN_FRACTION
    # The evaluation count is a step function of iters: shrink until the prediction fits (or the floor).
    while True:
        sized = scale_schedule(smaller, fraction)
        predicted = times.training_seconds(sized, val_images)
        if predicted <= available or fraction <= MIN_FRACTION:
            break
        fraction = max(MIN_FRACTION, fraction - 0.01)
    over = "" if predicted <= available else " (the shortest useful schedule: the demo will run over its budget)"
    message = (
        f"{speed}: training {sized.iters} iterations ({100 * fraction:.0f} % of the schedule, warm-up "
        f"{sized.loss_warmup_iters}) with {batch_note} to finish the demo within {budget_min:g} min{over}; "
        "`cosa demo --budget 0` trains the preset as it is"
    )
    return SizedSchedule(sized, fraction, predicted, full, message)


def measure_step_times(config: TrainConfig, data: str, *, workdir: Path) -> StepTimes:
    """Time a few real steps of `config` on `data` in a scratch run (deleted afterwards)."""
    from cosa_sdk.training.engine.trainer import Trainer

    warm, co = CALIBRATION_STEPS
    probe = dataclasses.replace(
        config,
        iters=10**6,  # never reached: the probe stops itself, so no end-of-run evaluation or checkpoint
        loss_warmup_iters=warm,
        lr_warmup_iters=1,
        eval_every=10**9,
        eval_limit=CALIBRATION_EVAL_IMAGES,
        checkpoint_every=10**9,
        sample_every=10**9,
        log_every=10**9,
        progress=False,
    )
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="calibration-", dir=workdir))
    stamps: list[float] = []

    def stamp(step: int, result: object) -> bool | None:
        stamps.append(time.perf_counter())
        return False if step >= warm + co else None

    try:
        trainer = Trainer(probe, run_dir=scratch / "run", data_spec=data)
        stamps.append(time.perf_counter())
        trainer.fit(on_iteration=stamp)
        durations = [b - a for a, b in itertools.pairwise(stamps)]
        # the first step of each phase pays one-off costs; the median shrugs off a busy moment of the machine
        warm_steps, co_steps = durations[1:warm], durations[warm + 1 :]
        eval_image_s = 0.0
        if trainer.val_set is not None:
            tick = time.perf_counter()
            trainer.score_networks()
            eval_image_s = (time.perf_counter() - tick) / min(CALIBRATION_EVAL_IMAGES, len(trainer.val_set))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return StepTimes(
        warmup_s=statistics.median(warm_steps or durations[:1]),
        cotraining_s=statistics.median(co_steps or durations[-1:]),
        eval_image_s=eval_image_s,
        calibration_s=time.perf_counter() - started,
    )


def saved_schedule(config: TrainConfig, run: Path) -> TrainConfig | None:
    """The schedule (and batch) a started demo run was sized to, so a resumed run keeps it; None if none."""
    from cosa_sdk.training.engine.run_dir import saved_run

    saved = saved_run(run)
    if saved is None:
        return None
    sized = (*SCHEDULE_KEYS, "batch_size")
    return dataclasses.replace(config, **{key: saved["config"][key] for key in sized if key in saved["config"]})

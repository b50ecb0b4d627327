"""The demo sizes its training to the machine: a fast one trains the full schedule, a slow one a scaled one."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

pytest.importorskip("torch")

from tiny_training import DATA, tiny_config

from cosa_sdk.demo import app, budget
from cosa_sdk.demo.budget import (
    MIN_FRACTION,
    REST_IN_EVAL_IMAGES,
    REST_IN_STEPS,
    TRAINING_OVERHEAD,
    StepTimes,
    fit_schedule,
    measure_step_times,
)
from cosa_sdk.training.config import preset
from cosa_sdk.training.engine.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("cosa_cache")
TINY = preset("tiny")
VAL = 200
# Two machines of this kind as the calibration measured them: the development machine (2 cores, AVX-512
# VNNI) and an AVX2-only EPYC, 2.2x slower a co-training step (the one a user's 18.1-minute demo ran on).
FAST = StepTimes(warmup_s=0.88, cotraining_s=1.58, eval_image_s=0.11, calibration_s=15.0)
SLOW = StepTimes(warmup_s=1.85, cotraining_s=3.46, eval_image_s=0.22, calibration_s=47.0)


def test_training_time_counts_both_phases_and_every_evaluation() -> None:
    config = dataclasses.replace(TINY, iters=10, loss_warmup_iters=4, eval_every=4)
    times = StepTimes(warmup_s=1.0, cotraining_s=2.0, eval_image_s=0.5)
    expected = TRAINING_OVERHEAD * (4 * 1.0 + 6 * 2.0) + 3 * 10 * 0.5  # evaluations at 4, 8 and 10
    assert times.training_seconds(config, val_images=10) == pytest.approx(expected)


def test_a_fast_machine_trains_the_full_schedule() -> None:
    sized = fit_schedule(TINY, FAST, budget_min=10, val_images=VAL)
    assert sized.config == TINY and sized.fraction == 1.0
    assert "training all of them" in sized.message and f"{TINY.iters} iterations" in sized.message


def test_a_slightly_slow_machine_halves_the_batch_and_keeps_every_step() -> None:
    slightly = StepTimes(warmup_s=1.15, cotraining_s=2.05, eval_image_s=0.14, calibration_s=20.0)
    sized = fit_schedule(TINY, slightly, budget_min=10, val_images=VAL)
    assert sized.config == dataclasses.replace(TINY, batch_size=TINY.batch_size // 2) and sized.fraction == 1.0
    assert "batch 8 instead of 16" in sized.message and "--budget 0" in sized.message


def test_halving_the_batch_shortens_a_step_by_what_was_measured() -> None:
    half = FAST.with_batch(0.5)
    assert half.cotraining_s / FAST.cotraining_s == pytest.approx(0.54) and half.eval_image_s == FAST.eval_image_s


def test_a_slow_machine_halves_the_batch_then_scales_the_schedule_to_fit() -> None:
    sized = fit_schedule(TINY, SLOW, budget_min=10, val_images=VAL)
    assert sized.config.batch_size == TINY.batch_size // 2
    assert MIN_FRACTION <= sized.fraction < 1.0 and sized.config.iters < TINY.iters
    available = 600 - SLOW.rest_seconds()
    assert sized.predicted_s <= available < sized.full_predicted_s
    share = sized.config.loss_warmup_iters / sized.config.iters
    assert share == pytest.approx(TINY.loss_warmup_iters / TINY.iters, abs=0.02)
    assert sized.config.eval_every < TINY.eval_every and sized.config.lr == TINY.lr
    assert f"training {sized.config.iters} iterations" in sized.message and "--budget 0" in sized.message


def test_what_is_left_after_training_is_reserved_from_evaluation_speed_when_steps_run_in_bf16() -> None:
    """bf16 autocast shortens a step, not the float32 evaluation, export and report that follow training."""
    assert SLOW.rest_seconds() == pytest.approx(REST_IN_STEPS * SLOW.cotraining_s + SLOW.calibration_s)
    bf16 = dataclasses.replace(FAST, warmup_s=0.5, cotraining_s=0.9)  # the same machine's evaluation speed
    assert bf16.rest_seconds() == pytest.approx(REST_IN_EVAL_IMAGES * FAST.eval_image_s + FAST.calibration_s)
    assert bf16.rest_seconds() > REST_IN_STEPS * bf16.cotraining_s + bf16.calibration_s


def test_a_very_slow_machine_keeps_a_useful_schedule_and_says_it_runs_over() -> None:
    crawl = StepTimes(warmup_s=20.0, cotraining_s=30.0, eval_image_s=1.0)
    sized = fit_schedule(TINY, crawl, budget_min=10, val_images=VAL)
    assert sized.fraction == MIN_FRACTION and "run over its budget" in sized.message


def test_a_larger_budget_trains_more() -> None:
    short = fit_schedule(TINY, SLOW, budget_min=10, val_images=VAL).config.iters
    assert fit_schedule(TINY, SLOW, budget_min=14, val_images=VAL).config.iters > short


def test_calibration_times_real_steps_and_leaves_nothing_behind(tmp_path) -> None:
    times = measure_step_times(tiny_config(), DATA, workdir=tmp_path)
    assert times.warmup_s > 0 and times.cotraining_s > 0 and times.eval_image_s > 0
    assert times.calibration_s >= times.warmup_s + times.cotraining_s
    assert list(tmp_path.iterdir()) == []


def _args(**values) -> argparse.Namespace:
    return argparse.Namespace(**{"iters": None, "budget": None, **values})


def test_schedule_choice_iters_then_budget_zero_then_a_started_runs_own(tmp_path, monkeypatch) -> None:
    config = tiny_config(iters=40)
    monkeypatch.setattr(app, "measure_step_times", lambda *a, **k: pytest.fail("must not time steps here"))
    chosen, note = app.schedule_stage(config, _args(iters=7), tmp_path / "run", tmp_path, DATA)
    assert chosen.iters == 7 and "--iters" in note
    chosen, note = app.schedule_stage(config, _args(budget=0), tmp_path / "run", tmp_path, DATA)
    assert chosen == config and "--budget 0" in note
    started = dataclasses.replace(config, iters=23, loss_warmup_iters=9, eval_every=11, batch_size=1)
    save_checkpoint(
        tmp_path / "run" / "last.pt", {"model_config": {}, "classes": [], "online": {}, "config": started.to_dict()}
    )
    chosen, note = app.schedule_stage(config, _args(), tmp_path / "run", tmp_path, DATA)
    assert (chosen.iters, chosen.loss_warmup_iters, chosen.eval_every, chosen.batch_size) == (23, 9, 11, 1)
    assert "sized when" in note


def test_a_fresh_run_is_sized_from_what_was_measured(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(app, "measure_step_times", lambda *a, **k: SLOW)
    chosen, note = app.schedule_stage(TINY, _args(), tmp_path / "run", tmp_path, DATA)
    assert chosen == fit_schedule(TINY, SLOW, budget_min=10, val_images=4).config != TINY
    assert "3.46 s per co-training step" in note


def test_the_fit_counts_only_the_held_out_images_an_evaluation_reads(tmp_path, monkeypatch) -> None:
    slow_evaluation = dataclasses.replace(SLOW, eval_image_s=25.0)
    monkeypatch.setattr(app, "measure_step_times", lambda *a, **k: slow_evaluation)
    # only the in-training evaluations are under test here; what is reserved after training has its own test
    monkeypatch.setattr(budget, "REST_IN_EVAL_IMAGES", 0.0)
    limited = dataclasses.replace(TINY, eval_limit=1)
    chosen, _ = app.schedule_stage(limited, _args(), tmp_path / "run", tmp_path, DATA)
    every_image = fit_schedule(limited, slow_evaluation, budget_min=10, val_images=4).config
    assert chosen == fit_schedule(limited, slow_evaluation, budget_min=10, val_images=1).config
    assert chosen.iters > every_image.iters

"""The `official` preset follows a trajectory recorded from the released training loop, iteration by iteration.

The case (tests/data/official_trajectory, described in docs/official-trajectory.md) is 8 iterations of a
small network of the released architecture, with the loss warm-up switching on inside the run and the
dense-CRF loss on. `trajectory_adapter.run_trajectory` runs it through the engine's own
`TrainingIteration`; the checks below apply the case's published tolerances, unchanged.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from trajectory_adapter import CHECKSUM_GROUPS, run_trajectory
from trajectory_case import batches, case_block, initial_weights, write_case

TESTS = Path(__file__).resolve().parents[2]
CASE_DIR = TESTS / "data" / "official_trajectory"
REFERENCE = json.loads((CASE_DIR / "trajectory.json").read_text())
TOL = REFERENCE["tolerances"]
EPS = 2.0**-23
PIXELS = REFERENCE["case"]["batch"] * REFERENCE["case"]["crop"] ** 2


def _run(case_dir: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """run_trajectory, with the folder it writes final_state.npz into removed once the records are read."""
    result = run_trajectory(str(case_dir), overrides=overrides)
    final = np.load(result["final_state_npz"])
    result["final_state"] = {key: final[key] for key in final.files}
    shutil.rmtree(Path(result["final_state_npz"]).parent, ignore_errors=True)
    return result


@pytest.fixture(scope="module")
def ours() -> dict[str, Any]:
    return _run(CASE_DIR)


def trajectory_errors(ours: dict[str, Any], reference: dict[str, Any] = REFERENCE) -> list[str]:
    """Every check of the case's README section 7 that fails, as readable lines (empty: all pass)."""
    errors: list[str] = []
    tol = reference["tolerances"]
    init = reference["init_checksums"]
    hist_limit = max(tol["hist_l1_min"], tol["hist_l1_frac"] * PIXELS)

    def close(what: str, got: float, want: float, limit: float) -> None:
        if not abs(got - want) <= limit:
            errors.append(f"{what}: ours {got!r}, reference {want!r} (|diff| {abs(got - want):.3g} > {limit:.3g})")

    def histogram(what: str, got: Any, want: Any) -> None:
        got = dict(enumerate(got)) if isinstance(got, list) else {int(k): v for k, v in got.items()}
        want = dict(enumerate(want)) if isinstance(want, list) else {int(k): v for k, v in want.items()}
        if sum(got.values()) != PIXELS:
            errors.append(f"{what}: sums to {sum(got.values())}, not {PIXELS}")
        l1 = sum(abs(got.get(k, 0) - want.get(k, 0)) for k in set(got) | set(want))
        if l1 > hist_limit:
            errors.append(f"{what}: L1 distance {l1} > {hist_limit}")

    assert len(ours["iterations"]) == len(reference["iterations"])
    for got, want in zip(ours["iterations"], reference["iterations"]):
        n = want["iter"]
        if got["loss_warmup"] != want["loss_warmup"]:
            errors.append(f"iter {n}: loss_warmup {got['loss_warmup']} != {want['loss_warmup']}")
        required = ("cls", "cls_aux", "total") + (() if want["loss_warmup"] else ("c2s", "s2c", "reg"))
        for term, value in want["losses"].items():
            if term in got["losses"]:
                close(f"iter {n} loss {term}", got["losses"][term], value, tol["loss_rtol"] * abs(value) + 1e-6)
            elif term in required:
                errors.append(f"iter {n}: loss {term} missing")
        for group, value in want["lr"].items():
            close(f"iter {n} lr {group}", got["lr"][group], value, tol["lr_rtol"] * abs(value))
        if not want["loss_warmup"]:
            for name, value in want["thresholds"].items():
                close(f"iter {n} threshold {name}", got["thresholds"][name], value, tol["threshold_atol"])
            for name in ("cpl_hist", "cpl_aux_hist", "spl_argmax_hist"):
                if name not in got:
                    errors.append(f"iter {n}: {name} missing")
        for name in ("cpl_hist", "cpl_aux_hist", "spl_argmax_hist"):
            if name in got and name in want:
                histogram(f"iter {n} {name}", got[name], want[name])
        for k, (o, r) in enumerate(zip(got.get("spl_mass", []), want.get("spl_mass", []))):
            close(f"iter {n} spl_mass[{k}]", o, r, tol["spl_mass_frac"] * PIXELS + tol["spl_mass_atol"])
        u = tol["ulp_per_step"] * (n + 1) * EPS
        for net in ("online", "ema"):
            for group in CHECKSUM_GROUPS:
                o, r, i = got["checksums"][net][group], want["checksums"][net][group], init[net][group]
                what = f"iter {n} {net} {group}"
                close(
                    f"{what} sqrt(delta_sumsq)",
                    math.sqrt(o["delta_sumsq"]),
                    math.sqrt(r["delta_sumsq"]),
                    tol["delta_l2_rtol"] * math.sqrt(r["delta_sumsq"]) + u * math.sqrt(i["sumsq"]),
                )
                close(
                    f"{what} delta_sum",
                    o["delta_sum"],
                    r["delta_sum"],
                    tol["delta_sum_rtol"] * r["delta_abssum"] + u * i["abssum"],
                )
                if "sumsq" in o:
                    close(f"{what} sumsq", o["sumsq"], r["sumsq"], (tol["plain_sumsq_rtol"] + 2 * u) * r["sumsq"])
    steps = ours.get("final", {}).get("adam_step_count")
    if steps is not None:
        for group, want in reference["final"]["adam_step_count"].items():
            got = steps.get(group, {})
            if (got.get("min"), got.get("max")) != (want["min"], want["max"]):
                errors.append(f"AdamW step count {group}: ours {got}, reference {want}")
    return errors


def test_official_trajectory_within_published_tolerances(ours):
    errors = trajectory_errors(ours)
    assert not errors, "\n".join(errors[:40])


def test_records_cover_the_schema(ours):
    first_full = next(it for it in ours["iterations"] if not it["loss_warmup"])
    assert {"c2s", "s2c", "reg", "total"} <= set(first_full["losses"])
    # the released loop computes the pseudo-label terms during the warm-up too (weighted by 0.0)
    warm = ours["iterations"][0]
    assert warm["loss_warmup"] and "reg" in warm["losses"]
    assert warm["losses"]["total"] == pytest.approx(warm["losses"]["cls"] + warm["losses"]["cls_aux"], rel=1e-6)
    assert {f"online/{key}" for key in REFERENCE["final"]["per_tensor"]["online"]} <= set(ours["final_state"])


def test_final_weights_per_tensor(ours):
    """Each final tensor's change from init has the reference's L2 norm (the key third of qkv biases is noise)."""
    final = ours["final_state"]
    init = np.load(CASE_DIR / "init_weights.npz")
    per_tensor = REFERENCE["final"]["per_tensor"]
    checked = 0
    for net, prefix in (("online", "online/"), ("ema", "ema/")):
        for key, want in per_tensor[net].items():
            if key.endswith("attn.qkv.bias"):
                continue
            owner = "online" if net == "online" or key.startswith("encoder.") else "assignment"
            start = init[f"{owner}/{key}"]
            delta = final[prefix + key].astype(np.float64) - start.astype(np.float64)
            limit = TOL["final_rtol"] * want["delta_l2"] + 16 * EPS * np.linalg.norm(start.astype(np.float64))
            assert abs(np.linalg.norm(delta) - want["delta_l2"]) <= limit, f"{net} {key}"
            checked += 1
    assert checked > 100


@pytest.mark.parametrize(
    ("override", "symptom"),
    [
        ("warmup_zero_terms=false", "online decoder"),  # the decoder misses weight decay and Adam steps
        ("crf_filter=exact", "loss reg"),  # an exact Gaussian is ~1.7x the released lattice
    ],
)
def test_a_deviation_from_the_released_loop_is_caught(override, symptom):
    errors = trajectory_errors(_run(CASE_DIR, overrides=[override]))
    assert any(symptom in line for line in errors), errors[:5]


def test_the_public_case_rebuilds_bit_for_bit_from_its_seeds():
    case = REFERENCE["case"]
    inputs, weights = np.load(CASE_DIR / "inputs.npz"), np.load(CASE_DIR / "init_weights.npz")
    rebuilt_inputs, rebuilt_weights = batches(case), initial_weights(case)
    for key in inputs.files:
        np.testing.assert_array_equal(rebuilt_inputs[key], inputs[key], err_msg=key)
    assert sorted(rebuilt_weights) == sorted(weights.files)
    for key in weights.files:
        np.testing.assert_array_equal(rebuilt_weights[key], weights[key], err_msg=key)


def _released_lr(base: float, n: int, *, warmup: int, iters: int) -> float:
    if n < warmup:
        return base * (1 - (1 - n / warmup) * (1 - 1e-6))
    return base * (1 - n / iters) ** 0.9


def test_a_case_of_other_sizes_and_seeds_runs_through_the_same_adapter(tmp_path):
    """3 classes, batch 3, 96 px crops, 6 iterations with a 2-iteration loss warm-up, one heavily padded crop."""
    case = case_block(
        weights_seed=7,
        inputs_seed=8,
        classes=3,
        batch=3,
        crop=96,
        iters=6,
        loss_warmup_iters=2,
        lr_warmup_iters=1,
        padded_crops=[{"iter": 3, "image": 2, "kind": "heavy"}],
        depth=3,
    )
    ours = _run(write_case(tmp_path / "case", case))
    pixels = 3 * 96 * 96
    assert [it["loss_warmup"] for it in ours["iterations"]] == [True, True, True, False, False, False]
    for it in ours["iterations"]:
        n = it["iter"]
        assert it["lr"]["backbone"] == pytest.approx(_released_lr(6e-5, n, warmup=1, iters=6), rel=1e-6)
        assert it["lr"]["decoder"] == pytest.approx(_released_lr(6e-4, n, warmup=1, iters=6), rel=1e-6)
        assert all(math.isfinite(v) for v in it["losses"].values())
        assert sum(it["cpl_hist"].values()) == pixels and sum(it["spl_argmax_hist"]) == pixels
        assert set(it["cpl_hist"]) == {"0", "1", "2", "3", "255"}
        if it["loss_warmup"]:
            assert it["losses"]["total"] == pytest.approx(it["losses"]["cls"] + it["losses"]["cls_aux"], rel=1e-6)
        if n >= 1:  # at n = 0 the lr (6e-10) is below float32 resolution; weight decay acts from then on
            assert it["checksums"]["online"]["decoder"]["delta_sumsq"] > 0
    heavy = ours["iterations"][3]["cpl_hist_per_image"][2]
    assert heavy["255"] > 0.9 * 96 * 96  # the padded crop is ignored outside its box
    assert all(v == {"min": 6, "max": 6} for v in ours["final"]["adam_step_count"].values())

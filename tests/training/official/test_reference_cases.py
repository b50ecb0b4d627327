"""Numbers produced by the official CoSA functions, reproduced through tests/reference_adapter.py.

Tolerances: 1e-5 absolute for losses, gradients, probabilities and maps; exact for label maps; GMM
thresholds (and their EMA) 1e-6; learning rates 1e-12 relative after rounding to the precision the
reference printed. A second case file (batch 2, other sizes) built from the first shows that other
files of the same schema pass through the adapter unchanged.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from reference_adapter import run_case

TESTS = Path(__file__).resolve().parents[2]
CASES_PATH = TESTS / "cosa-reference-cases.json"
CASES = json.loads(CASES_PATH.read_text())["cases"]


def _sig_round(value: float, reference: float) -> float:
    """Round ``value`` to as many significant digits as ``reference`` was printed with."""
    digits = repr(float(reference)).split("e")[0].replace("-", "").replace(".", "").lstrip("0")
    if value == 0:
        return 0.0
    return round(value, max(len(digits), 1) - 1 - math.floor(math.log10(abs(value))))


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, list) and any(v is None for v in value):
        value = [math.nan if v is None else v for v in value]
    return np.asarray(value, dtype=np.float64)


def check_outputs(name: str, got: dict[str, Any], want: dict[str, Any]) -> None:
    """Assert ``got`` matches ``want`` at the tolerance of the case's kind of output."""
    for key, expected in want.items():
        assert key in got, f"{name}: adapter returned no {key!r}"
        actual = got[key]
        if name.startswith("lr_schedule"):
            assert set(actual) == set(expected)
            for step, lrs in expected.items():
                for a, e in zip(actual[step], lrs, strict=True):
                    assert _sig_round(a, e) == pytest.approx(e, rel=1e-12, abs=0), f"{name} step {step}"
            continue
        a, e = _as_array(actual), _as_array(expected)
        assert a.shape == e.shape, f"{name}/{key}: shape {a.shape} != {e.shape}"
        assert np.array_equal(np.isnan(a), np.isnan(e)), f"{name}/{key}: NaN pattern differs"
        a, e = np.nan_to_num(a), np.nan_to_num(e)
        if key.startswith("cpl"):
            np.testing.assert_array_equal(a, e, err_msg=f"{name}/{key}")
        elif name.startswith("dynamic_threshold"):
            np.testing.assert_allclose(a, e, rtol=0, atol=1e-6, err_msg=f"{name}/{key}")
        else:
            np.testing.assert_allclose(a, e, rtol=0, atol=1e-5, err_msg=f"{name}/{key}")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_reference_case(case: dict) -> None:
    check_outputs(case["name"], run_case(case), case["outputs"])


def test_every_reference_case_is_covered() -> None:
    names = {c["name"] for c in CASES}
    assert len(names) == 8
    for case in CASES:
        assert set(run_case(case)) == set(case["outputs"])


# --- a second case file: batch 2 and other sizes -------------------------------------------------


def _stack(value: Any) -> list:
    return [value[0], value[0]] if isinstance(value, list) else value


def _batched_copy(case: dict) -> dict:
    """The case with every batch-first input stacked twice, and the outputs that this implies."""
    out = copy.deepcopy(case)
    out["description"] = "two stacked copies of " + case["name"]
    inputs, outputs, name = out["inputs"], out["outputs"], case["name"]
    batch_keys = [k for k in inputs if "Bx" in k or k.startswith("image_")]
    for key in batch_keys:
        inputs[key] = _stack(inputs[key])
    if name == "cpl_two_threshold_mask":
        inputs["img_box_y0y1x0x1"] = [case["inputs"]["img_box_y0y1x0x1"]] * 2
    per_image = ("spl_masked_temperature_softmax", "cpl_two_threshold_mask", "teacher_multiscale_flip_fusion_toy_model")
    if name in per_image:
        outputs = {k: _stack(v) for k, v in outputs.items()}
    if name == "cam_loss_v1_seg_to_cam":  # the mean runs over twice the rows: gradients halve
        half = (np.asarray(outputs["grad_wrt_cam"]) / 2).tolist()
        outputs["grad_wrt_cam"] = _stack(half)
    if name == "dynamic_threshold_gmm3_and_ema":  # duplicated data gives the same GMM fit
        inputs["queue_NxD"] = inputs["queue_NxD"] * 2
    if name == "miou_confusion_matrix":  # every image twice: same scores
        inputs["gts"], inputs["preds"] = inputs["gts"] * 2, inputs["preds"] * 2
    if name == "lr_schedule_poly_with_linear_warmup":  # a third parameter group with the first's lr
        inputs["base_lrs"] = [*inputs["base_lrs"], inputs["base_lrs"][0]]
        outputs["lr_at_step"] = {s: [*v, v[0]] for s, v in outputs["lr_at_step"].items()}
    out["outputs"] = outputs
    return out


def _per_image_case(name: str, inputs: dict[str, Any], split_keys: list[str], out_keys: list[str]) -> dict:
    """A batch-2 case whose expected outputs are the single-image runs stacked."""
    singles = []
    for i in range(2):
        single = {k: ([v[i]] if k in split_keys else v) for k, v in inputs.items()}
        singles.append(run_case({"name": name, "inputs": single, "outputs": dict.fromkeys(out_keys)}))
    outputs = {k: [singles[0][k][0], singles[1][k][0]] for k in out_keys}
    return {"name": name, "description": "batch of 2, other size", "inputs": inputs, "outputs": outputs}


def _other_size_cases(rng: np.random.Generator) -> list[dict]:
    cams = np.round(rng.random((2, 3, 12, 16)), 3)
    cpl = _per_image_case(
        "cpl_two_threshold_mask",
        {
            "valid_cams_BxCxHxW": cams.tolist(),
            "cls_label_BxC": [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]],
            "t_high": 0.6,
            "t_low": 0.3,
            "downscale": 2,
            "img_box_y0y1x0x1": [[0, 12, 2, 16], [1, 10, 0, 9]],
        },
        ["valid_cams_BxCxHxW", "cls_label_BxC", "img_box_y0y1x0x1"],
        ["cpl_BxHxW"],
    )
    spl = _per_image_case(
        "spl_masked_temperature_softmax",
        {
            "seg_logits_BxKxHxW": np.round(rng.normal(size=(2, 5, 3, 7)), 4).tolist(),
            "cls_label_BxC": [[0, 1, 0, 1], [1, 1, 0, 0]],
            "temperature": 0.05,
        },
        ["seg_logits_BxKxHxW", "cls_label_BxC"],
        ["spl_probs_BxKxHxW"],
    )
    teacher_inputs = copy.deepcopy(next(c for c in CASES if c["name"].startswith("teacher"))["inputs"])
    teacher_inputs["image_1x3x8x8"] = np.round(rng.normal(size=(2, 3, 16, 12)), 4).tolist()
    teacher = _per_image_case(
        "teacher_multiscale_flip_fusion_toy_model",
        teacher_inputs,
        ["image_1x3x8x8"],
        ["cam", "cam_aux", "seg_logits_sum"],
    )
    return [cpl, spl, teacher]


def test_second_case_file_passes_through_the_same_adapter(tmp_path: Path) -> None:
    cases = [_batched_copy(c) for c in CASES] + _other_size_cases(np.random.default_rng(0))
    path = tmp_path / "cases-batch2.json"
    path.write_text(json.dumps({"source": "derived from cosa-reference-cases.json", "cases": cases}))
    reloaded = json.loads(path.read_text())["cases"]
    assert len(reloaded) == len(CASES) + 3
    for case in reloaded:
        check_outputs(case["name"], run_case(case), case["outputs"])
    # The batch-2 variants really are batch 2 (shapes read from the data, not from key names).
    cpl = next(c for c in reloaded if c["name"] == "cpl_two_threshold_mask")
    assert np.asarray(run_case(cpl)["cpl_BxHxW"]).shape == (2, 8, 8)

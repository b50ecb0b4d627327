"""benchmarks/ablation.py: rows branched from a shared warm-up are the runs they stand for."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # the repository's benchmarks/

import ablation  # noqa: E402
from tiny_training import DATA, tiny_config  # noqa: E402

from cosa_sdk.training.engine.trainer import Trainer  # noqa: E402

pytestmark = pytest.mark.usefixtures("cosa_cache")  # generated data in the session's temp folder


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {**trainer.online.state_dict(), **{f"ema.{k}": v for k, v in trainer.assignment.state_dict().items()}}


@pytest.mark.parametrize("row", ["+perplexity", "+dynamic", "uniform"])
def test_a_branched_row_equals_the_run_trained_from_scratch(tmp_path, row) -> None:
    base = tiny_config(iters=5, loss_warmup_iters=3, eval_every=100, sample_every=100, t_high=0.65, t_low=0.35)
    config = ablation.row_config(row, base, seed=0)
    straight = Trainer(config, run_dir=tmp_path / "straight", data_spec=DATA)
    straight.fit()
    warm, _ = ablation.shared_warmup(config, base.loss_warmup_iters, DATA, tmp_path, {})
    ablation.branch(warm, tmp_path / "branched", config)
    branched = Trainer(config, run_dir=tmp_path / "branched", data_spec=DATA, resume=True)
    assert branched.step == 3
    branched.fit()
    expected, got = _weights(straight), _weights(branched)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_a_branch_runs_under_the_rows_thresholds_not_the_warm_ups(tmp_path) -> None:
    warm_config = tiny_config(iters=4, loss_warmup_iters=2, eval_every=100, sample_every=100, t_high=0.9, t_low=0.1)
    Trainer(warm_config, run_dir=tmp_path / "warm", data_spec=DATA).fit(stop_after=2)
    config = dataclasses.replace(warm_config, t_high=0.65, t_low=0.35)
    ablation.branch(tmp_path / "warm" / "last.pt", tmp_path / "row", config)
    row = Trainer(config, run_dir=tmp_path / "row", data_spec=DATA, resume=True)
    assert (row.losses.thresholds.high, row.losses.thresholds.low) == (0.65, 0.35)


def test_results_are_written_after_every_run_and_appended(tmp_path) -> None:
    record = {"row": "released", "seed": 0, "seg_miou": 30.0, "cam_miou": 25.0, "pair_miou": None, "minutes": 2.0}
    out = tmp_path / "ablation.json"
    base = tiny_config()
    ablation.write_results(out, base, DATA, [], [record, {**record, "seed": 1, "seg_miou": 34.0}])
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["row"] == "released" and rows[0]["seg_miou"] == 32.0 and rows[0]["seeds"] == [0, 1]
    assert rows[0]["pair_miou"] is None and out.with_suffix(".png").is_file()
    assert "32.0 ± 2.8" in ablation.format_table(rows)


def test_a_run_that_shared_the_machine_keeps_its_scores_but_not_its_time() -> None:
    record = {"row": "released", "seed": 0, "seg_miou": 30.0, "cam_miou": 25.0, "pair_miou": 9.0, "minutes": 9.0}
    busy = {**record, "seed": 1, "seg_miou": 32.0, "minutes": 17.0, "shared_machine": True}
    (row,) = ablation.summarise([record, busy])
    assert row["seg_miou"] == 31.0 and row["minutes"] == 9.0


def test_paired_differences_subtract_the_released_run_of_the_same_seed() -> None:
    def run(row: str, seed: int, seg: float) -> dict:
        return {"row": row, "seed": seed, "seg_miou": seg, "cam_miou": None, "pair_miou": None, "minutes": 1.0}

    records = [run("released", 0, 50.0), run("released", 1, 40.0), run("ppl+csc", 0, 52.0), run("ppl+csc", 1, 41.0)]
    records.append(run("+dynamic", 2, 60.0))
    (diff,) = ablation.paired_differences(records)
    assert diff["row"] == "ppl+csc" and diff["diffs"] == [2.0, 1.0] and diff["mean"] == 1.5
    assert "+1.5 ± 0.7 over 2 seed(s)" in ablation.format_paired([diff])


def test_minutes_measured_once_show_no_spread() -> None:
    record = {"row": "released", "seed": 0, "seg_miou": 30.0, "cam_miou": 25.0, "pair_miou": 9.0, "minutes": 9.0}
    busy = {**record, "seed": 1, "seg_miou": 32.0, "minutes": 17.0, "shared_machine": True}
    markdown = ablation.format_markdown(ablation.summarise([record, busy]))
    assert "| 31.0 ± 1.4 |" in markdown and markdown.endswith("| 9.0 |")

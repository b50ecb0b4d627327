"""benchmarks/ablation.py: rows branched from a shared warm-up are the runs they stand for; every row runs on
every benchmark and the summary judges a row by its worst benchmark."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # the repository's benchmarks/

import ablation  # noqa: E402
import ablation_benchmarks  # noqa: E402
from tiny_training import DATA, TINY_OVERRIDES, tiny_config  # noqa: E402

from cosa_sdk.training.engine.trainer import Trainer  # noqa: E402

pytestmark = pytest.mark.usefixtures("cosa_cache")  # generated data in the session's temp folder


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {**trainer.online.state_dict(), **{f"ema.{k}": v for k, v in trainer.assignment.state_dict().items()}}


@pytest.mark.parametrize("row", ["+perplexity", "+dynamic", "uniform", "+detail", "avg-pool", "+class-paste", "+erase"])
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
    logged = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    if row == "+class-paste":  # the draws are the step's, so a resumed run pastes the same pixels
        assert sum(entry.get("pasted", 0) for entry in logged) > 0
    if row == "+erase":  # the erased-CAM term acts from the first step, warm-up included
        released, _ = ablation.shared_warmup(ablation.row_config("released", base, seed=0), 3, DATA, tmp_path, {})
        assert released != warm and "erase" in warm.parent.name
        assert any("erase" in entry for entry in logged)


@pytest.mark.parametrize(
    "row, after_warmup",
    [
        ("+affinity", dict(t_high=0.4, t_low=0.25, aux_t_high=0.4, aux_t_low=0.25)),
        ("released", dict(pseudo_scales=(1.0, 1.5), pseudo_flip=True)),  # another teacher
        ("+class-paste", {}),
    ],
)
def test_a_saved_warm_up_serves_rows_that_differ_only_after_it(tmp_path, monkeypatch, row, after_warmup) -> None:
    base = tiny_config(iters=5, loss_warmup_iters=3, eval_every=100, sample_every=100)
    assert not base.warmup_zero_terms  # the teacher does not run in this warm-up
    warm, _ = ablation.shared_warmup(ablation.row_config("released", base, seed=0), 3, DATA, tmp_path, {})
    config = dataclasses.replace(ablation.row_config(row, base, seed=0), **after_warmup)
    straight = Trainer(config, run_dir=tmp_path / "straight", data_spec=DATA)
    straight.fit()

    def no_training(*args, **kwargs):
        raise AssertionError("the saved warm-up should have been reused")

    monkeypatch.setattr(ablation, "Trainer", no_training)
    assert ablation.shared_warmup(config, 3, DATA, tmp_path, {})[0] == warm
    saved = warm.parent / "warmup.json"
    record = json.loads(saved.read_text())
    # a warm-up saved before these keys existed trained with their defaults
    for key in ("cam_pool", "class_paste", "cam_erase"):
        del record["config"][key]
    saved.write_text(json.dumps(record))
    assert ablation.shared_warmup(config, 3, DATA, tmp_path, {})[0] == warm
    ablation.branch(warm, tmp_path / "branched", config)
    branched = Trainer(config, run_dir=tmp_path / "branched", data_spec=DATA, resume=True)
    branched.fit()
    expected, got = _weights(straight), _weights(branched)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    with pytest.raises(AssertionError, match="reused"):  # the learning rate acts during the warm-up
        ablation.shared_warmup(dataclasses.replace(config, lr=config.lr / 2), 3, DATA, tmp_path, {})
    if "pseudo_flip" in after_warmup:  # a teacher that runs during the warm-up (terms weighted 0) counts
        zero = dataclasses.replace(config, warmup_zero_terms=True).to_dict()
        assert ablation.warmup_identity(zero) != ablation.warmup_identity({**zero, "pseudo_flip": False})


def test_a_branch_runs_under_the_rows_thresholds_not_the_warm_ups(tmp_path) -> None:
    warm_config = tiny_config(iters=4, loss_warmup_iters=2, eval_every=100, sample_every=100, t_high=0.9, t_low=0.1)
    Trainer(warm_config, run_dir=tmp_path / "warm", data_spec=DATA).fit(stop_after=2)
    config = dataclasses.replace(warm_config, t_high=0.65, t_low=0.35)
    ablation.branch(tmp_path / "warm" / "last.pt", tmp_path / "row", config)
    row = Trainer(config, run_dir=tmp_path / "row", data_spec=DATA, resume=True)
    assert (row.losses.thresholds.high, row.losses.thresholds.low) == (0.65, 0.35)


def _run(row: str, seed: int, seg: float, benchmark: str = "v2", minutes: float = 1.0) -> dict:
    return {"row": row, "seed": seed, "seg_miou": seg, "cam_miou": seg - 1, "pair_miou": None, "minutes": minutes} | {
        "benchmark": benchmark
    }


def _benchmarks(*labels: str) -> dict[str, dict]:
    return {label: {"data": f"synthetic:version={label[1:]}", "title": "", "cooccurring_pair": []} for label in labels}


def test_results_are_written_after_every_run_and_appended(tmp_path) -> None:
    record = {"row": "released", "seed": 0, "seg_miou": 30.0, "cam_miou": 25.0, "pair_miou": None, "minutes": 2.0}
    record["benchmark"] = "v2"
    out = tmp_path / "ablation.json"
    base = tiny_config()
    ablation.write_results(out, base, DATA, _benchmarks("v2"), [record, {**record, "seed": 1, "seg_miou": 34.0}])
    payload = json.loads(out.read_text())
    rows = payload["rows"]  # one benchmark: its rows at the top level, as before benchmarks existed
    assert rows[0]["row"] == "released" and rows[0]["seg_miou"] == 32.0 and rows[0]["seeds"] == [0, 1]
    assert rows[0]["pair_miou"] is None and out.with_suffix(".png").is_file()
    assert payload["benchmarks"]["v2"]["rows"] == rows and payload["summary"][0]["seg_miou"]["worst"] == 32.0
    assert "32.0 ± 2.8" in ablation.format_table(rows)


def test_runs_from_before_benchmarks_belong_to_their_files_data() -> None:
    old = {"data": "synthetic", "cooccurring_pair": ["crescent", "star"], "runs": [{"row": "released", "seed": 0}]}
    runs, infos = ablation_benchmarks.previous_results(old)
    assert runs[0]["benchmark"] == "v2" and infos == {
        "v2": {"data": "synthetic", "title": "", "cooccurring_pair": ["crescent", "star"]}
    }
    old["data"] = "synthetic:n_train=16,version=3"
    assert ablation_benchmarks.previous_results(old)[0][0]["benchmark"] == "v3"


def test_every_row_runs_on_every_benchmark_unless_told() -> None:
    specs = ablation_benchmarks.benchmark_specs
    assert list(specs("synthetic", None)) == ["v1", "v2", "v3", "v4"]
    assert specs("synthetic:n_train=16,size=96", [3, 1]) == {
        "v3": "synthetic:n_train=16,size=96,version=3",
        "v1": "synthetic:n_train=16,size=96,version=1",
    }
    assert specs("synthetic:version=4", None) == {"v4": "synthetic:version=4"}
    with pytest.raises(SystemExit, match="not in both"):
        specs("synthetic:version=4", [2])
    with pytest.raises(SystemExit, match="versions of the synthetic benchmark"):
        specs("custom:/data/pets", [2])
    assert ablation_benchmarks.parse_benchmarks("1,2,3,4") == [1, 2, 3, 4]
    for bad in ("1,9", "2,2", "x", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="--benchmarks"):
            ablation_benchmarks.parse_benchmarks(bad)


def test_a_row_is_judged_by_its_worst_benchmark() -> None:
    records = [
        _run("released", 0, 50.0, "v2"),
        _run("released", 0, 30.0, "v3"),
        _run("ppl+csc", 0, 60.0, "v2"),  # better on average, but worse where it matters
        _run("ppl+csc", 0, 24.0, "v3"),
        _run("full", 0, 90.0, "v2"),
        _run("full", 0, 80.0, "v3"),
        _run("full+detail", 0, 95.0, "v2"),
        _run("full+detail", 0, 85.0, "v3"),
        _run("+dynamic", 0, 70.0, "v2"),  # best of all, but never measured on v3
    ]
    summary = ablation.summarise_benchmarks(records, _benchmarks("v2", "v3"))
    by_row = {e["row"]: e for e in summary}
    assert [e["row"] for e in summary] == ["released", "+dynamic", "ppl+csc", "full", "full+detail"]
    ppl = by_row["ppl+csc"]
    assert ppl["seg_miou"] == {
        "per_benchmark": {"v2": 60.0, "v3": 24.0},
        "mean": 42.0,
        "worst": 24.0,
        "worst_benchmark": "v3",
    }
    assert ppl["vs_released"]["per_benchmark"] == {"v2": 10.0, "v3": -6.0} and ppl["vs_released"]["worst"] == -6.0
    assert ppl["minutes"]["total"] == 2.0 and ppl["complete"] and not by_row["+dynamic"]["complete"]
    # not full or full+detail (masks), not +dynamic (one benchmark)
    assert ablation_benchmarks.judged_best(summary) == "released"
    table = ablation_benchmarks.format_summary(summary)
    assert "released *" in table and "24.0 (v3)" in table and "-6.0 (v3)" in table and "1 (!)" in table
    assert "| ppl+csc | 2 | 42.0 | 24.0 (v3) |" in ablation_benchmarks.format_summary(summary, markdown=True)


def test_a_quick_pass_runs_every_row_on_every_benchmark(tmp_path, capsys) -> None:
    out = tmp_path / "ablation.json"
    argv = ["--quick", "--benchmarks", "2,3", "--rows", "released", "--no-shared-warmup", "--out", str(out)]
    argv += ["--workdir", str(tmp_path)]
    assert ablation.main([*argv, *TINY_OVERRIDES, "iters=3", "eval_every=3"]) == 0
    payload = json.loads(out.read_text())
    assert [(r["benchmark"], r["row"]) for r in payload["runs"]] == [("v2", "released"), ("v3", "released")]
    assert payload["runs"][1]["data"] == "synthetic:n_train=16,n_val=8,seed=0,size=96,version=3"
    assert payload["benchmarks"]["v3"]["cooccurring_pair"] == ["heart", "arrow"]
    (released,) = payload["summary"]
    assert set(released["seg_miou"]["per_benchmark"]) == {"v2", "v3"} and released["complete"]
    assert payload["judged_best"] == "released" and "rows" not in payload
    assert set(payload["runs"][0]["postprocess"]) == set(ablation.VARIANTS)  # the SDK's post-processing, scored
    printed = capsys.readouterr().out
    assert "by post-processing" in printed
    assert "== benchmark v2 (" in printed and "== benchmark v3 (" in printed and "mean and WORST" in printed
    assert (tmp_path / "v2" / "released-seed0").is_dir() and (tmp_path / "v3" / "released-seed0").is_dir()
    # --append: a later pass on another benchmark joins the tables and the summary
    assert ablation.main([*argv[:2], "1", *argv[3:], "--append", *TINY_OVERRIDES, "iters=3", "eval_every=3"]) == 0
    payload = json.loads(out.read_text())
    assert [r["benchmark"] for r in payload["runs"]] == ["v2", "v3", "v1"] and list(payload["benchmarks"]) == [
        "v1",
        "v2",
        "v3",
    ]
    assert payload["summary"][0]["benchmarks"] == ["v1", "v2", "v3"]


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


def test_post_processing_scores_are_averaged_per_row_and_tabled() -> None:
    def run(seed: int, seg: float, edge: float) -> dict:
        post = {name: {"seg_miou": seg, "images_right": 50.0} for name in ablation.VARIANTS}
        post["edge_aware"] = {"seg_miou": edge, "images_right": 70.0}
        record = {"row": "released", "seed": seed, "seg_miou": seg, "images_right": 40.0, "cam_miou": None}
        return record | {"pair_miou": None, "minutes": 1.0, "postprocess": post}

    (row,) = ablation.summarise([run(0, 30.0, 34.0), run(1, 40.0, 42.0)])
    assert row["images_right"] == 40.0 and row["postprocess"]["edge_aware"] == {"seg_miou": 38.0, "images_right": 70.0}
    table = ablation.format_postprocess([row])
    assert "35.0 / 40" in table and "38.0 / 70" in table
    assert ablation.format_postprocess(ablation.summarise([{**run(0, 30.0, 1.0), "postprocess": None}])) == ""


def test_a_technique_given_as_key_value_is_refused_not_dropped(tmp_path: Path) -> None:
    # each row sets the techniques itself, so contrastive=true would otherwise train the released row unchanged
    with pytest.raises(SystemExit, match=r"contrastive is set by each row.*\+contrastive"):
        ablation.main(["--rows", "released", "--workdir", str(tmp_path), "contrastive=true"])
    with pytest.raises(SystemExit, match=r"dynamic_threshold is set by each row.*--rows \+dynamic all-three\)"):
        ablation.main(["--rows", "released", "--workdir", str(tmp_path), " dynamic-threshold =true"])


def test_a_row_branches_from_its_warm_up_at_the_side_auto_resolution_chose(tmp_path: Path) -> None:
    """The `cpu` preset's resolution=auto: the warm-up and the row train at one chosen side (the row was
    refused as another config when only the warm-up had chosen it)."""
    base = tiny_config(resolution="auto", crop_size=48, iters=4, loss_warmup_iters=2, eval_every=100)
    chosen, _ = ablation.resolve_resolution(base, DATA)
    assert chosen.crop_size != base.crop_size  # the case being tested: auto moves the side
    record = ablation.run_row("released", 0, base, DATA, tmp_path, [], {})
    assert record["seg_miou"] is not None
    resumed = Trainer(chosen, run_dir=tmp_path / "released-seed0", data_spec=DATA, resume=True)
    assert resumed.step == 4 and resumed.config.crop_size == chosen.crop_size

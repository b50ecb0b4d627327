"""benchmarks/targets.py: the small-object targets judged per benchmark from result files, and on the worst one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # the repository's benchmarks/

import targets


def _run(bench: str, seed: int, seg: float, right: float, *, default: tuple[float, float] | None) -> dict:
    run = {"row": "released", "seed": seed, "benchmark": bench, "seg_miou": seg, "images_right": right}
    run.update(cam_miou=seg + 1, minutes=50.0)
    if default is not None:
        run["postprocess"] = {
            "drop_absent": {"seg_miou": default[0], "images_right": default[1]},
            "edge_aware+drop_absent": {"seg_miou": default[0] + 1, "images_right": default[1] + 1},
        }
    return run


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    def write(name: str, payload: dict) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(payload))
        return path

    weak = write(
        "weak.json",
        {
            "runs": [
                _run("v1", 0, 64.0, 72.0, default=(66.0, 75.0)),
                _run("v1", 1, 60.0, 70.0, default=(62.0, 73.0)),
                _run("v3", 0, 52.0, 56.0, default=(54.0, 67.5)),
                {**_run("v3", 0, 10.0, 5.0, default=None), "row": "+contrastive"},
            ]
        },
    )
    plain = write("plain.json", {"runs": [_run("v4", 0, 61.0, 71.0, default=None)]})
    return {
        "weak": weak,
        "plain": plain,
        "full_v1": write("v1.json", {"seg_miou": 74.0, "images_right": 90.0}),
        "full_v3": write("v3.json", {"seg_miou": 76.88, "images_right": 81.0}),
        "full_v4": write("v4.json", {"seg_miou": 69.0, "images_right": 80.0}),
    }


def test_each_benchmark_is_judged_on_the_bundles_default_output(files):
    result = targets.check(
        targets.weak_scores([files["weak"], files["plain"]]),
        targets.full_scores([f"v1={files['full_v1']}", f"v3={files['full_v3']}", f"v4={files['full_v4']}"]),
        ("v1", "v2", "v3", "v4"),
    )
    v1, v2, v3, v4 = (result["benchmarks"][b] for b in ("v1", "v2", "v3", "v4"))
    assert v1["weak"]["seeds"] == [0, 1]
    assert v1["weak"]["default"] == {"seg_miou": 64.0, "images_right": 74.0}  # mean of the two seeds
    assert v1["ratio"] == pytest.approx(64.0 / 74.0)
    assert v1["checks"] == {
        "full >= 70": True,
        "weak >= 60": True,
        "weak / full >= 0.85": True,
        "images right >= 70 %": True,
    }
    assert v3["checks"] == {
        "full >= 70": True,
        "weak >= 60": False,
        "weak / full >= 0.85": False,
        "images right >= 70 %": False,
    }
    assert v3["weak"]["plain"]["seg_miou"] == 52.0  # the other row of the same benchmark is not the preset
    # a model without class scores deploys plain bilinear, so that is what is judged
    assert v4["weak"]["default"] == {"seg_miou": 61.0, "images_right": 71.0}
    assert v4["checks"]["full >= 70"] is False
    assert v4["checks"]["weak / full >= 0.85"] is True
    assert set(v2["checks"].values()) == {None}  # not run: no verdict, and no target can be met everywhere
    assert result["met_on_every_benchmark"] == {
        "full >= 70": False,
        "weak >= 60": False,
        "weak / full >= 0.85": False,
        "images right >= 70 %": False,
    }


def test_targets_met_everywhere_when_every_benchmark_meets_them(files):
    result = targets.check(
        targets.weak_scores([files["weak"]]), targets.full_scores([f"v1={files['full_v1']}"]), ("v1",)
    )
    assert all(result["met_on_every_benchmark"].values())


def test_the_table_and_json_name_every_benchmark_and_what_is_missing(files, tmp_path, capsys):
    out = tmp_path / "targets.json"
    argv = ["--weak", str(files["weak"]), "--full", f"v3={files['full_v3']}", "--benchmarks", "v3", "v2"]
    result = targets.main([*argv, "--out", str(out)])
    text = capsys.readouterr().out
    assert "| v3 | 0 | 54.00 / 67.5 % | 52.00 / 56.0 % | 55.00 / 68.5 % | 76.88 / 81.0 % | 0.70 | full >= 70 |" in text
    assert "| v2 | – | – | – | – | – | – | none (not run: full >= 70, weak >= 60" in text
    assert "- full >= 70: not met on every benchmark" in text
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))


def test_bad_arguments_name_the_fix(files):
    with pytest.raises(SystemExit, match="BENCH=FILE"):
        targets.full_scores([str(files["full_v1"])])
    with pytest.raises(SystemExit, match="seed given twice"):
        targets.weak_scores([files["weak"], files["weak"]])

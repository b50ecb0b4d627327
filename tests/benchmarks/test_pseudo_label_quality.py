"""benchmarks/pseudo_label_quality.py: scores the CAM pseudo-labels a trained run's own training step makes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # the repository's benchmarks/

import pseudo_label_quality as plq  # noqa: E402
from tiny_training import DATA, tiny_config  # noqa: E402

from cosa_sdk.training.config import TrainConfig  # noqa: E402
from cosa_sdk.training.engine.checkpoint import build_network, load_checkpoint  # noqa: E402
from cosa_sdk.training.engine.trainer import Trainer  # noqa: E402
from cosa_sdk.training.evaluation.evaluate import evaluate  # noqa: E402
from cosa_sdk.training.run_record import RunRecord  # noqa: E402

pytestmark = pytest.mark.usefixtures("cosa_cache")


@pytest.fixture
def trained_run(tmp_path, cosa_cache) -> Path:
    run = tmp_path / "run"
    Trainer(tiny_config(iters=3, eval_every=3), run_dir=run, data_spec=DATA).fit()
    return run


def test_every_cam_refinement_and_threshold_pair_is_scored(trained_run, tmp_path) -> None:
    out = tmp_path / "quality.json"
    assert plq.main([str(trained_run), "--thresholds", "0.7,0.45", "0.3,0.15", "--limit", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {(r["cam"], r["refine"], r["t_high"]): r for r in result["rows"]}
    expected = {(cam, refine, high) for cam in ("main", "aux") for refine in (False, True) for high in (0.7, 0.3)}
    assert set(rows) == expected and result["images"] == 3
    for row in rows.values():
        assert 0 <= row["labelled"] <= 100 and 0 <= row["fg_recall"] <= 100 and 0 <= row["miou"] <= 100
        assert next(iter(row["per_class_iou"])) == "background"
    for cam in ("main", "aux"):  # a lower high threshold only turns background or ignored pixels into objects
        for refine in (False, True):
            assert rows[cam, refine, 0.3]["foreground"] >= rows[cam, refine, 0.7]["foreground"]
    # the two CAMs come from different heads, so their pseudo-labels are scored apart, not copied
    assert any(rows["main", False, h]["per_class_iou"] != rows["aux", False, h]["per_class_iou"] for h in (0.7, 0.3))


def test_the_seg_stream_is_scored_against_each_cpl_and_the_masks(trained_run) -> None:
    result = plq.measure(trained_run, pairs=((0.7, 0.45),), limit=4)
    record = load_checkpoint(trained_run / "best.pt")
    run_record = RunRecord.from_checkpoint(record)
    scores = evaluate(
        build_network(record, "assignment"),
        run_record.eval_dataset(),
        num_classes=len(run_record.classes),
        limit=4,
        with_cams=False,
    )
    # the seg stream over every pixel is the label-free seg mIoU `cosa eval` gives the same network
    assert result["seg"]["miou"] == pytest.approx(scores["seg_miou"], abs=0.01)
    for row in result["rows"]:
        assert 0 <= row["seg_agreement"] <= 100 and 0 <= row["seg_miou"] <= 100
        shares = [v for v in row["per_class_seg_agreement"].values() if v is not None]
        assert shares and all(0 <= v <= 100 for v in shares)


def test_training_images_can_be_scored(trained_run) -> None:
    result = plq.measure(trained_run, pairs=((0.7, 0.45),), split="train", limit=2)
    assert result["split"] == "train" and result["images"] == 2


def test_the_teacher_can_see_other_scales_than_the_run_did(trained_run) -> None:
    own = plq.measure(trained_run, pairs=((0.7, 0.45),), limit=2)
    trained = TrainConfig.from_dict(load_checkpoint(trained_run / "best.pt")["config"])
    assert own["teacher"] == {"scales": list(trained.pseudo_scales), "flip": trained.pseudo_flip}
    wider = plq.measure(trained_run, pairs=((0.7, 0.45),), limit=2, scales=(1.0, 0.5, 1.5), flip=True)
    assert wider["teacher"] == {"scales": [1.0, 0.5, 1.5], "flip": True}
    assert wider["teacher"] != own["teacher"]
    # another teacher gives other pseudo-labels; the seg stream's own forward does not change
    assert [r["per_class_iou"] for r in wider["rows"]] != [r["per_class_iou"] for r in own["rows"]]
    assert wider["seg"] == own["seg"]


def test_agreement_is_read_along_the_cpl_rows() -> None:
    matrix = np.array([[6, 2, 0], [1, 1, 0], [0, 0, 0]])  # rows: the CPL's class; columns: the seg stream's
    overall, per_class = plq._agreement(matrix)
    assert overall == pytest.approx(70.0)
    assert per_class == [pytest.approx(75.0), pytest.approx(50.0), None]


def test_bad_input_is_named(tmp_path, capsys) -> None:
    assert plq.main([str(tmp_path / "missing")]) == 2
    assert "no checkpoint there" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plq.main([str(tmp_path), "--thresholds", "0.3,0.5"])
    assert "need 0 < LOW < HIGH < 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plq.main([str(tmp_path), "--teacher-scales", "1.0,-2"])
    assert "each scale must be in (0, 4]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plq.main([str(tmp_path), "--teacher-flip", "yes"])
    assert "say on or off" in capsys.readouterr().err

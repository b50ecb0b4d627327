"""One record of a run: training writes it, and eval, the demo and export read the same sizes from it."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import torch

from cosa_sdk.constants import TTA_SCALES
from cosa_sdk.errors import CosaConfigError, CosaModelError
from cosa_sdk.training.config import preset
from cosa_sdk.training.engine.checkpoint import load_checkpoint, save_checkpoint
from cosa_sdk.training.run_record import RECORD_KEY, RunRecord

DATA = "synthetic:n_train=8,n_val=3,size=64,seed=5"
SMALL = {
    "backbone": "vit_tiny_patch16_224",
    "backbone_weights": None,
    "freeze_blocks": 0,
    "crop_size": 64,
    "eval_size": 80,  # deliberately not the crop size: every reader must take this one
    "batch_size": 2,
    "iters": 2,
    "loss_warmup_iters": 1,
    "lr_warmup_iters": 1,
    "eval_every": 2,
    "checkpoint_every": 2,
    "sample_every": 100,
    "num_workers": 0,
    "decoder_channels": 16,
    "dilation": 2,
    "progress": False,
    "pseudo_scales": (1.0,),
}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    from cosa_sdk.training.engine.trainer import Trainer

    run = tmp_path_factory.mktemp("run-record") / "run"
    config = dataclasses.replace(preset("tiny"), **SMALL)
    trainer = Trainer(config, run_dir=run, data_spec=DATA, preset_name="tiny")
    assert trainer.val_set.eval_size == 80
    trainer.fit()
    return run


def test_training_writes_the_record_of_its_run(trained_run: Path) -> None:
    record = load_checkpoint(trained_run / "best.pt")
    run = RunRecord.from_checkpoint(record)
    assert record[RECORD_KEY] == run.to_dict()
    assert run.eval_size == 80 and run.input_size == (80, 80) and run.crop_size == 64
    assert run.data_spec == DATA and run.preset == "tiny" and run.supervision == "weak"
    assert list(run.classes) == record["classes"] and len(run.palette) == len(run.classes) + 1
    assert run.tta_scales is None  # the tiny preset scores without TTA


def test_eval_demo_and_export_use_the_recorded_size(trained_run: Path, monkeypatch) -> None:
    from cosa_sdk.demo import app
    from cosa_sdk.export.bundle import bundle_config
    from cosa_sdk.export.source import load_source
    from cosa_sdk.training import cli
    from cosa_sdk.training.evaluation import evaluate as evaluate_module

    seen = {}

    def fake_evaluate(network, dataset, **kwargs):
        seen.setdefault("sizes", []).append((dataset.eval_size, tuple(dataset[0]["image"].shape[-2:])))
        return {"seg_miou": 0.0, "seg_miou_gt_filtered": 0.0, "cam_miou": 0.0}

    monkeypatch.setattr(evaluate_module, "evaluate", fake_evaluate)
    monkeypatch.setattr(evaluate_module, "format_scores", lambda scores: "")
    monkeypatch.setattr(app, "evaluate", fake_evaluate)
    monkeypatch.setattr(app, "format_scores", lambda scores: "")
    args = argparse.Namespace(
        checkpoint=str(trained_run / "best.pt"), network="auto", device="cpu", data=None, split="val",
        crf=False, tta=False, limit=1, json_out=None,
    )  # fmt: skip
    assert cli.eval_command(args) == 0
    (trained_run.parent / "demo").mkdir(exist_ok=True)
    app.eval_stage(trained_run, trained_run.parent / "demo", DATA)
    assert seen["sizes"] == [(80, (80, 80)), (80, (80, 80))]
    source = load_source(trained_run / "best.pt")
    assert source.input_size == (80, 80)
    cosa_json = bundle_config(source, artifacts={}, onnx={}, metrics={})
    assert cosa_json["input_size"] == [80, 80] and cosa_json["trained_at"] == {"crop_size": 64, "eval_size": 80}


def test_checkpoints_from_before_the_record_read_as_they_did(tmp_path: Path) -> None:
    trained = {
        "classes": ["cat"],
        "palette": [[0, 0, 0], [128, 0, 0]],
        "data": {"spec": "custom:/x", "crop_size": 224, "mean": [0.5] * 3, "std": [0.25] * 3},
        "config": {"eval_size": None, "cam_threshold": 0.4},
        "preset": "tiny",
    }
    run = RunRecord.from_checkpoint(trained)
    assert (run.eval_size, run.input_size, run.crop_size) == (224, (224, 224), 224)
    assert run.mean == (0.5, 0.5, 0.5) and run.cam_threshold == 0.4 and run.tta_scales is None
    imported = {
        "classes": ["cat"],
        "data": {"spec": None, "crop_size": 448},
        "config": {"input_size": [448, 448], "tta_scales": list(TTA_SCALES)},
    }
    run = RunRecord.from_checkpoint(imported)
    assert run.input_size == (448, 448) and run.tta_scales == TTA_SCALES and run.data_spec is None
    with pytest.raises(CosaConfigError, match="pass --input-size"):
        RunRecord.from_checkpoint({"classes": ["cat"]})
    assert RunRecord.from_checkpoint({"classes": ["cat"]}, size_if_unknown=[96, 128]).input_size == (96, 128)


def test_the_record_survives_a_safe_checkpoint_round_trip(tmp_path: Path) -> None:
    run = RunRecord(
        classes=("cat", "dog"),
        palette=((0, 0, 0), (1, 2, 3), (4, 5, 6)),
        eval_size=96,
        input_size=(96, 128),
        tta_scales=(1.0, 0.5),
        data_spec="voc:/data?split=train",
    )
    path = save_checkpoint(
        tmp_path / "x.pt", {"model_config": {}, "classes": ["cat", "dog"], "online": {}, "run": run.to_dict()}
    )
    loaded = torch.load(path, weights_only=True)
    assert RunRecord.from_checkpoint(loaded) == run
    assert run.with_input_size([64]).input_size == (64, 64)


def test_bad_records_are_refused_with_the_fix() -> None:
    good = RunRecord(classes=("a",), palette=(), eval_size=64, input_size=(64, 64)).to_dict()
    with pytest.raises(CosaModelError, match="newer cosa-sdk"):
        RunRecord.from_dict({**good, "future_key": 1})
    with pytest.raises(CosaModelError, match="0-1 scale"):
        RunRecord.from_dict({**good, "mean": [123.0, 117.0, 104.0]})
    with pytest.raises(CosaModelError, match="supervision"):
        RunRecord.from_dict({**good, "supervision": "strong"})
    with pytest.raises(CosaConfigError, match="does not name its dataset"):
        RunRecord.from_dict(good).eval_dataset()

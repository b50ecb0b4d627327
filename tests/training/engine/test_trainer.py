"""The training engine end to end on tiny generated data: train, eval, resume, run-dir safety, DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")

from tiny_training import DATA, TINY_OVERRIDES, tiny_config  # noqa: E402

from cosa_sdk.cli import main as cosa_main  # noqa: E402
from cosa_sdk.errors import CosaConfigError  # noqa: E402
from cosa_sdk.training.engine.trainer import Trainer  # noqa: E402

pytestmark = pytest.mark.usefixtures("cosa_cache")  # generated data in the session's temp folder


def _logged(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_and_eval_through_the_cli(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    code = cosa_main(["train", "--data", DATA, "--preset", "tiny", "--out", str(run), "--iters", "6", *TINY_OVERRIDES])
    assert code == 0
    for name in ("config.json", "metrics.jsonl", "last.pt", "best.pt"):
        assert (run / name).exists(), name
    assert list((run / "samples").glob("step_*.png"))
    lines = _logged(run)
    train_lines = [entry for entry in lines if "loss" in entry]
    assert [entry["step"] for entry in train_lines] == [1, 2, 3, 4, 5, 6]
    # iteration t (0-based) is logged as step t+1; t <= loss_warmup_iters (2) is classification only
    assert "c2s" not in train_lines[2] and "c2s" in train_lines[3], "pseudo-label losses start after the warm-up"
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in train_lines)
    evals = [entry["eval"] for entry in lines if "eval" in entry]
    assert len(evals) == 2 and {"online", "assignment", "selected"} <= set(evals[-1])
    out_json = tmp_path / "scores.json"
    assert cosa_main(["eval", str(run / "best.pt"), "--json", str(out_json)]) == 0
    scores = json.loads(out_json.read_text())
    expected = {"cam_miou", "seg_miou", "seg_miou_gt_filtered", "per_class_iou", "num_images", "images_right"}
    assert expected <= set(scores)
    assert 0 <= scores["images_right"] <= 100
    assert scores["num_images"] == 4
    assert 0.0 <= scores["seg_miou"] <= 100.0
    assert "background" in scores["per_class_iou"]


def test_existing_run_is_never_overwritten_without_resume_or_force(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    code = cosa_main(["train", "--data", DATA, "--out", str(run), "--iters", "2", *TINY_OVERRIDES])
    assert code == 2
    assert "--resume" in capsys.readouterr().err
    assert (run / "config.json").read_text() == "{}"


def test_unknown_override_and_preset_are_clear_errors(tmp_path, capsys) -> None:
    assert cosa_main(["train", "--out", str(tmp_path / "a"), "no_such_key=1"]) == 2
    assert "unknown override key" in capsys.readouterr().err
    assert cosa_main(["train", "--out", str(tmp_path / "b"), "--preset", "huge"]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path) -> None:
    # The interruption falls after the loss warm-up, so optimizer moments and pseudo-label losses are live.
    config = tiny_config(iters=5, eval_every=100, sample_every=100)
    straight = Trainer(config, run_dir=tmp_path / "straight", data_spec=DATA)
    straight.fit()
    interrupted = Trainer(config, run_dir=tmp_path / "resumed", data_spec=DATA)
    interrupted.fit(stop_after=4)
    assert interrupted.step == 4
    resumed = Trainer(config, run_dir=tmp_path / "resumed", data_spec=DATA, resume=True)
    assert resumed.step == 4
    resumed.fit()
    for name, expected in straight.online.state_dict().items():
        assert torch.equal(resumed.online.state_dict()[name], expected), name
    for name, expected in straight.assignment.state_dict().items():
        assert torch.equal(resumed.assignment.state_dict()[name], expected), name


def test_on_iteration_sees_every_step_and_can_stop_the_run(tmp_path) -> None:
    seen = []

    def watch(step, result):
        seen.append((step, float(result.loss), sorted(result.terms)))
        return step < 3

    trainer = Trainer(tiny_config(iters=6, eval_every=100), run_dir=tmp_path / "run", data_spec=DATA)
    trainer.fit(on_iteration=watch)
    assert [s for s, _, _ in seen] == [1, 2, 3] and trainer.step == 3
    assert all(math.isfinite(loss) for _, loss, _ in seen)
    assert (tmp_path / "run" / "last.pt").is_file()


def test_resume_with_another_config_names_the_difference(tmp_path) -> None:
    Trainer(tiny_config(iters=2), run_dir=tmp_path / "run", data_spec=DATA).fit()
    with pytest.raises(CosaConfigError, match="lr"):
        Trainer(tiny_config(iters=2, lr=1.0), run_dir=tmp_path / "run", data_spec=DATA, resume=True)


def _train_steps(run) -> list[int]:
    return [entry["step"] for entry in _logged(run) if "loss" in entry]


def test_resume_alone_continues_with_the_runs_own_settings(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    Trainer(tiny_config(iters=6), run_dir=run, data_spec=DATA, preset_name="tiny").fit(stop_after=3)
    # The process died after logging steps 4-5 (and half a line) but before the next checkpoint.
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 4, "loss": 1.0}\n{"step": 5, "loss": 1.0}\n{"step": 6, "lo')
    for extra, difference in (
        (["lr=1.0"], "lr: run has"),
        (["--preset", "voc"], "preset: run has 'tiny', now 'voc'"),
        (["--data", "synthetic"], f"data: run has {DATA!r}, now 'synthetic'"),
        (["--supervision", "full"], "supervision: run has 'weak', now 'full'"),
    ):
        assert cosa_main(["train", "--out", str(run), "--resume", *extra]) == 2
        assert difference in capsys.readouterr().err, extra
    assert cosa_main(["train", "--out", str(run), "--resume", "--data", DATA, "--preset", "tiny", "num_workers=0"]) == 0
    assert torch.load(run / "last.pt", weights_only=True)["iteration"] == 6
    assert _train_steps(run) == [1, 2, 3, 4, 5, 6]  # steps 4-5 of the killed process are not listed twice
    assert [entry["step"] for entry in _logged(run) if "eval" in entry] == [3, 6]


def test_resume_of_a_run_that_died_before_its_first_checkpoint_restarts_it(tmp_path) -> None:
    run = tmp_path / "run"
    Trainer(tiny_config(iters=3), run_dir=run, data_spec=DATA, preset_name="tiny").fit()
    for name in ("last.pt", "best.pt"):
        (run / name).unlink()
    assert cosa_main(["train", "--out", str(run), "--resume"]) == 0
    assert _train_steps(run) == [1, 2, 3]
    assert json.loads((run / "config.json").read_text())["data"] == DATA


def test_resume_of_an_empty_run_directory_says_what_to_do(tmp_path, capsys) -> None:
    (tmp_path / "run").mkdir()
    assert cosa_main(["train", "--out", str(tmp_path / "run"), "--resume"]) == 2
    assert "holds no run to continue" in capsys.readouterr().err


def test_all_ignore_pseudo_labels_give_a_finite_loss(tmp_path) -> None:
    # t_low < 0 < t_high > 1: no pixel is confidently background or foreground, so every CPL pixel is ignore.
    config = tiny_config(
        iters=4, t_high=1.5, t_low=-1.0, aux_t_high=1.5, aux_t_low=-1.0, eval_every=100, sample_every=100
    )
    trainer = Trainer(config, run_dir=tmp_path / "run", data_spec=DATA)
    trainer.fit()
    lines = _logged(tmp_path / "run")
    c2s = [entry["c2s"] for entry in lines if "c2s" in entry]
    assert c2s and all(value == 0.0 for value in c2s)


def test_the_paper_techniques_train_through_the_engine(tmp_path) -> None:
    quiet = {"iters": 5, "eval_every": 100, "sample_every": 100}
    plain = tiny_config(**quiet)
    techniques = tiny_config(**quiet, dynamic_threshold=True, perplexity=True, contrastive=True)
    Trainer(plain, run_dir=tmp_path / "plain", data_spec=DATA).fit()
    Trainer(techniques, run_dir=tmp_path / "all", data_spec=DATA).fit()
    before = [e for e in _logged(tmp_path / "plain") if "c2s" in e]
    after = [e for e in _logged(tmp_path / "all") if "c2s" in e]
    assert after and all(math.isfinite(e["csc"]) and e["csc"] >= 0 for e in after), after
    assert any(e["csc"] > 0 for e in after)  # zero on steps whose batch has no image with two classes
    assert not any("csc" in e for e in before)
    # perplexity weights and searched thresholds change the CAM-to-seg loss of the same first co-training step
    assert after[0]["c2s"] != pytest.approx(before[0]["c2s"])
    assert (after[-1]["t_high"], after[-1]["t_low"]) != (plain.t_high, plain.t_low)


def test_full_supervision_trains_the_seg_stream_on_masks(tmp_path) -> None:
    config = tiny_config(iters=3, full_class_loss=True)
    trainer = Trainer(config, run_dir=tmp_path / "full", data_spec=DATA, supervision="full")
    before = trainer.online.classifier.weight.detach().clone()
    summary = trainer.fit()
    assert trainer.assignment is None
    online = summary["metrics"]["online"]
    assert online["cam_miou"] is None and online["seg_miou"] is not None
    logged = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert all(e["cls"] > 0 for e in logged if "seg_ce" in e)  # the CAM head learns the image labels too
    assert not torch.equal(trainer.online.classifier.weight, before)


def test_full_supervision_without_the_class_loss_leaves_the_classifier_alone(tmp_path) -> None:
    config = tiny_config(iters=2)  # full_class_loss is off by default
    trainer = Trainer(config, run_dir=tmp_path / "full", data_spec=DATA, supervision="full")
    before = trainer.online.classifier.weight.detach().clone()
    trainer.fit()
    assert torch.equal(trainer.online.classifier.weight, before)


DDP_SCRIPT = textwrap.dedent(
    """
    import dataclasses, hashlib, os, sys, torch
    from cosa_sdk.training.config import preset
    from cosa_sdk.training.engine.trainer import Trainer
    torch.set_num_threads(1)
    config = dataclasses.replace(
        preset("tiny"), backbone="vit_tiny_patch16_224", backbone_weights=None, freeze_blocks=0, crop_size=32,
        batch_size=2, iters=3, loss_warmup_iters=1, lr_warmup_iters=1, eval_every=100, checkpoint_every=100,
        sample_every=100, num_workers=0, decoder_channels=8, dilation=2, progress=False, pseudo_scales=(1.0,),
        device="cpu")
    trainer = Trainer(config, run_dir=sys.argv[1], data_spec=sys.argv[2])
    trainer.fit()
    digest = hashlib.sha256()
    for name, tensor in sorted(trainer.online.state_dict().items()):
        digest.update(name.encode()); digest.update(tensor.numpy().tobytes())
    with open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.sha"), "w") as handle:
        handle.write(digest.hexdigest())
    """
)


def test_two_process_gloo_ranks_hold_identical_weights(tmp_path) -> None:
    """batch_size is the global batch: 2 split over 2 ranks."""
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    run = tmp_path / "ddp"
    data = "synthetic:n_train=8,n_val=2,size=32,seed=5"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(run),
            data,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    digests = {(run / f"rank{r}.sha").read_text() for r in (0, 1)}
    assert len(digests) == 1


def test_step_batches_split_one_stream_across_ranks_and_resume_exactly() -> None:
    from cosa_sdk.training.engine.sampler import StepBatchSampler

    ranks = [StepBatchSampler(num_samples=5, batch_size=2, total_steps=4, seed=1, rank=r, world_size=2) for r in (0, 1)]
    batches = [list(sampler) for sampler in ranks]
    flat = [key for step in range(4) for rank in (0, 1) for key in batches[rank][step]]
    assert sorted(k % 5 for k in flat[:5]) == [0, 1, 2, 3, 4], "each epoch visits every sample once"
    assert len(set(flat)) == len(flat), "keys never repeat, so augmentations differ across epochs"
    resumed = StepBatchSampler(num_samples=5, batch_size=2, total_steps=4, start_step=2, seed=1, rank=1, world_size=2)
    assert list(resumed) == batches[1][2:]


def test_a_cnn_backbone_trains_through_the_same_engine(tmp_path) -> None:
    config = tiny_config(backbone="tf_efficientnet_lite0", iters=3, aux_layer=None, eval_every=3, sample_every=100)
    summary = Trainer(config, run_dir=tmp_path / "cnn", data_spec=DATA).fit()
    assert summary["iterations"] == 3
    assert summary["metrics"]["assignment"]["cam_miou"] is not None

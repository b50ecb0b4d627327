"""`cosa export` as a command: --force and atomic replacement, clear errors for bad checkpoints and options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from trained_model import cached_checkpoint  # noqa: E402

import cosa_sdk  # noqa: E402
from cosa_sdk.cli import build_parser, main  # noqa: E402
from cosa_sdk.errors import CosaConfigError  # noqa: E402
from cosa_sdk.export import pipeline  # noqa: E402
from cosa_sdk.export.cli import export_command  # noqa: E402
from cosa_sdk.training.engine.checkpoint import CHECKPOINT_FORMAT, load_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    return cached_checkpoint("vit_tiny_patch16_224", input_size=64)


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(["export", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_force_replaces_a_bundle_atomically(checkpoint: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "bundle"
    assert run(capsys, checkpoint, "--out", out, "--skip-parity")[0] == 0
    before = (out / "cosa.json").read_text()

    code, _, err = run(capsys, checkpoint, "--out", out, "--skip-parity", "--input-size", "48", "80")
    assert code == 2 and "already exists" in err and "--force" in err
    assert (out / "cosa.json").read_text() == before

    def broken(*args, **kwargs):
        raise pipeline.CosaModelError("simulated failure while writing the ONNX graph")

    with monkeypatch.context() as patch:  # a failure half way leaves the old bundle whole
        patch.setattr(pipeline, "export_onnx", broken)
        code, _, err = run(capsys, checkpoint, "--out", out, "--force", "--skip-parity")
    assert code == 2 and "simulated failure" in err
    assert (out / "cosa.json").read_text() == before and leftovers(tmp_path) == []

    assert run(capsys, checkpoint, "--out", out, "--force", "--skip-parity", "--input-size", "48", "80")[0] == 0
    config = json.loads((out / "cosa.json").read_text())
    assert config["input_size"] == [48, 80]
    assert sorted(p.name for p in out.iterdir()) == ["cosa.json", "model.onnx", "model.safetensors"]
    assert leftovers(tmp_path) == []


def test_force_never_replaces_a_folder_that_is_not_a_bundle(checkpoint: Path, tmp_path: Path, capsys) -> None:
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "holiday.jpg").write_bytes(b"not really a jpeg")
    code, _, err = run(capsys, checkpoint, "--out", precious, "--force", "--skip-parity")
    assert code == 2 and "not a cosa bundle" in err
    assert (precious / "holiday.jpg").read_bytes() == b"not really a jpeg"


def test_failed_parity_writes_nothing(checkpoint: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    real = pipeline.export_onnx

    def drifting(stream, path, **kwargs):
        with torch.no_grad():  # export a slightly different decoder than the one parity compares with
            weight = stream.decoder.conv8.weight
            saved = weight.clone()
            weight.add_(0.5 * torch.randn_like(weight))
            try:
                return real(stream, path, **kwargs)
            finally:
                weight.copy_(saved)

    monkeypatch.setattr(pipeline, "export_onnx", drifting)
    code, _, err = run(capsys, checkpoint, "--out", tmp_path / "b")
    assert code == 2 and "does not match torch" in err and "Nothing was written" in err
    assert not (tmp_path / "b").exists() and leftovers(tmp_path) == []


def test_input_size_must_be_a_multiple_of_the_stride(checkpoint: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, checkpoint, "--out", tmp_path / "b", "--input-size", "70")
    assert code == 2 and "multiple of the backbone stride 16" in err and "64 or 80" in err
    assert not (tmp_path / "b").exists()


def test_opset_below_17_is_refused(checkpoint: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, checkpoint, "--out", tmp_path / "b", "--opset", "16")
    assert code == 2 and "LayerNormalization" in err


def test_assignment_network_is_exported_on_request(checkpoint: Path, tmp_path: Path, capsys) -> None:
    from safetensors.torch import load_file

    assert run(capsys, checkpoint, "--out", tmp_path / "b", "--network", "assignment", "--skip-parity")[0] == 0
    weights = load_file(str(tmp_path / "b" / "model.safetensors"))
    record = load_checkpoint(checkpoint)
    key = "decoder.conv8.weight"
    torch.testing.assert_close(weights[key], record["assignment"][key])
    assert not torch.equal(weights[key], record["online"][key])
    assert json.loads((tmp_path / "b" / "cosa.json").read_text())["network"] == "assignment"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        ("truncated", "truncated"),
        ({"format": CHECKPOINT_FORMAT, "version": 99, "cosa_sdk_version": "9.0.0"}, "upgrade"),
        ({"weights": [1, 2, 3]}, "not a cosa-sdk checkpoint"),
    ],
    ids=["missing", "truncated", "newer-version", "foreign"],
)
def test_bad_checkpoints_give_clear_errors(content, message: str, checkpoint: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "best.pt"
    if content == "truncated":
        data = checkpoint.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content is not None:
        torch.save(content, path)
    code, _, err = run(capsys, path, "--out", tmp_path / "b")
    assert code == 2 and err.startswith("error: ") and message in err
    assert "Traceback" not in err and not (tmp_path / "b").exists()


def export_args(checkpoint: Path, out: Path, drop_absent: bool | None):
    """`cosa export` arguments from the real parser, with the value `--drop-absent / --no-drop-absent` give
    (None: the option left out)."""
    args = build_parser().parse_args(["export", str(checkpoint), "--out", str(out), "--skip-parity"])
    if drop_absent is not None:
        args.drop_absent = drop_absent
    return args


@pytest.mark.parametrize("drop_absent", [True, False, None])
def test_drop_absent_default_round_trip(drop_absent: bool | None, checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "b"
    assert export_command(export_args(checkpoint, out, drop_absent)) == 0
    chosen = drop_absent is not False  # left out: on, as the model gives class scores
    assert json.loads((out / "cosa.json").read_text())["postprocess"] == {
        "drop_absent": chosen,
        "class_threshold": 0.5,
        "edge_aware": False,
    }
    assert f"postprocess: drop_absent {'on' if chosen else 'off'} by default" in capsys.readouterr().out
    with cosa_sdk.load(out) as seg:
        assert seg.has_class_scores and seg.drop_absent_setting() is chosen
        assert seg.info()["postprocess"]["drop_absent"] is chosen


def test_class_threshold_must_be_a_probability(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(CosaConfigError, match="between 0 and 1"):
        pipeline.export_bundle(checkpoint, tmp_path / "b", pipeline.ExportOptions(class_threshold=1.5))
    assert not (tmp_path / "b").exists()

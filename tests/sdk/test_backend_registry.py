"""The inference-backend registry (`cosa_sdk.backends.REGISTRY`): one entry adds a backend.

A backend registered here only (monkeypatch.setitem) is accepted by name, opened by `cosa_sdk.load`,
named in the "unknown backend" error and tried by `auto` at the place its `auto_rank` gives it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from toy_bundle import cached_toy_bundle

import cosa_sdk
from cosa_sdk import backends
from cosa_sdk.backends import REGISTRY, BackendEntry, BackendOptions, auto_order, check_backend_name, export_hint
from cosa_sdk.backends.base import Backend
from cosa_sdk.bundle import Bundle, read_bundle
from cosa_sdk.errors import CosaInputError, CosaModelError

OLD_ARTIFACT_HINTS = {
    "onnx": "cosa export RUN_DIR/best.pt --out BUNDLE",
    "onnx_int8": "cosa export RUN_DIR/best.pt --out BUNDLE --int8",
    "onnx_int8_vnni": "cosa export RUN_DIR/best.pt --out BUNDLE --int8",
    "tensorrt": "cosa export RUN_DIR/best.pt --out BUNDLE --tensorrt --fp16 (on the GPU that will run it)",
    "torch": "cosa export RUN_DIR/best.pt --out BUNDLE",
}


class FakeBackend(Backend):
    """Numpy only: every pixel is class 1."""

    def __init__(self, weights: Path, num_classes: int) -> None:
        self.name, self.device = "fake", "cpu"
        self.weights, self.num_classes = weights, num_classes
        self.options: BackendOptions | None = None

    def run(self, batch: np.ndarray) -> np.ndarray:
        n, _, height, width = batch.shape
        logits = np.zeros((n, self.num_classes, height, width), np.float32)
        logits[:, 1] = 1.0
        return logits


def open_fake(bundle: Bundle, options: BackendOptions) -> Backend:
    backend = FakeBackend(bundle.artifact("fake"), bundle.num_classes)
    backend.options = options
    return backend


def fake_entry(**fields) -> BackendEntry:
    return BackendEntry(
        **{"open": open_fake, "artifacts": ("fake",), "export_hint": "make-fake BUNDLE", "auto_rank": None, **fields}
    )


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """The toy bundle plus a `fake` artifact."""
    root = Path(shutil.copytree(cached_toy_bundle(), tmp_path / "bundle"))
    (root / "model.fake").write_bytes(b"fake weights")
    config = json.loads((root / "cosa.json").read_text())
    config["artifacts"]["fake"] = "model.fake"
    (root / "cosa.json").write_text(json.dumps(config))
    return root


def test_builtin_names_order_and_hints_are_unchanged() -> None:
    assert backends.BACKENDS == ("auto", "onnxruntime", "onnxruntime-int8", "tensorrt", "torch")
    assert auto_order() == ("tensorrt", "onnxruntime-int8", "onnxruntime", "torch")
    assert {key: export_hint(key) for key in OLD_ARTIFACT_HINTS} == OLD_ARTIFACT_HINTS
    assert export_hint("something-else") == "cosa export"
    assert check_backend_name(" ONNXRuntime_INT8 ") == "onnxruntime-int8"
    with pytest.raises(CosaInputError) as err:
        check_backend_name("nope")
    choices = "auto, onnxruntime, onnxruntime-int8, tensorrt, torch"
    assert str(err.value) == f"unknown backend 'nope': choose one of {choices}"
    with pytest.raises(AttributeError):
        backends.NOT_A_NAME  # noqa: B018


def test_cli_help_lists_the_registry() -> None:
    from cosa_sdk.cli import BACKEND_HELP

    assert BACKEND_HELP.endswith("| onnxruntime | onnxruntime-int8 | tensorrt | torch (default: %(default)s)")


def test_importing_the_registry_loads_no_runtime() -> None:
    code = (
        "import sys, cosa_sdk.backends, cosa_sdk.cli\n"
        "heavy = {'onnxruntime', 'tensorrt', 'torch'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_registered_backend_loads_by_name(monkeypatch, bundle: Path) -> None:
    monkeypatch.setitem(REGISTRY, "fake", fake_entry())
    assert backends.BACKENDS[-1] == "fake" and check_backend_name("FAKE") == "fake"
    seg = cosa_sdk.load(bundle, backend="fake", threads=2)
    assert seg.backend == "fake" and seg.device == "cpu"
    assert seg._backend.options == BackendOptions(providers=None, threads=2)
    assert (seg.segment(np.zeros((10, 12, 3), np.uint8)).mask == 1).all()
    with pytest.raises(CosaInputError, match=r"^unknown backend 'nope': choose one of auto, .*, torch, fake$"):
        cosa_sdk.load(bundle, backend="nope")
    assert cosa_sdk.load(bundle).backend == "onnxruntime"  # auto_rank None: only when asked by name


def test_a_missing_artifact_names_the_entrys_export_hint(monkeypatch, bundle: Path) -> None:
    monkeypatch.setitem(REGISTRY, "fake", fake_entry())
    assert export_hint("fake") == "make-fake BUNDLE"
    with pytest.raises(CosaModelError, match=r"has no 'fake' artifact .* create it with `make-fake BUNDLE`"):
        cosa_sdk.load(cached_toy_bundle(), backend="fake")
    (bundle / "model.fake").unlink()
    with pytest.raises(CosaModelError, match=r"model.fake is missing; .* re-create it with `make-fake BUNDLE`"):
        read_bundle(bundle).artifact("fake")


@pytest.mark.parametrize(
    ("rank", "chosen", "notes"),
    [
        (5, "fake", []),  # before tensorrt: first
        (25, "fake", []),  # between onnxruntime-int8 and onnxruntime
        (35, "fake", ["onnxruntime: model.onnx is missing from the bundle"]),  # after onnxruntime
    ],
)
def test_auto_tries_a_registered_backend_at_its_rank(monkeypatch, bundle: Path, rank, chosen, notes) -> None:
    monkeypatch.setitem(REGISTRY, "fake", fake_entry(auto_rank=rank))
    order = auto_order()
    assert order.index("fake") == sum(1 for name in order if REGISTRY[name].auto_rank < rank)
    (bundle / "model.onnx").unlink()  # onnxruntime, were it tried, would say so in a note
    seg = cosa_sdk.load(bundle)
    assert (seg.backend, seg.notes) == (chosen, notes)


def test_auto_prefers_an_earlier_builtin_and_notes_an_unavailable_backend(monkeypatch, bundle: Path) -> None:
    monkeypatch.setitem(REGISTRY, "fake", fake_entry(auto_rank=35))
    assert cosa_sdk.load(bundle).backend == "onnxruntime"  # the toy model runs: the fake one is not reached
    monkeypatch.setitem(REGISTRY, "fake", fake_entry(auto_rank=5, unavailable=lambda: "no fake accelerator here"))
    seg = cosa_sdk.load(bundle)
    assert seg.backend == "onnxruntime" and seg.notes == ["fake: no fake accelerator here"]
    (bundle / "model.onnx").unlink()
    with pytest.raises(CosaModelError) as err:
        cosa_sdk.load(bundle)
    assert str(err.value) == (
        f"no backend can run the bundle {bundle / 'cosa.json'}: fake: no fake accelerator here; "
        "onnxruntime: model.onnx is missing from the bundle"
    )

"""benchmarks/gpu_check.py: its --cpu-smoke run goes through every section, so the GPU check cannot rot."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def _tensorrt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    """One --cpu-smoke run (about 10 s on 2 cores), its JSON shared by the tests below."""
    tmp = tmp_path_factory.mktemp("gpu-check")
    out = tmp / "gpu_check.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COSA_CACHE_DIR": str(tmp / "cache")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # about 10 s alone; many times that on a machine shared with a training run
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return {"results": json.loads(out.read_text()), "stdout": proc.stdout}


def test_the_smoke_run_records_its_environment_and_every_section(smoke) -> None:
    results = smoke["results"]
    assert results["environment"]["cpu_smoke"] is True
    assert results["environment"]["torch"]
    assert set(results["sections"]) == {"train", "export", "runtimes", "tensorrt"}
    assert results["failed"] == []
    for name in ("train", "export", "runtimes"):
        assert results["sections"][name]["status"] == "ok", name
    assert "== runtimes" in smoke["stdout"]


def test_training_ran_both_phases_at_a_finite_rate(smoke) -> None:
    train = smoke["results"]["sections"]["train"]
    assert train["iterations"] > 0
    assert math.isfinite(train["fit_it_per_s"]) and train["fit_it_per_s"] > 0
    for phase in ("warmup", "cotrain"):
        rate = train["phases"][phase]["it_per_s"]
        assert rate is not None and math.isfinite(rate) and rate > 0, phase
    assert train["projection"]["seconds"] > 0
    assert train["autocast_dtype"] == {"warmup": "bfloat16", "cotrain": "bfloat16"}  # amp=True on the CPU too


def test_export_and_runtime_parity_are_sane(smoke) -> None:
    sections = smoke["results"]["sections"]
    parity = sections["export"]["parity_ort_cpu_vs_torch_cpu"]
    assert parity["argmax_agreement"] > 0.99 and parity["relative_diff"] < 1e-3
    rows = sections["runtimes"]["rows"]
    ort = rows["onnxruntime cpu"]
    assert ort["status"] == "ok" and ort["argmax_agreement"] > 0.9 and ort["max_abs_diff"] < 1e-2
    assert rows["torch fp32"]["status"] == "ok" and rows["torch bf16 autocast"]["status"] == "ok"
    for row in (ort, rows["torch fp32"]):
        assert row["ms_b1"] > 0 and row["sdk"]["segment_ms"] > 0
    assert rows["onnxruntime cuda"]["status"] in ("ok", "skipped")


@pytest.mark.skipif(_tensorrt_importable(), reason="TensorRT is installed here")
def test_tensorrt_is_skipped_cleanly_when_not_importable(smoke) -> None:
    section = smoke["results"]["sections"]["tensorrt"]
    assert section["status"] == "skipped"
    assert "tensorrt not importable" in section["reason"]
    assert "skipped: tensorrt not importable" in smoke["stdout"]

"""benchmarks/cpu_precision.py: float32 and bf16 step times through the demo's calibration, and what `amp=auto`
would choose on each instruction set it can imitate."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # the repository's benchmarks/

import cpu_precision  # noqa: E402
from tiny_training import DATA, tiny_config  # noqa: E402

from cosa_sdk.training.engine.precision import native_bf16  # noqa: E402

pytestmark = pytest.mark.usefixtures("cosa_cache")


def test_both_precisions_are_timed_on_real_steps():
    times = cpu_precision.measure(tiny_config(), DATA, repeats=1)
    assert set(times) == {"off", "bf16"}
    assert all(t["warmup_s"] > 0 and t["cotraining_s"] > 0 for t in times.values())
    rows = [{"isa": "native", **times, "auto": "bf16"}]
    speedup = times["off"]["cotraining_s"] / times["bf16"]["cotraining_s"]
    text = cpu_precision.table(rows)
    assert f"| native | {times['off']['warmup_s']:.2f} / {times['bf16']['warmup_s']:.2f} s |" in text
    assert f"| {speedup:.2f}x | bf16 |" in text


@pytest.mark.parametrize(
    ("isa", "choice"),
    [("AVX512_CORE_AMX", "bf16"), ("AVX512_CORE_BF16", "bf16"), ("AVX512_CORE_VNNI", "float32"), ("AVX2", "float32")],
)
def test_auto_is_reported_per_instruction_set(isa, choice):
    assert cpu_precision.auto_choice(isa) == choice


def test_auto_on_this_cpu_is_what_training_decides():
    expected = "bf16" if native_bf16(torch.device("cpu"))[0] else "float32"
    assert cpu_precision.auto_choice("native") == expected

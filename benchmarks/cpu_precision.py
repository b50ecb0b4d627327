"""Training step times in float32 and in bf16 autocast on this CPU, and on the instruction sets it can imitate.

`amp=auto` (the CPU presets) trains in bf16 only where the CPU multiplies bf16 natively (AVX512-BF16 or AMX,
`training/engine/precision.py`). This script times real warm-up and co-training steps of a preset on a
dataset (`cosa_sdk.demo.budget.measure_step_times`, the demo's own calibration) with `amp=off` and
`amp=bf16`, alternating them `--repeats` times, and reports the median of each. With `--isa` it repeats the
measurement in subprocesses whose oneDNN is capped to an older instruction set (`ONEDNN_MAX_CPU_ISA`; for
AVX2 torch's own kernels too, `ATEN_CPU_CAPABILITY`): a stand-in for a CPU without native bf16, where bf16
is emulated. A cap imitates that CPU's kernels, not its clock or memory, so read the ratio, not the seconds.

Usage: python benchmarks/cpu_precision.py [--preset tiny] [--data synthetic:version=2]
       [--isa native AVX512_CORE_VNNI AVX2] [--repeats 2] [--out cpu_precision.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cosa_sdk.training.config import TrainConfig

# oneDNN's names of instruction sets to cap at, newest first; the first two multiply bf16 natively
ISA_CAPS = ("AVX512_CORE_AMX", "AVX512_CORE_BF16", "AVX512_CORE_VNNI", "AVX512_CORE", "AVX2")
NATIVE_BF16_ISAS = ISA_CAPS[:2]


def measure(config: TrainConfig, data: str, repeats: int) -> dict:
    """Median step times of `config` with amp off and bf16, alternated `repeats` times, in this process."""
    from cosa_sdk.demo.budget import measure_step_times

    samples: dict[str, list] = {"off": [], "bf16": []}
    with tempfile.TemporaryDirectory(prefix="cpu-precision-") as work:
        for _ in range(repeats):
            for amp in samples:
                samples[amp].append(measure_step_times(dataclasses.replace(config, amp=amp), data, workdir=Path(work)))
    return {
        amp: {
            "warmup_s": statistics.median(t.warmup_s for t in times),
            "cotraining_s": statistics.median(t.cotraining_s for t in times),
        }
        for amp, times in samples.items()
    }


def measure_capped(isa: str, args: argparse.Namespace) -> dict:
    """`measure` in a subprocess whose oneDNN (and, for AVX2, torch's kernels) is capped to `isa`."""
    env = dict(os.environ)
    if isa != "native":
        env["ONEDNN_MAX_CPU_ISA"] = isa
        if isa == "AVX2":
            env["ATEN_CPU_CAPABILITY"] = "avx2"
    command = [sys.executable, __file__, "--worker", "--preset", args.preset, "--data", args.data]
    command += ["--repeats", str(args.repeats)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the measurement capped to {isa} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def auto_choice(isa: str) -> str:
    """What `amp=auto` trains in on this CPU ("native"), or on a CPU whose best instruction set is `isa`."""
    if isa == "native":
        import torch

        from cosa_sdk.training.engine.precision import native_bf16

        return "bf16" if native_bf16(torch.device("cpu"))[0] else "float32"
    return "bf16" if isa in NATIVE_BF16_ISAS else "float32"


def table(rows: list[dict]) -> str:
    lines = [
        "| instruction set | warm-up step: fp32 / bf16 | co-training step: fp32 / bf16 | bf16 speed-up | amp=auto |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        off, bf16 = row["off"], row["bf16"]
        lines.append(
            f"| {row['isa']} | {off['warmup_s']:.2f} / {bf16['warmup_s']:.2f} s | "
            f"{off['cotraining_s']:.2f} / {bf16['cotraining_s']:.2f} s | "
            f"{off['cotraining_s'] / bf16['cotraining_s']:.2f}x | {row['auto']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=("tiny", "cpu"))
    parser.add_argument("--data", default="synthetic:version=2")
    parser.add_argument("--isa", nargs="+", default=["native"], choices=("native", *ISA_CAPS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        from cosa_sdk.training.config import preset

        print(json.dumps(measure(preset(args.preset), args.data, args.repeats)))
        return 0
    rows = []
    for isa in args.isa:
        row = {"isa": isa, **measure_capped(isa, args), "auto": auto_choice(isa)}
        rows.append(row)
        print(f"{isa}: float32 {row['off']}, bf16 {row['bf16']}", flush=True)
    print(f"\n{args.preset} on {args.data}, {args.repeats} calibrations per setting:\n{table(rows)}")
    if args.out:
        payload = {"preset": args.preset, "data": args.data, "repeats": args.repeats, "rows": rows}
        args.out.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

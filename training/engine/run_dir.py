"""A run directory: what it holds, how a saved run differs from a config, and resuming or starting over.

Nothing a user wrote is lost: starting over needs `--force`, resuming needs the same computation.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from cosa_sdk.errors import CosaConfigError
from cosa_sdk.training.config import TrainConfig
from cosa_sdk.training.engine.checkpoint import load_checkpoint

RUN_FILES = ("config.json", "metrics.jsonl", "last.pt", "best.pt", "samples")


def run_differences(
    record: dict[str, Any],
    config: TrainConfig,
    *,
    data_spec: str,
    supervision: str = "weak",
    preset_name: str | None = None,
) -> str:
    """What a saved run (checkpoint record) computes differently from `config`, as readable text ("" if nothing).

    The preset name counts only when both sides name one (runs started from Python may have none).
    """
    diff = TrainConfig.from_dict(record["config"]).differences(config, supervision=supervision)
    if preset_name is not None and record.get("preset") not in (None, preset_name):
        diff["preset"] = (record.get("preset"), preset_name)
    if record.get("data", {}).get("spec") != data_spec:
        diff["data"] = (record.get("data", {}).get("spec"), data_spec)
    if record.get("supervision", "weak") != supervision:
        diff["supervision"] = (record.get("supervision"), supervision)
    return ", ".join(f"{k}: run has {a!r}, now {b!r}" for k, (a, b) in sorted(diff.items()))


def saved_run(run_dir: str | Path) -> dict[str, Any] | None:
    """The settings a run directory was started with, from last.pt, else config.json (a run that died before
    its first checkpoint); None when it holds neither. Keys: config (TrainConfig dict), data (the spec),
    supervision, preset (may be None), source (the file read), record (the full checkpoint record or None).
    """
    run_dir = Path(run_dir)
    last = run_dir / "last.pt"
    if last.is_file():
        record = load_checkpoint(last)
        return {
            "config": record["config"],
            "data": record.get("data", {}).get("spec"),
            "supervision": record.get("supervision", "weak"),
            "preset": record.get("preset"),
            "source": last,
            "record": record,
        }
    path = run_dir / "config.json"
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict):
            raise ValueError("no 'config' object")
    except (ValueError, UnicodeDecodeError) as err:
        raise CosaConfigError(
            f"{path} is not the config.json of a `cosa train` run ({err}); start over with --force or "
            "choose another --out"
        ) from err
    return {
        "config": payload["config"],
        "data": payload.get("data"),
        "supervision": payload.get("supervision", "weak"),
        "preset": payload.get("preset"),
        "source": path,
        "record": None,
    }


def prepare_run_dir(
    run_dir: Path,
    config: TrainConfig,
    *,
    data_spec: str,
    supervision: str,
    preset_name: str | None,
    resume: bool,
    force: bool,
    is_main: bool = True,
) -> dict[str, Any] | None:
    """Make `run_dir` ready for a run: the checkpoint record to resume from, or None for a fresh start.

    Nothing is deleted without `force`; `resume` refuses a config that computes something else than the
    saved run. Only the main process (`is_main`) touches files.
    """
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if resume:
        saved = saved_run(run_dir)
        if saved is None:
            raise CosaConfigError(
                f"--resume: {run_dir} holds no run to continue (no last.pt or config.json); start the "
                "run without --resume"
            )
        saved_like = {
            "config": saved["config"],
            "data": {"spec": saved["data"]},
            "supervision": saved["supervision"],
            "preset": saved["preset"],
        }
        listing = run_differences(
            saved_like,
            config,
            data_spec=data_spec,
            supervision=supervision,
            preset_name=preset_name,
        )
        if listing:
            raise CosaConfigError(
                f"--resume with another config than {saved['source']} ({listing}); `cosa train --out "
                f"{run_dir} --resume` alone continues with the run's own settings, or start a new run "
                "in another --out directory"
            )
        record = saved["record"]
        if record is not None:
            if is_main:
                truncate_metrics(run_dir / "metrics.jsonl", int(record["iteration"]))
            return record
        # config.json but no checkpoint: the run died before its first one; restart it from step 0.
        existing = [name for name in existing if name != "config.json"]
        force = True
    if existing and not force:
        raise CosaConfigError(
            f"{run_dir} already holds a run ({', '.join(existing)}): pass --resume to "
            "continue it, --force to start over (deletes it), or choose another --out"
        )
    if is_main:
        if existing and force:
            for name in existing:
                target = run_dir / name
                shutil.rmtree(target) if target.is_dir() else target.unlink()
        run_dir.mkdir(parents=True, exist_ok=True)
    return None


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics.jsonl entries logged after `step` (they are recomputed after a resume) and any line cut
    short by the interruption, so no step is listed twice."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and int(entry.get("step", 0)) <= step:
            kept.append(line + "\n")
    path.write_text("".join(kept), encoding="utf-8")

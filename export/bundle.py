"""Writing a model bundle (docs/contracts.md, "Model bundle"): cosa.json, safetensors weights, atomic publication.

A bundle is assembled in a hidden folder next to the target and renamed into place only when every
artifact is written and checked, so a failed or interrupted export never leaves a half bundle, and
`--force` swaps a complete old bundle for a complete new one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cosa_sdk import __version__
from cosa_sdk.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, CONFIG_NAME, bundle_from_config
from cosa_sdk.errors import CosaConfigError, CosaModelError
from cosa_sdk.export.source import ExportSource

WEIGHTS_NAME = "model.safetensors"
ONNX_NAME = "model.onnx"
ONNX_INT8_NAME = "model.int8.onnx"  # 7-bit weights: any CPU
ONNX_INT8_VNNI_NAME = "model.int8-vnni.onnx"  # 8-bit weights: CPUs with VNNI only (quantize.vnni_path)


def jsonable(value: Any) -> Any:
    """A JSON-safe copy: tensors and numpy scalars become numbers, non-finite floats None, unknown objects str."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # torch tensors, numpy arrays and scalars
        return jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def bundle_config(
    source: ExportSource,
    *,
    artifacts: dict[str, str],
    onnx: dict[str, Any],
    metrics: dict[str, Any],
    int8: dict[str, Any] | None = None,
    postprocess: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """cosa.json with every key listed in docs/contracts.md, "cosa.json" (contract keys, extras, `network`).

    int8: {artifact: {"weight_bits", "agreement", "min_agreement"}} for the INT8 files (the SDK picks by CPU).
    postprocess: {"drop_absent": bool, "class_threshold": x}, the SDK's defaults for the class scores.
    """
    config: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "name": source.checkpoint.parent.name or source.checkpoint.stem,
        "classes": list(source.classes),
        "input_size": list(source.input_size),
        "trained_at": dict(source.trained_at),
        "mean": list(source.mean),
        "std": list(source.std),
        "palette": [list(c) for c in source.palette],
        "backbone": source.backbone,
        "patch_size": source.stride,
        "artifacts": dict(artifacts),
        "metrics": metrics,
        "created_by": f"cosa-sdk {__version__}",
        "source_checkpoint": str(source.checkpoint.resolve()),
        "network": source.network,
        "model_config": source.model_config,
        "weights_source": source.weights_source,
        "onnx": onnx,
    }
    if source.tta_scales:
        config["tta_scales"] = list(source.tta_scales)
    if int8:
        config["int8"] = dict(int8)
    if postprocess is not None:
        config["postprocess"] = dict(postprocess)
    return jsonable(config)


def write_weights(stream: Any, path: str | Path) -> Path:
    """The seg stream's weights (backbone.*, decoder.*, detail.*, classifier.*) as safetensors, loadable without
    unpickling."""
    from safetensors.torch import save_file

    from cosa_sdk.training.model.network import STREAM_PREFIXES

    state = {k: v.detach().contiguous().cpu() for k, v in stream.state_dict().items()}
    bad = [k for k in state if not k.startswith(STREAM_PREFIXES)]
    if bad:
        raise CosaModelError(
            f"unexpected tensors in the seg stream: {bad[:3]}; "
            "expected backbone.*, decoder.*, detail.* and classifier.*"
        )
    save_file(state, str(path), metadata={"format": "cosa-seg-stream", "created_by": f"cosa-sdk {__version__}"})
    return Path(path)


def write_config(stage: Path, config: dict[str, Any]) -> Path:
    """Validate cosa.json with the SDK's own reader, then write it."""
    bundle_from_config(config, source=stage / CONFIG_NAME, root=stage)
    missing = [name for name in config["artifacts"].values() if not (stage / name).is_file()]
    if missing:
        raise CosaModelError(f"internal error: cosa.json lists {missing} but they were not written")
    path = stage / CONFIG_NAME
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def check_target(out: Path, *, force: bool) -> None:
    """Refuse to overwrite without --force, and never replace a folder that is not a bundle."""
    if not out.exists():
        return
    if not out.is_dir():
        raise CosaConfigError(f"--out {out} is a file; pass a folder path for the bundle")
    if not any(out.iterdir()):
        return
    if not (out / CONFIG_NAME).is_file():
        raise CosaConfigError(
            f"--out {out} is a non-empty folder that is not a cosa bundle (no {CONFIG_NAME}); choose another path "
            "(--force only replaces an existing bundle)"
        )
    if not force:
        raise CosaConfigError(f"the bundle {out} already exists: pass --force to replace it, or choose another --out")


@contextlib.contextmanager
def staged_bundle(out: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder next to `out`; on success it replaces `out` atomically, on error it vanishes."""
    out = Path(out).expanduser().absolute()
    check_target(out, force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield stage
        _usual_permissions(stage)
        check_target(out, force=force)  # again: the folder may have appeared while the export ran
        publish(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _usual_permissions(stage: Path) -> None:
    """mkdtemp and safetensors create owner-only files; a bundle gets the permissions of any new file."""
    umask = os.umask(0)
    os.umask(umask)
    stage.chmod(0o777 & ~umask)
    for path in stage.iterdir():
        path.chmod(0o666 & ~umask)


def publish(stage: Path, out: Path) -> None:
    """Rename `stage` to `out`; an existing `out` is moved aside first and deleted only after the swap."""
    if not out.exists():
        os.replace(stage, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    old.rmdir()
    os.replace(out, old)
    try:
        os.replace(stage, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)

"""Training checkpoints: one safe, versioned format for `last.pt`, `best.pt` and imported official weights.

Checkpoints hold only tensors and plain containers, so they load with `torch.load(weights_only=True)`:
nothing a user downloads can execute code.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from cosa_sdk import __version__
from cosa_sdk.constants import NETWORK_NAMES
from cosa_sdk.errors import CosaModelError

CHECKPOINT_FORMAT = "cosa-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write `payload` (plus format/version fields) atomically: a temporary file, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "cosa_sdk_version": __version__, **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(record, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a cosa-sdk checkpoint on the CPU, refusing anything that is not one, with a fix in the message."""
    path = Path(path)
    if not path.is_file():
        raise CosaModelError(f"checkpoint {path} not found: pass RUN_DIR/best.pt or RUN_DIR/last.pt of `cosa train`")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CosaModelError(
            f"{path} is truncated or not a torch checkpoint ({err.__class__.__name__}): re-copy the file, or take "
            "last.pt / best.pt from the run directory again"
        ) from err
    except Exception as err:  # an unpickling error: the file references classes we never allow
        raise CosaModelError(
            f"{path} is not a cosa-sdk checkpoint (it needs objects that are not plain tensors to load); "
            "for a checkpoint of the official CoSA code run `cosa import-official` first"
        ) from err
    if not isinstance(record, dict) or record.get("format") != CHECKPOINT_FORMAT:
        raise CosaModelError(
            f"{path} is not a cosa-sdk checkpoint; for a checkpoint of the official CoSA code run "
            "`cosa import-official CHECKPOINT --out RUN_DIR` first"
        )
    if int(record.get("version", 0)) > CHECKPOINT_VERSION:
        raise CosaModelError(
            f"{path} was written by cosa-sdk {record.get('cosa_sdk_version')} (checkpoint format "
            f"{record.get('version')}); this is cosa-sdk {__version__}: upgrade with pip install -U cosa-sdk"
        )
    missing = [key for key in ("model_config", "classes", "online") if key not in record]
    if missing:
        raise CosaModelError(f"{path} lacks {', '.join(missing)}: it is incomplete; re-run or re-import it")
    return record


def network_state(record: dict[str, Any], which: str = "auto") -> tuple[str, dict[str, torch.Tensor]]:
    """The state dict of one of the two networks: `auto` takes the one the run selected as best."""
    if which == "auto":
        which = record.get("selected", "online")
    key = NETWORK_NAMES.get(which)
    if key is None:
        raise CosaModelError(f"unknown network {which!r}: use auto, online (student) or assignment (teacher)")
    state = record.get(key)
    if state is None:
        other = "assignment" if key == "online" else "online"
        raise CosaModelError(f"the checkpoint holds no {key} network: use --network {other}")
    return key, state


def build_network(record: dict[str, Any], which: str = "auto"):
    """Rebuild the `CoSANetwork` stored in a checkpoint record, weights loaded, in eval mode."""
    from cosa_sdk.training.model.network import CoSANetwork

    _, state = network_state(record, which)
    network = CoSANetwork.from_config(record["model_config"])
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CosaModelError(f"checkpoint weights do not fit its own model_config: {err}") from err
    return network.eval()

"""`cosa import-official`: turn a checkpoint of the official CoSA code into a cosa-sdk run directory.

The official files (`voc_weights.pth`, `coco_weights.pth`, `best_seg.pth`, `best_cam.pth`) hold one
ViT-B/16 + LargeFOV network whose encoder uses timm's names. They pickle an `argparse.Namespace`
holding a `pathlib.PosixPath`, so they are read with `weights_only=True` and exactly those two classes
allowed: nothing in a downloaded file can run code. The key set and every shape are checked against
the official network before anything is written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cosa_sdk.constants import IMAGENET_MEAN, IMAGENET_STD, NETWORK_NAMES, TTA_SCALES
from cosa_sdk.errors import CosaConfigError, CosaModelError
from cosa_sdk.training.run_record import RECORD_KEY, RunRecord

BACKBONE = "vit_base_patch16_224.orig_in21k_ft_in1k"  # the released code starts from these weights
EMBED_DIM = 768
DEPTH = 12
MLP_DIM = 3072
PATCH = 16
POS_ROWS = 1 + 14 * 14
DECODER_CHANNELS = 512
DILATION = 5
INPUT_SIZE = 448
DATASET_CLASSES = {"voc": 20, "coco": 80}
NETWORK_FOR_TAG = {"t": "assignment", "s": "online"}


def official_shapes(num_classes: int) -> dict[str, tuple[int, ...]]:
    """The 157 tensors of the official network for C classes, in the file's order, with their shapes."""
    shapes: dict[str, tuple[int, ...]] = {
        "encoder.cls_token": (1, 1, EMBED_DIM),
        "encoder.pos_embed": (1, POS_ROWS, EMBED_DIM),
        "encoder.patch_embed.proj.weight": (EMBED_DIM, 3, PATCH, PATCH),
        "encoder.patch_embed.proj.bias": (EMBED_DIM,),
    }
    block = {
        "norm1.weight": (EMBED_DIM,),
        "norm1.bias": (EMBED_DIM,),
        "attn.qkv.weight": (3 * EMBED_DIM, EMBED_DIM),
        "attn.qkv.bias": (3 * EMBED_DIM,),
        "attn.proj.weight": (EMBED_DIM, EMBED_DIM),
        "attn.proj.bias": (EMBED_DIM,),
        "norm2.weight": (EMBED_DIM,),
        "norm2.bias": (EMBED_DIM,),
        "mlp.fc1.weight": (MLP_DIM, EMBED_DIM),
        "mlp.fc1.bias": (MLP_DIM,),
        "mlp.fc2.weight": (EMBED_DIM, MLP_DIM),
        "mlp.fc2.bias": (EMBED_DIM,),
    }
    for i in range(DEPTH):
        shapes.update({f"encoder.blocks.{i}.{name}": shape for name, shape in block.items()})
    shapes.update(
        {
            "encoder.norm.weight": (EMBED_DIM,),
            "encoder.norm.bias": (EMBED_DIM,),
            "encoder.head.weight": (1000, EMBED_DIM),
            "encoder.head.bias": (1000,),
            "decoder.conv6.weight": (DECODER_CHANNELS, EMBED_DIM, 3, 3),
            "decoder.conv7.weight": (DECODER_CHANNELS, DECODER_CHANNELS, 3, 3),
            "decoder.conv8.weight": (num_classes + 1, DECODER_CHANNELS, 1, 1),
            "classifier.weight": (num_classes, EMBED_DIM, 1, 1),
            "aux_classifier.weight": (num_classes, EMBED_DIM, 1, 1),
        }
    )
    return shapes


def read_official_file(path: str | Path) -> Any:
    """torch.load on the CPU with weights_only=True and only Namespace and PosixPath allowed besides tensors."""
    path = Path(path)
    if not path.is_file():
        raise CosaConfigError(f"official checkpoint {path} not found: pass the downloaded .pth file")
    allowed = [argparse.Namespace, (pathlib.PosixPath, "pathlib.PosixPath")]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if "Weights only load failed" not in str(err):
            raise _not_a_checkpoint(path, err) from None
        what = f"the object {found.group(1)}" if found else "objects that are not tensors"
        raise CosaModelError(
            f"refused to load {path}: it references {what}, which an official CoSA checkpoint never contains "
            "(nothing in it was executed); pass the .pth file released with CoSA or written by its training script"
        ) from None
    except Exception as err:  # the legacy and zip readers fail with KeyError, EOFError, RuntimeError, ...
        raise _not_a_checkpoint(path, err) from None


def _not_a_checkpoint(path: Path, err: BaseException) -> CosaModelError:
    detail = str(err).splitlines()[0][:120] if str(err) else "no detail"
    return CosaModelError(
        f"{path} is truncated or not a torch checkpoint ({err.__class__.__name__}: {detail}); download or copy it again"
    )


def split_official(obj: Any, *, source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict without a leading `module.`, metadata) from the official dict or a bare state dict."""
    if isinstance(obj, Mapping) and "model" in obj:
        state, meta = obj["model"], {k: v for k, v in obj.items() if k != "model"}
    elif isinstance(obj, Mapping) and any(str(k).removeprefix("module.").startswith("encoder.") for k in obj):
        state, meta = obj, {}
    else:
        found = sorted(map(str, obj))[:6] if isinstance(obj, Mapping) else type(obj).__name__
        raise CosaModelError(
            f"{source} is not an official CoSA checkpoint: expected a dict with a 'model' state dict (or a bare "
            f"state dict with 'encoder.*' keys), found {found}"
        )
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CosaModelError(f"{source}: 'model' is not a state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in state.items()}, meta


def validate_official_state(state: Mapping[str, torch.Tensor], *, source: str = "checkpoint") -> int:
    """Check keys and shapes against the official network; returns C. Lists every problem in one message."""
    classifier = state.get("classifier.weight")
    if classifier is None or classifier.dim() not in (2, 4) or classifier.shape[0] < 1:
        num_classes = int(state["decoder.conv8.weight"].shape[0]) - 1 if "decoder.conv8.weight" in state else 20
    else:
        num_classes = int(classifier.shape[0])
    expected = official_shapes(num_classes)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = []
    for key, shape in expected.items():
        if key not in state:
            continue
        got = tuple(state[key].shape)
        linear_ok = key.endswith("classifier.weight") and got == shape[:2]  # stored as a linear layer
        if got != shape and not linear_ok:
            wrong.append(f"{key} {list(got)} (expected {list(shape)})")
        elif not state[key].is_floating_point():
            wrong.append(f"{key} has dtype {state[key].dtype} (expected float)")
    if missing or unexpected or wrong:
        parts = [
            f"{len(keys)} {label}: {', '.join(keys[:6])}{' …' if len(keys) > 6 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", wrong))
            if keys
        ]
        raise CosaModelError(
            f"{source} does not match the official CoSA ViT-B/16 + LargeFOV network with {num_classes} classes "
            f"({'; '.join(parts)}); decoder.conv8 must have C+1 = {num_classes + 1} rows and both classifiers "
            f"C x {EMBED_DIM}. Pass the checkpoint written by the official code"
        )
    return num_classes


def map_official_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official names -> CoSANetwork names: encoder.* -> backbone.model.* (ImageNet head dropped), heads 1:1."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        value = value.detach().to(device="cpu", dtype=torch.float32)
        if key.startswith("encoder.head."):
            continue
        if key.startswith("encoder."):
            out["backbone.model." + key.removeprefix("encoder.")] = value
        elif key.endswith("classifier.weight"):
            out[key] = value.reshape(value.shape[0], value.shape[1], 1, 1)
        else:
            out[key] = value
    return out


def plain_args(args: Any) -> dict[str, Any]:
    """The run's argparse.Namespace as JSON-able values (paths become strings, other objects their repr)."""
    if args is None:
        return {}
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args) if isinstance(args, Mapping) else {}

    def plain(value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, pathlib.PurePath):
            return str(value)
        return repr(value)

    return {str(k): plain(v) for k, v in values.items()}


def _dataset_and_classes(num_classes: int, dataset: str | None, official: dict[str, Any]) -> tuple[str, list[str]]:
    from cosa_sdk.training.data.classes import COCO_CLASSES, VOC_CLASSES

    tables = {"voc": list(VOC_CLASSES), "coco": list(COCO_CLASSES)}
    if dataset is not None:
        dataset = dataset.lower()
        if dataset not in tables:
            raise CosaConfigError(f"unknown --dataset {dataset!r}: choose voc or coco")
        if DATASET_CLASSES[dataset] != num_classes:
            raise CosaConfigError(
                f"--dataset {dataset} has {DATASET_CLASSES[dataset]} classes but the checkpoint has {num_classes}: "
                "drop --dataset to infer it from the weights"
            )
        return dataset, tables[dataset]
    for name, count in DATASET_CLASSES.items():
        if count == num_classes:
            return name, tables[name]
    hint = str(official.get("dataset", "unknown"))
    return hint, [f"class_{i}" for i in range(1, num_classes + 1)]


def _network_key(choice: str, s_or_t: str) -> str:
    if choice == "auto":
        # unknown -> assignment: the released runs evaluated (and saved) the EMA teacher only
        return NETWORK_FOR_TAG.get(s_or_t, "assignment")
    if choice not in NETWORK_NAMES:
        raise CosaConfigError(f"unknown --network {choice!r}: use auto, teacher or student")
    return NETWORK_NAMES[choice]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def import_official_checkpoint(
    path: str | Path, *, dataset: str | None = None, network: str = "auto"
) -> dict[str, Any]:
    """Read, validate and convert an official CoSA checkpoint into a record for `save_checkpoint`.

    `dataset` ("voc"/"coco") picks the class table (default: by the number of classes); `network`
    ("auto", "teacher", "student") says which of our two slots the single stored network fills
    (auto: the file's `s_or_t`, teacher when absent).
    """
    from cosa_sdk.palette import voc_colormap
    from cosa_sdk.training.model.network import network_config

    path = Path(path)
    state, meta = split_official(read_official_file(path), source=str(path))
    num_classes = validate_official_state(state, source=str(path))
    official = plain_args(meta.get("args"))
    dataset_name, classes = _dataset_and_classes(num_classes, dataset, official)
    palette = voc_colormap(num_classes + 1)
    aux_layer = official.get("aux_layer")
    aux_layer = -3 if aux_layer is None else aux_layer  # the released VOC and COCO runs used -3
    if not isinstance(aux_layer, int) or isinstance(aux_layer, bool) or not -DEPTH <= aux_layer < DEPTH:
        raise CosaModelError(f"{path}: args.aux_layer={aux_layer!r} is not a block index of a {DEPTH}-block ViT")
    s_or_t = str(meta.get("s_or_t", "unknown"))
    key = _network_key(network, s_or_t)
    model_config = network_config(
        backbone=BACKBONE,
        num_classes=num_classes,
        aux_layer=aux_layer,
        decoder_channels=DECODER_CHANNELS,
        dilation=DILATION,
    )
    iteration, result = meta.get("epoch"), meta.get("result")
    result = float(result) if isinstance(result, (int, float)) and not isinstance(result, bool) else None
    digest = _sha256(path)
    networks: dict[str, Any] = {"online": None, "assignment": None}
    networks[key] = map_official_state(state)
    return {
        "preset": "official",
        "model_config": model_config,
        "classes": classes,
        "palette": [list(rgb) for rgb in palette],
        **networks,
        "selected": key,
        "s_or_t": s_or_t,
        "iteration": int(iteration) if isinstance(iteration, int) else None,
        "result": result,
        "metrics": {} if result is None else {"official_best_miou": float(result)},
        "supervision": "weak",
        "source": {
            "kind": "official-cosa",
            "file": path.name,
            "sha256": digest,
            "dataset": dataset_name,
            "network": "teacher" if key == "assignment" else "student",
        },
        "backbone_weights": f"official CoSA checkpoint {path.name} (sha256 {digest[:12]})",
        "official_args": official,
        "data": {
            "spec": None,
            "dataset": dataset_name,
            "crop_size": INPUT_SIZE,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "config": {"input_size": [INPUT_SIZE, INPUT_SIZE], "tta_scales": list(TTA_SCALES)},
        RECORD_KEY: RunRecord(
            classes=tuple(classes),
            palette=tuple(tuple(rgb) for rgb in palette),
            eval_size=INPUT_SIZE,
            input_size=(INPUT_SIZE, INPUT_SIZE),
            crop_size=INPUT_SIZE,
            tta_scales=TTA_SCALES,
        ).to_dict(),
    }


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    """What config.json holds: everything in the record except the tensors."""
    return {k: v for k, v in record.items() if k not in ("online", "assignment")}


def import_official_command(args: argparse.Namespace) -> int:
    """`cosa import-official CHECKPOINT --out RUN_DIR [--dataset voc|coco] [--network ...] [--force]`."""
    from cosa_sdk.training.engine.checkpoint import save_checkpoint

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CosaConfigError(f"--out {out} is a file: pass a directory for best.pt and config.json")
    if out.is_dir() and any(out.iterdir()) and not getattr(args, "force", False):
        held = ", ".join(sorted(p.name for p in out.iterdir())[:5])
        raise CosaConfigError(
            f"--out {out} is not empty (holds {held}): pass --force to overwrite its best.pt and config.json, "
            "or choose a new directory"
        )
    record = import_official_checkpoint(
        args.checkpoint, dataset=getattr(args, "dataset", None), network=getattr(args, "network", "auto") or "auto"
    )
    out.mkdir(parents=True, exist_ok=True)
    best = save_checkpoint(out / "best.pt", record)
    (out / "config.json").write_text(json.dumps(_summary(record), indent=2) + "\n")
    source = record["source"]
    print(
        f"imported {source['file']}: {source['dataset']} ({len(record['classes'])} classes), "
        f"{source['network']} network (s_or_t={record['s_or_t']}), iteration {record['iteration']}, "
        f"mIoU {record['result']} -> {best}\n"
        f"next: cosa export {best} --out BUNDLE_DIR"
    )
    return 0

"""Reading and validating a model bundle: a folder with cosa.json, or a lone .onnx carrying it as metadata.

Nothing in a bundle is ever unpickled: weights are safetensors, ONNX or a TensorRT plan, and every
artifact name must stay inside the bundle folder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from cosa_sdk.backends import export_hint
from cosa_sdk.constants import TTA_SCALES
from cosa_sdk.errors import CosaModelError
from cosa_sdk.palette import RGB, complete_palette
from cosa_sdk.preprocess import CLASS_THRESHOLD

BUNDLE_FORMAT = "cosa-bundle"
BUNDLE_VERSION = 1
CONFIG_NAME = "cosa.json"
METADATA_KEY = "cosa.json"


CLASS_SCORES_OUTPUT = "class_scores"


@dataclass(frozen=True)
class OnnxInfo:
    """Names and shape policy of the ONNX graph (cosa.json "onnx" key).

    outputs: every output in order (`output` first); class_scores: the name of the image-level class-score
    output the backends look for (a graph without it, exported before class scores, gives none).
    """

    input: str = "image"
    output: str = "logits"
    dynamic: bool = False
    opset: int | None = None
    outputs: tuple[str, ...] = ("logits",)
    class_scores: str = CLASS_SCORES_OUTPUT


@dataclass(frozen=True)
class Postprocess:
    """cosa.json "postprocess": the defaults of `segment(drop_absent=None, edge_aware=None)` (docs/contracts.md,
    "cosa.json").

    drop_absent: pixels may only take background or a class the classifier scores present;
    class_threshold: present means sigmoid(class logit) >= this;
    edge_aware: the class maps go to the image size through the guided filter of `cosa_sdk.upsample`
    (boundaries snapped to the image's edges) instead of a plain bilinear resize.
    """

    drop_absent: bool = False
    class_threshold: float = CLASS_THRESHOLD
    edge_aware: bool = False


@dataclass(frozen=True)
class Int8Variant:
    """What cosa.json says about one INT8 artifact ("int8" key; older bundles: `metrics.int8`).

    weight_bits: 7 (safe on every CPU) or 8 (needs VNNI); None when the bundle does not say (exported by
    an older cosa-sdk, or made by hand). agreement: argmax agreement with fp32 per image set ("validation",
    "photos"); min_agreement: the limit export held it to.
    """

    key: str
    weight_bits: int | None = None
    agreement: dict[str, float] = field(default_factory=dict)
    min_agreement: float | None = None

    @property
    def needs_vnni(self) -> bool | None:
        """True for 8-bit weights, False for 7-bit ones, None when unknown."""
        return None if self.weight_bits is None else self.weight_bits > 7

    @property
    def gate_agreement(self) -> float | None:
        """The agreement the gate used: the worse of validation images and photographs."""
        return min(self.agreement.values()) if self.agreement else None

    @property
    def gated(self) -> bool:
        """True when export measured it on validation images and photographs and both cleared the limit."""
        value = self.gate_agreement
        has_both = {"validation", "photos"} <= set(self.agreement)
        return has_both and value is not None and self.min_agreement is not None and value >= self.min_agreement


@dataclass(frozen=True)
class Bundle:
    """A validated cosa.json plus where its artifacts live."""

    source: Path
    root: Path
    classes: tuple[str, ...]
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    palette: tuple[RGB, ...]
    artifacts: dict[str, str]
    patch_size: int = 16
    tta_scales: tuple[float, ...] = TTA_SCALES
    onnx: OnnxInfo = field(default_factory=OnnxInfo)
    name: str = ""
    config: dict[str, Any] = field(default_factory=dict, repr=False)
    int8: dict[str, Int8Variant] = field(default_factory=dict)
    postprocess: Postprocess = field(default_factory=Postprocess)

    @property
    def num_classes(self) -> int:
        """K: output channels of the model, background included."""
        return len(self.classes)

    def has(self, key: str) -> bool:
        """True when the artifact is listed in cosa.json and its file exists."""
        return key in self.artifacts and (self.root / self.artifacts[key]).is_file()

    def artifact(self, key: str) -> Path:
        """Path of a listed artifact; CosaModelError naming the export command when it is absent."""
        hint = export_hint(key)  # the backend registry says which command creates each artifact
        if key not in self.artifacts:
            raise CosaModelError(
                f"the bundle {self.source} has no {key!r} artifact (it lists {sorted(self.artifacts)}); "
                f"create it with `{hint}` or choose another backend"
            )
        path = self.root / self.artifacts[key]
        if not path.is_file():
            raise CosaModelError(
                f"{self.source} lists {key!r} as {self.artifacts[key]!r} but {path} is missing; "
                f"copy the whole bundle folder or re-create it with `{hint}`"
            )
        return path

    def int8_variant(self, key: str) -> Int8Variant:
        """What the bundle says about the INT8 artifact `key` (weights unknown when it says nothing)."""
        return self.int8.get(key) or Int8Variant(key)


def read_bundle(path: str | Path) -> Bundle:
    """Read a bundle folder, its cosa.json, or a lone .onnx file whose metadata holds cosa.json."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CosaModelError(
            f"model bundle {str(path)!r} not found: pass the folder written by `cosa export` "
            "(it holds cosa.json) or a .onnx file exported by cosa-sdk"
        )
    if path.is_dir():
        config_path = path / CONFIG_NAME
        if not config_path.is_file():
            raise CosaModelError(
                f"{path} is not a cosa bundle: it has no {CONFIG_NAME}; pass the folder written by "
                "`cosa export`, or a .onnx file exported by cosa-sdk"
            )
        return bundle_from_config(_read_json(config_path), source=config_path, root=path)
    if path.suffix.lower() == ".json":
        return bundle_from_config(_read_json(path), source=path, root=path.parent)
    if path.suffix.lower() == ".onnx":
        return bundle_from_onnx_metadata(read_onnx_metadata(path), path)
    raise CosaModelError(
        f"{path} is neither a bundle folder, a cosa.json nor a .onnx file; pass the folder written by `cosa export`"
    )


def read_onnx_metadata(path: Path) -> dict[str, str]:
    """The metadata_props of an ONNX file, read through ONNX Runtime (no `onnx` package needed)."""
    from cosa_sdk.backends.onnxruntime import create_session

    return dict(create_session(path, providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map)


def bundle_from_onnx_metadata(metadata: dict[str, str], onnx_path: Path) -> Bundle:
    """A one-artifact bundle from a lone .onnx file: its cosa.json comes from the metadata."""
    text = metadata.get(METADATA_KEY)
    if text is None:
        raise CosaModelError(
            f"{onnx_path} has no {METADATA_KEY!r} metadata, so its classes and normalisation are unknown; "
            "load the bundle folder it came from, or re-export it with `cosa export`"
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise CosaModelError(f"the {METADATA_KEY!r} metadata of {onnx_path} is not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise CosaModelError(f"the {METADATA_KEY!r} metadata of {onnx_path} is not a JSON object")
    config = {**config, "artifacts": {"onnx": onnx_path.name}}
    return bundle_from_config(config, source=onnx_path, root=onnx_path.parent)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CosaModelError(
            f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
            "re-create the bundle with `cosa export`"
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        raise CosaModelError(f"cannot read {path}: {err}") from err
    if not isinstance(config, dict):
        raise CosaModelError(f"{path} must hold a JSON object, found {type(config).__name__}")
    return config


class _Checker:
    """Field checks that raise CosaModelError naming the file and the key."""

    def __init__(self, config: dict[str, Any], source: Path) -> None:
        self.config = config
        self.source = source

    def fail(self, key: str, problem: str) -> CosaModelError:
        return CosaModelError(f"{self.source}: {key!r} {problem}; re-create the bundle with `cosa export`")

    def require(self, key: str) -> Any:
        if key not in self.config:
            raise self.fail(key, "is missing")
        return self.config[key]

    def numbers(self, key: str, count: int, low: float, high: float, *, open_low: bool = False) -> tuple:
        value = self.require(key)
        ok = isinstance(value, list) and len(value) == count and all(_is_number(v) for v in value)
        ok = ok and all((low < v if open_low else low <= v) and v <= high for v in value)
        if not ok:
            raise self.fail(key, f"must be {count} numbers in {low}-{high} (the 0-1 pixel scale), got {value!r}")
        return tuple(float(v) for v in value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_header(check: _Checker) -> None:
    fmt = check.config.get("format")
    if fmt != BUNDLE_FORMAT:
        raise CosaModelError(
            f"{check.source}: 'format' is {fmt!r}, expected {BUNDLE_FORMAT!r}: this is not a cosa-sdk bundle; "
            "create one with `cosa export`"
        )
    version = check.config.get("version")
    if not _is_count(version):
        raise check.fail("version", f"must be a positive integer, got {version!r}")
    if version > BUNDLE_VERSION:
        raise CosaModelError(
            f"{check.source}: bundle version {version} is newer than this cosa-sdk reads "
            f"(version {BUNDLE_VERSION}); upgrade with `pip install -U cosa-sdk`"
        )


def _check_classes(check: _Checker) -> tuple[str, ...]:
    classes = check.require("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes):
        raise check.fail("classes", "must be a list of class names, index 0 = background")
    if not 2 <= len(classes) <= 256:
        raise check.fail("classes", f"must hold 2 to 256 names (background first), got {len(classes)}")
    if len(set(classes)) != len(classes):
        raise check.fail("classes", "has duplicate names")
    return tuple(classes)


def _check_input_size(check: _Checker) -> tuple[int, int]:
    size = check.require("input_size")
    if _is_count(size):
        size = [size, size]
    if not (isinstance(size, list) and len(size) == 2 and all(_is_count(v) for v in size)):
        raise check.fail("input_size", f"must be [height, width] in pixels, got {size!r}")
    return int(size[0]), int(size[1])


def _safe_artifact_name(check: _Checker, key: str, name: Any, root: Path) -> str:
    if not isinstance(name, str) or not name.strip():
        raise check.fail("artifacts", f"entry {key!r} must be a file name, got {name!r}")
    for pure in (PurePosixPath(name), PureWindowsPath(name)):
        if pure.is_absolute() or pure.drive or pure.root or ".." in pure.parts:
            raise CosaModelError(
                f"{check.source}: artifact {key!r} = {name!r} points outside the bundle folder; artifact "
                "names must be plain file names inside the bundle (e.g. 'model.onnx')"
            )
    resolved = (root / name).resolve()
    if resolved.exists() and not resolved.is_relative_to(root.resolve()):
        raise CosaModelError(
            f"{check.source}: artifact {key!r} = {name!r} is a link to a file outside the bundle folder; "
            "copy the file into the bundle instead"
        )
    return name


def _check_artifacts(check: _Checker, root: Path) -> dict[str, str]:
    artifacts = check.require("artifacts")
    if not isinstance(artifacts, dict) or not artifacts:
        raise check.fail("artifacts", "must map artifact kinds to file names, e.g. {'onnx': 'model.onnx'}")
    return {str(k): _safe_artifact_name(check, str(k), v, root) for k, v in artifacts.items()}


def _check_onnx(check: _Checker) -> OnnxInfo:
    info = check.config.get("onnx") or {}
    if not isinstance(info, dict):
        raise check.fail("onnx", "must be an object like {'input': 'image', 'output': 'logits', 'dynamic': false}")
    names = {k: info.get(k, default) for k, default in (("input", "image"), ("output", "logits"))}
    if not all(isinstance(v, str) and v for v in names.values()):
        raise check.fail("onnx", f"input/output must be tensor names, got {names!r}")
    outputs = info.get("outputs", [names["output"]])
    if not (isinstance(outputs, list) and all(isinstance(v, str) and v for v in outputs)):
        raise check.fail("onnx", f"'outputs' must be a list of tensor names, got {outputs!r}")
    if names["output"] not in outputs:
        raise check.fail("onnx", f"'outputs' {outputs!r} must include the logits output {names['output']!r}")
    extra = [name for name in outputs if name != names["output"]]
    opset = info.get("opset")
    return OnnxInfo(
        dynamic=bool(info.get("dynamic", False)),
        opset=opset if _is_count(opset) else None,
        outputs=tuple(outputs),
        class_scores=extra[0] if extra else CLASS_SCORES_OUTPUT,
        **names,
    )


def _check_postprocess(check: _Checker) -> Postprocess:
    """The "postprocess" key: {"drop_absent": bool, "class_threshold": x in (0, 1), "edge_aware": bool};
    defaults when absent."""
    info = check.config.get("postprocess")
    if info is None:
        return Postprocess()
    if not isinstance(info, dict):
        raise check.fail(
            "postprocess", "must be an object like {'drop_absent': false, 'class_threshold': 0.5, 'edge_aware': false}"
        )
    drop = info.get("drop_absent", False)
    threshold = info.get("class_threshold", CLASS_THRESHOLD)
    edge = info.get("edge_aware", False)
    if not isinstance(drop, bool):
        raise check.fail("postprocess", f"'drop_absent' must be true or false, got {drop!r}")
    if not (_is_number(threshold) and 0 < threshold < 1):
        raise check.fail("postprocess", f"'class_threshold' must be a probability between 0 and 1, got {threshold!r}")
    if not isinstance(edge, bool):
        raise check.fail("postprocess", f"'edge_aware' must be true or false, got {edge!r}")
    return Postprocess(drop_absent=drop, class_threshold=float(threshold), edge_aware=edge)


def _agreements(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    return {str(k): float(v) for k, v in value.items() if _is_number(v)}


def _check_int8(check: _Checker) -> dict[str, Int8Variant]:
    """The "int8" key: {artifact: {"weight_bits": 7|8, "agreement": {...}, "min_agreement": x}}.

    Bundles written before it existed carry `metrics.int8.needs_vnni` for their one `onnx_int8` file: that
    gives the weight width, but no gate on photographs (so `backend="auto"` does not pick it).
    """
    info = check.config.get("int8")
    if info is None:
        legacy = (check.config.get("metrics") or {}).get("int8")
        if isinstance(legacy, dict) and isinstance(legacy.get("needs_vnni"), bool):
            agreement = legacy.get("argmax_agreement")
            return {
                "onnx_int8": Int8Variant(
                    "onnx_int8",
                    weight_bits=8 if legacy["needs_vnni"] else 7,
                    agreement={"validation": float(agreement)} if _is_number(agreement) else {},
                )
            }
        return {}
    if not isinstance(info, dict) or not all(isinstance(v, dict) for v in info.values()):
        raise check.fail("int8", "must map INT8 artifacts to {'weight_bits': 7 or 8, 'agreement': {...}}")
    variants = {}
    for key, entry in info.items():
        bits = entry.get("weight_bits")
        if bits is not None and (not _is_count(bits) or bits > 8):
            raise check.fail("int8", f"entry {key!r}: 'weight_bits' must be 7 or 8, got {bits!r}")
        limit = entry.get("min_agreement")
        variants[str(key)] = Int8Variant(
            str(key),
            weight_bits=bits,
            agreement=_agreements(entry.get("agreement")),
            min_agreement=float(limit) if _is_number(limit) else None,
        )
    return variants


def bundle_from_config(config: dict[str, Any], *, source: Path, root: Path) -> Bundle:
    """Validate a parsed cosa.json; every problem is a CosaModelError naming the key and the fix."""
    check = _Checker(config, source)
    _check_header(check)
    classes = _check_classes(check)
    patch = config.get("patch_size", 16)
    if not _is_count(patch):
        raise check.fail("patch_size", f"must be a positive integer, got {patch!r}")
    scales = config.get("tta_scales") or list(TTA_SCALES)
    if not (isinstance(scales, list) and scales and all(_is_number(s) and 0 < s <= 8 for s in scales)):
        raise check.fail("tta_scales", f"must be a list of positive scale factors, got {scales!r}")
    return Bundle(
        source=source,
        root=root,
        classes=classes,
        input_size=_check_input_size(check),
        mean=check.numbers("mean", 3, 0.0, 1.0),
        std=check.numbers("std", 3, 0.0, 1.0, open_low=True),
        palette=tuple(complete_palette(config.get("palette"), len(classes))),
        artifacts=_check_artifacts(check, root),
        patch_size=int(patch),
        tta_scales=tuple(float(s) for s in scales),
        onnx=_check_onnx(check),
        name=str(config.get("name") or root.name or source.stem),
        config=config,
        int8=_check_int8(check),
        postprocess=_check_postprocess(check),
    )

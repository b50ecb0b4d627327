"""Label Studio exports of an image-classification (Choices) project.

Reads the full JSON export (a list of tasks with `data` and `annotations[].result[]` entries of type
`choices`; the last annotation that was not cancelled counts, its choices results are merged) and
the JSON-MIN export (a list of flat records with the image and a `choice` / `choices` field). Tasks
without a completed annotation are skipped. The image is `data[image_col]` (default: `image`, else
the one value that looks like an image path or URL); it is found under `images_dir` (default: the
JSON's folder and its images/ sub-folder) by its relative path (`/data/local-files/?d=PATH`), its
file name, or its file name without the 8-character prefix Label Studio adds to uploads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from cosa_sdk.constants import IMAGE_SUFFIXES
from cosa_sdk.errors import CosaDataError
from cosa_sdk.training.data.importers.plan import (
    ImportEntry,
    ImportPlan,
    check_class_list,
    class_name,
    find_image,
    folders_text,
    is_background,
    normalise_labels,
)

UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")
MIN_KEYS = ("choice", "choices", "label", "labels")


def looks_like(data) -> bool:
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        return False
    first = data[0]
    return ("data" in first and ("annotations" in first or "completions" in first)) or any(k in first for k in MIN_KEYS)


def _image_value(record: dict, key: str | None, where: str) -> str:
    if key is not None:
        if key not in record:
            raise CosaDataError(f"{where}: no key {key!r} (--image-col); keys: {', '.join(map(str, record))}.")
        return str(record[key])
    if isinstance(record.get("image"), str):
        return record["image"]
    candidates = [
        v
        for v in record.values()
        if isinstance(v, str) and (v.lower().split("?")[0].endswith(IMAGE_SUFFIXES) or "/data/" in v)
    ]
    if len(candidates) == 1:
        return candidates[0]
    raise CosaDataError(f"{where}: cannot tell which field holds the image; name it with --image-col.")


def _candidates(value: str) -> list[str]:
    parsed = urlparse(value)
    names = []
    query = parse_qs(parsed.query)
    if "d" in query:  # /data/local-files/?d=relative/path.jpg
        rel = unquote(query["d"][0])
        return [rel, Path(rel).name]
    path = unquote(parsed.path) if parsed.scheme or value.startswith("/data/") else value
    base = Path(path).name
    if path and not path.startswith("/data/") and not parsed.scheme:
        names.append(path)
    if base:
        names.append(base)
        stripped = UPLOAD_PREFIX.sub("", base)
        if stripped != base:
            names.append(stripped)
    return names


def _choices(task: dict, where: str) -> list[str] | None:
    """The labels of a full-export task, or None when it has no completed annotation."""
    annotations = [a for a in (task.get("annotations") or task.get("completions") or []) if not a.get("was_cancelled")]
    if not annotations:
        return None
    names: list[str] = []
    for result in annotations[-1].get("result", []):
        if result.get("type") in ("choices", "taxonomy"):
            value = result.get("value", {})
            for choice in value.get("choices", value.get("taxonomy", [])):
                names.append(choice[-1] if isinstance(choice, list) else choice)
    return names


def _min_choices(record: dict) -> list[str] | None:
    for key in MIN_KEYS:
        if key in record:
            value = record[key]
            if isinstance(value, dict):
                value = value.get("choices", [])
            return [value] if isinstance(value, str) else [str(v) for v in value]
    return None


def read_label_studio(
    source: Path, *, image_col: str | None = None, images_dir: Path | None = None, **_options
) -> ImportPlan:
    path = Path(source)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CosaDataError(f"{path}: cannot read this JSON ({exc}).") from exc
    if not looks_like(data):
        raise CosaDataError(
            f"{path}: not a Label Studio export (expected a JSON list of tasks with `data` and `annotations`, "
            "or JSON-MIN records with `choice`)."
        )
    folders = [Path(images_dir)] if images_dir else [path.parent, path.parent / "images"]
    raw: dict[str, str] = {}
    entries: list[ImportEntry] = []
    skipped = 0
    seen: dict[Path, str] = {}
    for number, task in enumerate(data):
        where = f"{path} task {task.get('id', number)}"
        full = "data" in task
        names = _choices(task, where) if full else _min_choices(task)
        if names is None:
            skipped += 1
            continue
        value = _image_value(task["data"] if full else task, image_col, where)
        found = None
        for candidate in _candidates(value):
            found = find_image(candidate, folders)
            if found is not None:
                break
        if found is None:
            raise CosaDataError(f"{where}: image {value!r} not found in {folders_text(folders)}; pass --images-dir.")
        if found in seen:
            raise CosaDataError(f"{where}: image {value!r} appears twice (also in {seen[found]}).")
        seen[found] = where
        for name in names:
            if str(name).strip():
                raw.setdefault(str(name).strip(), class_name(name, where))
        entries.append(ImportEntry(source=found, name=found.name, labels=normalise_labels(names, where)))
    if not entries:
        raise CosaDataError(f"{path}: no task has a completed annotation; label some images first.")
    classes = sorted({c for c in raw.values() if not is_background(c)})
    check_class_list(classes, str(path), raw)
    notes = [f"{skipped} tasks without a completed annotation were skipped"] if skipped else []
    return ImportPlan(classes=classes, entries=entries, source=str(path), format="label-studio", notes=notes)

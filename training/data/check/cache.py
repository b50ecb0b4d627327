"""The dataset check's per-dataset cache: file results keyed by each file's size and mtime, as JSON in
`$COSA_CACHE_DIR/checks/` (default `~/.cache/cosa-sdk/checks/`)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cosa_sdk.training.data.check.problems import CheckedItem
from cosa_sdk.training.data.spec import DataSpec

CACHE_VERSION = 1


class FileCache:
    """path -> (size, mtime_ns, result) as JSON; an entry is used only while size and mtime match."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, list[Any]] = {}
        self.dirty = False
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if data.get("version") == CACHE_VERSION:
                    self.entries = data.get("files", {})
            except (OSError, ValueError, AttributeError):
                self.entries = {}

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns

    def lookup(self, kind: str, path: Path) -> tuple[dict[str, Any] | None, tuple[int, int] | None]:
        stamp = self._stamp(path)
        if stamp is None:
            return None, None
        entry = self.entries.get(f"{kind}:{path}")
        if entry is not None and entry[0] == stamp[0] and entry[1] == stamp[1]:
            return entry[2], stamp
        return None, stamp

    def store(self, kind: str, path: Path, stamp: tuple[int, int], result: dict[str, Any]) -> None:
        self.entries[f"{kind}:{path}"] = [stamp[0], stamp[1], result]
        self.dirty = True

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".check-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"version": CACHE_VERSION, "files": self.entries}, handle)
            os.replace(tmp, self.path)
        except OSError:  # a read-only cache folder only costs speed
            pass


def cache_file_for(spec: DataSpec, items: Iterable[CheckedItem], root: Path | None) -> Path:
    key = str(Path(root).resolve()) if root is not None else str(spec)
    if root is None:
        first = next(iter(items), None)
        key = str(first.item.image.parent.resolve()) if first else key
    return Path(hashlib.sha1(key.encode()).hexdigest()[:16] + ".json")

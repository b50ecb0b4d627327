"""What a dataset check reports: `Problem` (file, line, what, fix), `CheckedItem` (an item with what
validation learnt about it) and `ValidationReport` (all of them, with the text report)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cosa_sdk.training.data.common import IGNORE_INDEX, Item

ROLES = ("train", "val")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: where (file, line), what, and how to fix it.

    `split`/`item` name the affected item when the problem belongs to one (None for index problems,
    which `--skip-bad-images` cannot skip).
    """

    file: str | None
    what: str
    fix: str
    line: int | None = None
    split: str | None = None
    item: str | None = None

    def format(self) -> str:
        where = self.file or "dataset"
        if self.line is not None:
            where = f"{where}:{self.line}"
        return f"{where}: {self.what}\n    fix: {self.fix}"


@dataclass
class CheckedItem:
    """An item of a split with what validation learnt about it (sizes upright, content hash, mask stats)."""

    split: str
    item: Item
    line: int | None = None
    image: dict[str, Any] | None = None
    mask: dict[str, Any] | None = None
    ok: bool = True

    @property
    def labels(self) -> tuple[int, ...]:
        """0-based foreground classes: the item's labels, else those its mask holds."""
        if self.item.labels is not None:
            return tuple(sorted(set(self.item.labels)))
        if self.mask and self.mask.get("values") is not None:
            return tuple(int(v) - 1 for v in self.mask["values"] if 0 < int(v) < IGNORE_INDEX)
        return ()


@dataclass
class ValidationReport:
    """Everything `validate_dataset` found: problems (empty = valid), the checked items and counts."""

    spec: str
    classes: list[str]
    problems: list[Problem] = field(default_factory=list)
    items: list[CheckedItem] = field(default_factory=list)
    splits: dict[str, str] = field(default_factory=dict)  # role -> split read (e.g. train -> train_aug)
    files_read: int = 0  # files whose bytes were read this time
    files_cached: int = 0  # files answered from the cache (size and mtime unchanged)
    skip_bad: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when training can start: no problems, or only skippable item problems under skip_bad."""
        if not self.skip_bad:
            return not self.problems
        return not self.blocking

    @property
    def blocking(self) -> list[Problem]:
        """Problems `--skip-bad-images` cannot work around (index problems, or a split left empty)."""
        blocking = [p for p in self.problems if p.item is None]
        for role in ROLES:
            role_items = [c for c in self.items if c.split == role]
            if role == "train" and role_items and not any(c.ok for c in role_items):
                blocking.append(Problem(None, "every training image is bad", "fix the files listed above"))
        return blocking

    def bad_items(self, role: str) -> set[str]:
        """Names of the items of a role ("train"/"val") with a problem."""
        return {c.item.name for c in self.items if c.split == role and not c.ok}

    def counts(self) -> dict[str, int]:
        return {
            **{f"{role}_items": sum(1 for c in self.items if c.split == role) for role in ROLES},
            "problems": len(self.problems),
            "bad_items": sum(1 for c in self.items if not c.ok),
            "files_read": self.files_read,
            "files_cached": self.files_cached,
        }

    def format(self, *, limit: int | None = None) -> str:
        """The text report: a headline, then every problem with its fix (all of them unless `limit`)."""
        c = self.counts()
        head = (
            f"dataset {self.spec}: {c['train_items']} train and {c['val_items']} val images checked "
            f"({self.files_read} files read, {self.files_cached} unchanged since the last check)"
        )
        if not self.problems:
            return head + "\nno problems found"
        lines = [head, f"{len(self.problems)} problem(s), {c['bad_items']} bad item(s):"]
        shown = self.problems if limit is None else self.problems[:limit]
        lines += [p.format() for p in shown]
        if len(shown) < len(self.problems):
            lines.append(f"... and {len(self.problems) - len(shown)} more")
        if self.skip_bad and self.ok:
            lines.append(
                f"--skip-bad-images: the {c['bad_items']} bad item(s) above are left out "
                f"(train: {len(self.bad_items('train'))}, val: {len(self.bad_items('val'))})"
            )
        elif not self.blocking:
            lines.append(
                "fix the files, or train anyway without them: cosa train ... --skip-bad-images "
                "(bad images and their masks are left out and listed)"
            )
        return "\n".join(lines)

"""The documentation stands on its own: every reference in code and docs resolves inside the repository.

- No file points to design notes that are not part of the repository.
- Every relative link in README.md and docs/*.md reaches a file, and a `#anchor` reaches a heading.
- Every `docs/<name>.md` a source or doc file mentions exists, and a cited section title
  (`docs/method.md, "Teacher fusion"`) is a heading of that file.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS_FILE = Path(__file__).resolve().relative_to(ROOT).as_posix()
# Outside references that must not come back (spelled in pieces so this file does not match itself).
FORBIDDEN = ("method" + " spec", "architecture" + ".md", "cosa" + "-method", "../" + "shared", "shared/" + "design")
# Data whose contents are not prose: the reference cases may be swapped for other case files.
DATA_FILES = {"tests/cosa-reference-cases.json"}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".html", ".yaml", ".yml", ".txt", ".cfg", ".json", ".sh", ".in", ""}

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
DOC_MENTION = re.compile(r"(?<![\w/.-])(docs/[\w.-]+\.md)(?:#([\w-]+))?(?:,\s*\"([^\"\n]+)\")?")
FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")


@cache
def repository_files() -> tuple[str, ...]:
    """Tracked files plus untracked ones git does not ignore (new files count before their first commit)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the file list comes from git")
    names = sorted({name for name in out.decode("utf-8").split("\0") if name})
    return tuple(name for name in names if (ROOT / name).is_file())


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def headings(path: Path) -> tuple[str, ...]:
    """The heading texts of a markdown file, outside fenced code blocks."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return tuple(m.group(1).strip() for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M))


@cache
def anchors(path: Path) -> frozenset[str]:
    """Every anchor GitHub generates for the file's headings (repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for heading in headings(path):
        base = slug(heading)
        count = seen.get(base, 0)
        out.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return frozenset(out)


def test_no_file_points_outside_the_repository() -> None:
    found = []
    for name in repository_files():
        if name == THIS_FILE or name in DATA_FILES:
            continue
        data = (ROOT / name).read_bytes().lower()
        found += [f"{name}: {word!r}" for word in FORBIDDEN if word.encode() in data]
    assert not found, "references to documents outside the repository (cite docs/*.md instead):\n" + "\n".join(found)


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_markdown_links_resolve(page: Path) -> None:
    text = INLINE_CODE.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    broken = []
    for match in LINK.finditer(text):
        target = match.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):  # http:, https:, mailto:, ...
            continue
        path_part, _, anchor = target.partition("#")
        file = (page.parent / path_part).resolve() if path_part else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with anchor #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: broken links\n" + "\n".join(broken)


def test_every_docs_mention_exists_and_cited_sections_are_headings() -> None:
    problems = []
    for name in repository_files():
        if Path(name).suffix not in TEXT_SUFFIXES or name in DATA_FILES or name.startswith("tests/data/"):
            continue
        text = (ROOT / name).read_text(encoding="utf-8", errors="replace")
        for match in DOC_MENTION.finditer(text):
            doc, anchor, title = match.groups()
            line = text.count("\n", 0, match.start()) + 1
            where = f"{name}:{line}"
            target = ROOT / doc
            if not target.is_file():
                problems.append(f"{where}: {doc} does not exist")
                continue
            if anchor and anchor not in anchors(target):
                problems.append(f"{where}: {doc} has no heading with anchor #{anchor}")
            titles = {h.lower() for h in headings(target)}
            if title and title.lower() not in titles:
                problems.append(f"{where}: {doc} has no section {title!r}")
    assert not problems, "references into docs/ that do not resolve:\n" + "\n".join(problems)


def test_the_method_and_contract_pages_have_the_sections_code_cites() -> None:
    """The pages exist and keep their top-level structure (code comments cite these titles)."""
    method = {h.lower() for h in headings(ROOT / "docs" / "method.md")}
    contracts = {h.lower() for h in headings(ROOT / "docs" / "contracts.md")}
    assert {"the network", "pseudo-labels", "losses", "schedule", "evaluation", "presets"} <= method
    assert "where we differ from the released code" in method
    assert {"model bundle", "datasets", "command line", "python sdk", "http service"} <= contracts


REPO_PATH = re.compile(
    r"(?<![\w/.-])((?:cosa_sdk|training|export|serving|tests|benchmarks|docs)/[\w/.-]*\w\.(?:py|md|json|yaml|html))(?![\w/])"
)


def test_every_repository_path_mentioned_exists() -> None:
    """A file path into the repository (`training/engine/trainer.py`) in code or docs names a real file."""
    problems = []
    for name in repository_files():
        if Path(name).suffix not in TEXT_SUFFIXES or name in DATA_FILES or name.startswith("tests/data/"):
            continue
        text = (ROOT / name).read_text(encoding="utf-8", errors="replace")
        for match in REPO_PATH.finditer(text):
            if not (ROOT / match.group(1)).exists():
                line = text.count("\n", 0, match.start()) + 1
                problems.append(f"{name}:{line}: {match.group(1)}")
    assert not problems, "paths that do not exist (moved or renamed?):\n" + "\n".join(problems)

"""The README's commands: every `cosa` line parses with the real CLI, and the SDK example runs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from toy_bundle import cached_toy_bundle

from cosa_sdk.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def code_blocks() -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", README.read_text(), flags=re.S)


def cosa_commands() -> list[str]:
    """Every `cosa ...` line in a code block (also behind `torchrun -m cosa_sdk.cli`), comments cut."""
    commands = []
    for block in code_blocks():
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("cosa "):
                commands.append(line[len("cosa ") :])
            elif "-m cosa_sdk.cli " in line:
                commands.append(line.split("-m cosa_sdk.cli ", 1)[1])
    return commands


def as_argv(command: str) -> list[str]:
    """A usage line made concrete: optional [groups] included, `...` dropped, N -> 10."""
    text = command.replace("[", " ").replace("]", " ").replace("...", " ")
    return ["10" if word == "N" else word for word in shlex.split(text)]


def test_the_readme_shows_commands_for_every_step() -> None:
    used = {as_argv(c)[0] for c in cosa_commands()}
    assert {"train", "eval", "export", "segment", "serve", "import-official"} <= used


@pytest.mark.parametrize("command", cosa_commands())
def test_each_readme_command_parses_with_the_cli(command: str) -> None:
    try:
        build_parser().parse_args(as_argv(command))
    except SystemExit as stop:
        pytest.fail(f"README command `cosa {command}` does not parse (exit {stop.code})")


def test_the_readme_sdk_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example = next(b for b in code_blocks() if "cosa_sdk.load(" in b)
    photo = np.zeros((90, 120, 3), dtype=np.uint8)
    photo[20:60, 30:80] = (220, 30, 30)
    Image.fromarray(photo).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    code = re.sub(r'cosa_sdk\.load\("[^"]+"', f'cosa_sdk.load("{cached_toy_bundle()}"', example)
    exec(compile(code, "README.md", "exec"), {})
    assert Image.open(tmp_path / "overlay.jpg").size == (120, 90)

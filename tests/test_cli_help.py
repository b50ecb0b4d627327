"""The `cosa` command line as a person meets it: the top-level help, every option's help, serve without BentoML."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator

import pytest

from cosa_sdk.cli import HANDLERS, build_parser, main


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def every_parser() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    parser = build_parser()
    yield "cosa", parser
    for name, sub in subparsers(parser).items():
        yield f"cosa {name}", sub


def test_cosa_help_describes_the_tool_with_examples() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cosa_sdk.cli", "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "hands over to the chosen sub-command" not in out, "internal docstring leaked into --help"
    assert out.startswith("usage: cosa ")
    assert "image-level labels" in out and "segment" in out and "serve" in out
    for command in HANDLERS:
        assert f"\n    {command}" in out, f"{command} missing from the command list"
    examples = [line.strip() for line in out.splitlines() if line.strip().startswith("cosa ")]
    assert {e.split()[1] for e in examples} >= {"train", "eval", "export", "segment", "serve", "demo"}
    for example in examples:  # each example is a command line that parses
        build_parser().parse_args(example.split("  ")[0].split()[1:])
    assert "cosa COMMAND --help" in out and "cosa_sdk.load(" in out


def test_every_command_has_a_description() -> None:
    for name, parser in every_parser():
        assert parser.description and parser.description.strip(), name


@pytest.mark.parametrize("name", [name for name, _ in every_parser()])
def test_every_option_says_what_it_does(name: str) -> None:
    parser = dict(every_parser())[name]
    for action in parser._actions:
        label = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS and action.help.strip(), f"{name} {label}: no help"
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                assert choice.help and choice.help.strip(), f"{name} {choice.dest}: no help"
    parser.format_help()  # every %(default)s placeholder expands


def test_data_shows_the_synthetic_key_value_form_everywhere() -> None:
    seen = []
    for name, parser in every_parser():
        for action in parser._actions:
            if "--data" in action.option_strings:
                seen.append(name)
                assert "synthetic:" in action.help and "n_train=" in action.help, f"{name} --data: {action.help}"
                assert "key=value" in action.help, name
    assert sorted(seen) == ["cosa demo", "cosa eval", "cosa export", "cosa train"]


def test_serve_epilog_names_the_endpoints() -> None:
    text = subparsers(build_parser())["serve"].format_help()
    for route in ("/segment ", "/segment_json", "/segment_hf", "/overlay", "/info", "/docs", "/metrics"):
        assert route in text, route


def test_serve_without_bentoml_fails_before_the_banner(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from toy_bundle import cached_toy_bundle

    monkeypatch.setitem(sys.modules, "bentoml", None)  # `import bentoml` now raises ModuleNotFoundError
    assert main(["serve", "--model", str(cached_toy_bundle())]) == 2
    captured = capsys.readouterr()
    assert "cosa serve:" not in captured.err + captured.out, "the banner must not print"
    assert captured.err.startswith("error: `cosa serve` needs BentoML")
    assert 'pip install "cosa-sdk[serve,cpu]"' in captured.err
    assert "Traceback" not in captured.err

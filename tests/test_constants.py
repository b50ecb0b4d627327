"""Values several layers must agree on are written once (cosa_sdk/constants.py); the version once (cosa_sdk)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import cosa_sdk
from cosa_sdk import constants

REPO = Path(__file__).resolve().parents[1]
# What a second copy of each constant would look like in source.
COPIES = {
    "IMAGENET_MEAN": re.compile(r"0\.485,\s*0\.456,\s*0\.406"),
    "IMAGENET_STD": re.compile(r"0\.229,\s*0\.224,\s*0\.225"),
    "TTA_SCALES": re.compile(r"1\.0,\s*0\.5,\s*1\.5,\s*0\.75,\s*1\.25"),
    "IMAGE_SUFFIXES": re.compile(r"\"\.jpe?g\"[^)\]}]*\"\.png\""),
    "NETWORK_NAMES": re.compile(r"\"(student|teacher)\":\s*\"(online|assignment)\""),
    "DEFAULT_MAX_LATENCY_MS": re.compile(r"DEFAULT_MAX_LATENCY_MS\s*=\s*\d"),
}


def source_files() -> list[Path]:
    folders = ("cosa_sdk", "training", "export", "serving", "benchmarks", "docs")
    return sorted(path for folder in folders for path in (REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("name", sorted(COPIES))
def test_each_constant_is_written_once(name: str) -> None:
    assert hasattr(constants, name)
    places = [
        str(path.relative_to(REPO)) for path in source_files() if COPIES[name].search(path.read_text(encoding="utf-8"))
    ]
    assert places == ["cosa_sdk/constants.py"], f"{name} is written in {places}: import it from cosa_sdk.constants"


def test_the_version_is_read_from_the_package() -> None:
    project = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in project and 'attr = "cosa_sdk.__version__"' in project
    assert not re.search(r"^version\s*=\s*\"", project, re.MULTILINE)
    bentofile = (REPO / "serving" / "bentofile.yaml").read_text(encoding="utf-8")
    wheels = re.findall(r"cosa_sdk-([\w.]+)-py3-none-any\.whl", bentofile)
    assert wheels == [cosa_sdk.__version__], "serving/bentofile.yaml names another cosa-sdk wheel than this version"


def test_suffixes_are_lower_case_and_usable_with_endswith() -> None:
    assert isinstance(constants.IMAGE_SUFFIXES, tuple)
    assert all(s.startswith(".") and s == s.lower() for s in constants.IMAGE_SUFFIXES)
    assert "photo.JPG".lower().endswith(constants.IMAGE_SUFFIXES)

"""Shared test set-up: offline hubs, a private BentoML home, small reproducible data, shared fixtures.

Layout (docs/DEVELOPING.md, "Tests"): one folder per area (sdk/, training/, export/, serving/, demo/,
benchmarks/), each a package so that file names may repeat across areas. The helper modules at this
level (toy_bundle, trained_model, tiny_training, devtools, trajectory_case, and the two adapters other
checks load by path) are imported by their bare names from every folder: this folder is put on sys.path
here. Fixtures used by more than one test file live in a conftest.py: this one for those of several
areas, an area's own conftest.py for the others.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
if "BENTOML_HOME" not in os.environ:
    os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="cosa-bentoml-")
    atexit.register(shutil.rmtree, os.environ["BENTOML_HOME"], ignore_errors=True)
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest

TESTS = Path(__file__).resolve().parent
REPO_ROOT = TESTS.parent
# Appended, not prepended: the area folders (training/, export/, serving/) must never shadow the
# repository's own top-level folders of the same names.
if str(TESTS) not in sys.path:
    sys.path.append(str(TESTS))
# Modules that hold assertions but are not test files: pytest explains their failures too.
pytest.register_assert_rewrite("tests.sdk.conformance", "tests.training.data.conformance", "tests.serving.helpers")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def cosa_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Generated data (the synthetic benchmark) in one folder per test session instead of ~/.cache/cosa-sdk.

    Request it for a whole module with `pytestmark = pytest.mark.usefixtures("cosa_cache")`.
    """
    folder = tmp_path_factory.getbasetemp() / "cosa-cache"
    monkeypatch.setenv("COSA_CACHE_DIR", str(folder))
    yield folder

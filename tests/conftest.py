"""Shared test set-up: offline hubs, a private BentoML home, small reproducible data."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
if "BENTOML_HOME" not in os.environ:
    os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="cosa-bentoml-")
    atexit.register(shutil.rmtree, os.environ["BENTOML_HOME"], ignore_errors=True)
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT

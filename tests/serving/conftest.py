"""Fixtures of the serving tests: one `cosa serve` process with the toy bundle, and the SDK to compare with."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import cosa_sdk
from cosa_sdk.serving.launcher import LocalServer, start_server

from .helpers import LIMITS_ENV


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """One server on a free loopback port for every test file of this folder that asks for `server`
    (test_formats.py and test_page.py start their own, with other settings)."""
    from toy_bundle import cached_toy_bundle  # writes the bundle with torch: imported when a test needs it

    log = tmp_path_factory.mktemp("serve") / "server.log"
    handle = start_server(cached_toy_bundle(), max_batch_size=8, max_latency_ms=5000, env=LIMITS_ENV, log_path=log)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def segmenter() -> Iterator[cosa_sdk.Segmenter]:
    """The SDK on the server's bundle: what every answer is compared with."""
    from toy_bundle import cached_toy_bundle

    with cosa_sdk.load(cached_toy_bundle()) as seg:
        yield seg

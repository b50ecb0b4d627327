"""Fixtures of the export tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Every export test module runs its torch work on one thread: on the shared 2-core test machine two
    OpenMP threads competing with other jobs made a tiny ViT forward 30x slower (600 ms instead of 19 ms)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

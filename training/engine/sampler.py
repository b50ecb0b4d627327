"""Deterministic, resumable batches: the keys of step t depend only on (seed, t, rank).

The training datasets draw every augmentation from an RNG seeded by (seed, key), so a run restarted
at step t sees exactly the samples and augmentations an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from cosa_sdk.training.data.sampling import TrainKeySampler


class StepBatchSampler(Sampler[list[int]]):
    """Yields, for steps start_step .. total_steps-1, this rank's batch of dataset keys.

    The keys come from one global `TrainKeySampler` stream (epoch e visits a fresh permutation; the
    key of sample i in epoch e is e*N + i), split into consecutive batches across steps and ranks.
    """

    def __init__(
        self,
        *,
        num_samples: int,
        batch_size: int,
        total_steps: int,
        start_step: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        weights: np.ndarray | None = None,
    ) -> None:
        if num_samples <= 0:
            raise ValueError("the training set is empty")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.total_steps, self.start_step = total_steps, start_step
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self._stream = TrainKeySampler(num_samples, seed=seed, weights=weights)

    def keys_for_step(self, step: int) -> list[int]:
        """Positions of the global key stream: step-major, then rank, then slot within the batch."""
        first = (step * self.world_size + self.rank) * self.batch_size
        return [self._stream.key(position) for position in range(first, first + self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.total_steps):
            yield self.keys_for_step(step)

    def __len__(self) -> int:
        return max(self.total_steps - self.start_step, 0)

"""Deterministic, resumable batches: the keys of step t depend only on (seed, t, rank).

The training datasets draw every augmentation from an RNG seeded by (seed, key), so a run restarted
at step t sees exactly the samples and augmentations an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class StepBatchSampler(Sampler[list[int]]):
    """Yields, for steps start_step .. total_steps-1, this rank's batch of dataset keys.

    Epoch e visits a fresh permutation of the N samples; the key of sample i in epoch e is e*N + i, so
    `key % N` is the sample and the key itself seeds the augmentation.
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
    ) -> None:
        if num_samples <= 0:
            raise ValueError("the training set is empty")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.total_steps, self.start_step = total_steps, start_step
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self._permutations: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            self._permutations = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)}
        return self._permutations[epoch]

    def keys_for_step(self, step: int) -> list[int]:
        first = (step * self.world_size + self.rank) * self.batch_size
        keys = []
        for position in range(first, first + self.batch_size):
            epoch, offset = divmod(position, self.num_samples)
            keys.append(epoch * self.num_samples + int(self._permutation(epoch)[offset]))
        return keys

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.total_steps):
            yield self.keys_for_step(step)

    def __len__(self) -> int:
        return max(self.total_steps - self.start_step, 0)

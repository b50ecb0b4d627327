"""Keys for `TrainDataset`: a shuffled, resumable stream where every key is used once."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class TrainKeySampler(Sampler[int]):
    """Yields keys `epoch * n + perm_epoch[i]`: each epoch visits every image once in an order seeded by
    (seed, epoch), and keys never repeat, so augmentations differ across epochs.

    The stream depends only on (num_images, seed): resume at sample `start` (iterations x batch size)
    and the same keys follow. `num_keys` bounds the stream (None = endless).
    """

    def __init__(self, num_images: int, *, seed: int = 0, start: int = 0, num_keys: int | None = None) -> None:
        if num_images < 1:
            raise ValueError("num_images must be positive")
        self.num_images = num_images
        self.seed = seed
        self.start = start
        self.num_keys = num_keys
        self._cached_epoch: int | None = None
        self._cached = np.empty(0, dtype=np.int64)

    def permutation(self, epoch: int) -> np.ndarray:
        """The visiting order of one epoch (the last one is cached: consecutive positions share it)."""
        if self._cached_epoch != epoch:
            self._cached = np.random.default_rng([self.seed, epoch]).permutation(self.num_images)
            self._cached_epoch = epoch
        return self._cached

    def key(self, position: int) -> int:
        """The key at a position of the stream."""
        epoch, offset = divmod(position, self.num_images)
        return epoch * self.num_images + int(self.permutation(epoch)[offset])

    def __iter__(self) -> Iterator[int]:
        position = self.start
        while self.num_keys is None or position < self.num_keys:
            epoch, offset = divmod(position, self.num_images)
            for index in self.permutation(epoch)[offset:]:
                if self.num_keys is not None and position >= self.num_keys:
                    return
                yield epoch * self.num_images + int(index)
                position += 1

    def __len__(self) -> int:
        if self.num_keys is None:
            raise TypeError("an endless TrainKeySampler has no length; pass num_keys")
        return max(0, self.num_keys - self.start)

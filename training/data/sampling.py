"""Keys for `TrainDataset`: a shuffled, resumable stream where every key is used once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def label_set_weights(label_sets: Sequence[Sequence[int]], *, power: float = 0.5) -> np.ndarray:
    """Sampling weights (summing to 1) that favour images whose exact set of classes is rare.

    Each image weighs count(its label set) ** -power: with power 1 every distinct label set is drawn
    equally often, with 0 every image is. Classes that nearly always appear together (a co-occurring
    pair) then show up apart more often, which is the evidence a classifier needs to tell them apart.
    """
    if power < 0:
        raise ValueError(f"power must be >= 0, got {power}")
    keys = [tuple(sorted(set(labels))) for labels in label_sets]
    if not keys:
        raise ValueError("no images to weigh")
    counts = Counter(keys)
    weights = np.array([counts[k] ** -power for k in keys], dtype=np.float64)
    return weights / weights.sum()


class TrainKeySampler(Sampler[int]):
    """Yields keys `epoch * n + perm_epoch[i]`: each epoch visits every image once in an order seeded by
    (seed, epoch), and keys never repeat, so augmentations differ across epochs.

    With `weights`, an epoch is instead n draws with replacement from those image probabilities, and
    the key at stream position p is `p * n + image` (still unique, still `key % n == image`).

    The stream depends only on (num_images, seed, weights): resume at sample `start` (iterations x
    batch size) and the same keys follow. `num_keys` bounds the stream (None = endless).
    """

    def __init__(
        self,
        num_images: int,
        *,
        seed: int = 0,
        start: int = 0,
        num_keys: int | None = None,
        weights: np.ndarray | None = None,
    ) -> None:
        if num_images < 1:
            raise ValueError("num_images must be positive")
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != (num_images,) or (weights < 0).any() or weights.sum() <= 0:
                raise ValueError(f"weights must be {num_images} non-negative numbers with a positive sum")
            weights = weights / weights.sum()
        self.num_images = num_images
        self.seed = seed
        self.start = start
        self.num_keys = num_keys
        self.weights = weights
        self._cached_epoch: int | None = None
        self._cached = np.empty(0, dtype=np.int64)

    def permutation(self, epoch: int) -> np.ndarray:
        """The images of one epoch in visiting order (the last epoch is cached: positions share it)."""
        if self._cached_epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            if self.weights is None:
                self._cached = rng.permutation(self.num_images)
            else:
                self._cached = rng.choice(self.num_images, size=self.num_images, replace=True, p=self.weights)
            self._cached_epoch = epoch
        return self._cached

    def key(self, position: int) -> int:
        """The key at a position of the stream."""
        epoch, offset = divmod(position, self.num_images)
        image = int(self.permutation(epoch)[offset])
        if self.weights is not None:
            return position * self.num_images + image
        return epoch * self.num_images + image

    def __iter__(self) -> Iterator[int]:
        position = self.start
        while self.num_keys is None or position < self.num_keys:
            yield self.key(position)
            position += 1

    def __len__(self) -> int:
        if self.num_keys is None:
            raise TypeError("an endless TrainKeySampler has no length; pass num_keys")
        return max(0, self.num_keys - self.start)

"""Dynamic threshold searching as in the official code (docs/method.md, "Dynamic threshold searching").

A ring buffer holds, per recent image, the max-over-classes valid CAM on a coarse grid. Every update
fits a 1-D three-component Gaussian mixture (sklearn) to the buffered values above ``filter_thre``;
the largest value assigned to the low component and the smallest value assigned to the high
component are the raw (low, high) thresholds, smoothed by an exponential moving average.

Cost (one CPU core, a VOC-sized buffer of 400 rows x 784 values): the exact fit takes 0.2-1.4 s
(mean ~0.3 s on CAM-like data; it grows with the number of EM steps), too slow for every training
step. Two documented options make it cheap: ``max_samples`` fits on a fixed random subset of buffer
positions (32768 positions: ~25 ms per update, raw thresholds within ~2e-3 of the exact fit before
the 0.99 smoothing) and ``fit_every=k`` refits every k-th update with momentum ``momentum ** k`` so
the smoothing time constant stays the same (k = 4: ~10 ms per update on average). With
``max_samples=None, fit_every=1`` (the defaults) the behaviour is exactly the official rule.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from cosa_sdk.errors import CosaConfigError, CosaInputError


def gmm_thresholds(values: np.ndarray, *, filter_thre: float = 0.05) -> tuple[float, float]:
    """Raw (low, high) thresholds of the official 3-component GMM rule.

    Values above ``filter_thre`` are fitted with sklearn's GaussianMixture (full covariance, means
    initialised at min / median / max, weights 1/3, precisions 1, other settings default); low = the
    largest value in component 0, high = the smallest value in component 2. Raises CosaInputError
    when fewer than 3 values pass the filter or when component 0 or 2 ends up empty.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[x > filter_thre].reshape(-1, 1)
    if x.shape[0] < 3:
        raise CosaInputError(
            f"only {x.shape[0]} values exceed filter_thre={filter_thre}; the 3-component GMM needs >= 3. "
            "Lower filter_thre or wait until the CAMs activate."
        )
    gmm = GaussianMixture(
        3,
        weights_init=[1 / 3, 1 / 3, 1 / 3],
        means_init=[[x.min()], [np.median(x)], [x.max()]],
        precisions_init=[[[1.0]], [[1.0]], [[1.0]]],
        # All three inits are given, so the k-means initialisation would be computed and discarded;
        # "random_from_data" skips that cost and gives the identical fit.
        init_params="random_from_data",
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = gmm.fit_predict(x)
    low_part, high_part = x[labels == 0], x[labels == 2]
    if low_part.size == 0 or high_part.size == 0:
        raise CosaInputError("the GMM left its low or high component empty; the values are not tri-modal.")
    return float(low_part.max()), float(high_part.min())


def shrink_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The values of ``F.interpolate(x, size, mode="bilinear", align_corners=False)`` computed from the
    two source rows/columns each output reads: about 4x faster on CPU for a 448 -> 28 shrink."""
    for dim, n_out in ((2, size[0]), (3, size[1])):
        n_in = x.shape[dim]
        src = ((torch.arange(n_out, dtype=torch.float64, device=x.device) + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)
        i0 = src.floor().long().clamp(max=n_in - 1)
        frac = (src - i0).to(x.dtype)
        shape = [1] * x.dim()
        shape[dim] = n_out
        lo, hi = x.index_select(dim, i0), x.index_select(dim, (i0 + 1).clamp(max=n_in - 1))
        x = lo + (hi - lo) * frac.view(shape)
    return x


class DynamicThreshold:
    """Queue + GMM + EMA tracker of one (low, high) CPL threshold pair.

    ``update(valid_cams)`` shrinks each B x C x H x W valid CAM to ``grid_size`` x ``grid_size``
    (bilinear), takes the max over classes, pushes the B rows into the ring buffer of ``queue_rows``
    rows (initialised with uniform random numbers from ``seed``), refits and smooths. When a fit is
    impossible (too few activated values, empty component) the thresholds are left unchanged and
    ``skipped_fits`` counts it. ``state_dict`` / ``load_state_dict`` make resume exact.
    """

    def __init__(
        self,
        *,
        queue_rows: int,
        grid_size: int,
        init_low: float,
        init_high: float,
        filter_thre: float = 0.05,
        momentum: float = 0.99,
        seed: int = 0,
        max_samples: int | None = None,
        fit_every: int = 1,
    ) -> None:
        if queue_rows < 1 or grid_size < 1:
            raise CosaConfigError(f"queue_rows and grid_size must be >= 1, got {queue_rows}, {grid_size}.")
        if not 0.0 <= momentum < 1.0:
            raise CosaConfigError(f"momentum must be in [0, 1), got {momentum}.")
        if fit_every < 1 or (max_samples is not None and max_samples < 3):
            raise CosaConfigError(f"fit_every must be >= 1 and max_samples >= 3, got {fit_every}, {max_samples}.")
        self.queue_rows, self.grid_size = int(queue_rows), int(grid_size)
        self.filter_thre, self.momentum = float(filter_thre), float(momentum)
        self.seed, self.fit_every = int(seed), int(fit_every)
        self.max_samples = max_samples
        rng = np.random.default_rng(self.seed)
        self.queue = rng.random((self.queue_rows, self.grid_size**2))
        size = self.queue.size
        self._subset = None
        if max_samples is not None and max_samples < size:
            self._subset = np.sort(rng.choice(size, size=max_samples, replace=False))
        self.cursor = 0
        self.updates = 0
        self.skipped_fits = 0
        self._low, self._high = float(init_low), float(init_high)
        self.last_raw: tuple[float, float] | None = None

    @property
    def low(self) -> float:
        return self._low

    @property
    def high(self) -> float:
        return self._high

    def rows_from_cams(self, valid_cams: torch.Tensor) -> np.ndarray:
        """B x grid_size^2 rows: valid CAMs shrunk to the grid, max over classes."""
        if not isinstance(valid_cams, torch.Tensor) or valid_cams.dim() != 4:
            raise CosaInputError("valid_cams must be a B x C x H x W tensor of normalised, label-masked CAMs.")
        g = self.grid_size
        with torch.no_grad():
            small = shrink_bilinear(valid_cams.float(), (g, g))
            return small.amax(dim=1).reshape(valid_cams.shape[0], g * g).cpu().double().numpy()

    def push_rows(self, rows: np.ndarray) -> None:
        """Write rows into the ring buffer at the cursor (wrapping around)."""
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.queue.shape[1]:
            raise CosaInputError(f"rows must be N x {self.queue.shape[1]}, got {rows.shape}.")
        index = (self.cursor + np.arange(rows.shape[0])) % self.queue_rows
        self.queue[index] = rows
        self.cursor = int((self.cursor + rows.shape[0]) % self.queue_rows)

    def refit(self) -> tuple[float, float]:
        """Fit the GMM on the current buffer and fold the raw thresholds into the EMA."""
        values = self.queue.ravel() if self._subset is None else self.queue.ravel()[self._subset]
        try:
            raw_low, raw_high = gmm_thresholds(values, filter_thre=self.filter_thre)
        except (CosaInputError, ValueError):
            self.skipped_fits += 1
            return self._low, self._high
        self.last_raw = (raw_low, raw_high)
        m = self.momentum**self.fit_every
        self._low = m * self._low + (1.0 - m) * raw_low
        self._high = m * self._high + (1.0 - m) * raw_high
        return self._low, self._high

    def update(self, valid_cams: torch.Tensor) -> tuple[float, float]:
        """Push a batch of valid CAMs, refit when due, and return the smoothed (low, high)."""
        self.push_rows(self.rows_from_cams(valid_cams))
        self.updates += 1
        if (self.updates - 1) % self.fit_every == 0:
            return self.refit()
        return self._low, self._high

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically (tensors and plain numbers only)."""
        return {
            "queue": torch.from_numpy(self.queue.copy()),
            "cursor": self.cursor,
            "updates": self.updates,
            "skipped_fits": self.skipped_fits,
            "low": self._low,
            "high": self._high,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        queue = torch.as_tensor(state["queue"]).double().numpy()
        if queue.shape != self.queue.shape:
            raise CosaConfigError(
                f"saved threshold queue has shape {queue.shape} but this tracker uses {self.queue.shape}; "
                "resume with the same batch size and crop size."
            )
        self.queue = queue.copy()
        self.cursor = int(state["cursor"])
        self.updates = int(state.get("updates", 0))
        self.skipped_fits = int(state.get("skipped_fits", 0))
        self._low, self._high = float(state["low"]), float(state["high"])

"""Dynamic threshold searching: GMM rule, ring buffer, EMA and exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cosa_sdk.errors import CosaConfigError, CosaInputError
from cosa_sdk.training.method.dynamic_threshold import DynamicThreshold, gmm_thresholds, shrink_bilinear


def _trimodal(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0.15, 0.03, n), rng.normal(0.45, 0.05, n // 2), rng.normal(0.85, 0.04, n)])


def _cams(seed: int, b: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, 3, 4, 4, generator=g) ** 2
    return F.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False)


def test_gmm_thresholds_separate_three_modes() -> None:
    low, high = gmm_thresholds(_trimodal(600))
    assert 0.2 < low < 0.4 and 0.6 < high < 0.8 and low < high


def test_gmm_thresholds_explain_degenerate_input() -> None:
    with pytest.raises(CosaInputError, match="filter_thre"):
        gmm_thresholds(np.array([0.01, 0.02, 0.9]))


@pytest.mark.parametrize("size", [(28, 28), (5, 7), (16, 16), (40, 9)])
def test_shrink_equals_torch_bilinear(size: tuple[int, int]) -> None:
    x = torch.rand(2, 3, 32, 24, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    # Same arithmetic in another order: float32 rounding differs by a few ulps of values in [0, 1).
    torch.testing.assert_close(shrink_bilinear(x, size), expected, atol=1e-5, rtol=1e-5)


def test_update_pushes_grid_rows_and_smooths() -> None:
    tracker = DynamicThreshold(queue_rows=4, grid_size=4, init_low=0.25, init_high=0.7, seed=3)
    cams = _cams(0)
    tracker.update(cams)
    rows = F.interpolate(cams, size=(4, 4), mode="bilinear", align_corners=False).amax(1).reshape(2, 16)
    np.testing.assert_allclose(tracker.queue[:2], rows.double().numpy(), atol=1e-6)
    assert tracker.cursor == 2
    raw_low, raw_high = tracker.last_raw
    assert tracker.low == pytest.approx(0.99 * 0.25 + 0.01 * raw_low)
    assert tracker.high == pytest.approx(0.99 * 0.7 + 0.01 * raw_high)


def test_ring_buffer_wraps_around() -> None:
    tracker = DynamicThreshold(queue_rows=5, grid_size=2, init_low=0.2, init_high=0.7)
    for i in range(3):
        tracker.push_rows(np.full((2, 4), float(i)))
    assert tracker.cursor == 1
    np.testing.assert_array_equal(tracker.queue[:, 0], [2.0, 0.0, 1.0, 1.0, 2.0])


def test_state_dict_round_trip_continues_identically() -> None:
    a = DynamicThreshold(queue_rows=6, grid_size=4, init_low=0.25, init_high=0.7, seed=1)
    for i in range(3):
        a.update(_cams(i))
    state = a.state_dict()
    assert all(isinstance(v, (torch.Tensor, int, float)) for v in state.values())
    b = DynamicThreshold(queue_rows=6, grid_size=4, init_low=0.0, init_high=1.0, seed=99)
    b.load_state_dict(state)
    for i in range(3, 7):
        assert a.update(_cams(i)) == b.update(_cams(i))
    np.testing.assert_array_equal(a.queue, b.queue)
    assert a.skipped_fits == 0 and a.low != 0.25
    with pytest.raises(CosaConfigError, match="queue"):
        DynamicThreshold(queue_rows=2, grid_size=4, init_low=0.2, init_high=0.7).load_state_dict(state)


def test_fit_every_keeps_the_smoothing_time_constant() -> None:
    tracker = DynamicThreshold(queue_rows=4, grid_size=4, init_low=0.25, init_high=0.7, fit_every=3)
    tracker.update(_cams(0))
    low_after_fit = tracker.low
    raw_low = tracker.last_raw[0]
    assert low_after_fit == pytest.approx(0.99**3 * 0.25 + (1 - 0.99**3) * raw_low)
    tracker.update(_cams(1))
    tracker.update(_cams(2))
    assert tracker.low == low_after_fit  # no refit on updates 2 and 3
    tracker.update(_cams(3))
    assert tracker.low != low_after_fit


def test_subsampled_fit_is_close_to_the_exact_fit() -> None:
    values = _trimodal(4000, seed=2).reshape(-1, 100).clip(0, 1)
    exact = DynamicThreshold(queue_rows=values.shape[0], grid_size=10, init_low=0.2, init_high=0.7, momentum=0.0)
    fast = DynamicThreshold(
        queue_rows=values.shape[0], grid_size=10, init_low=0.2, init_high=0.7, momentum=0.0, max_samples=2000
    )
    for tracker in (exact, fast):
        tracker.push_rows(values)
        tracker.refit()
    assert fast.low == pytest.approx(exact.low, abs=0.02) and fast.high == pytest.approx(exact.high, abs=0.02)


def test_impossible_fit_keeps_thresholds_and_counts_it() -> None:
    tracker = DynamicThreshold(queue_rows=2, grid_size=2, init_low=0.25, init_high=0.7)
    assert tracker.update(torch.zeros(2, 3, 8, 8)) == (0.25, 0.7)
    assert tracker.skipped_fits == 1
    with pytest.raises(CosaInputError):
        tracker.update(torch.zeros(3, 8, 8))

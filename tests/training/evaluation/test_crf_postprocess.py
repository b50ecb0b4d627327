"""Dense-CRF post-processing: snaps uncertain labels to image edges."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pydensecrf")

from cosa_sdk.training.evaluation.crf_postprocess import dense_crf


def test_crf_moves_a_blurry_boundary_onto_the_image_edge() -> None:
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    image[:, 20:] = 255
    # foreground probability crosses 50 % at x = 16; the image edge is at x = 20
    fg = np.clip((np.arange(40) - 8) / 16.0, 0.05, 0.95)[None, :].repeat(40, 0)
    probs = np.stack([1 - fg, fg]).astype(np.float32)
    plain = probs.argmax(0)
    refined = dense_crf(image, probs)
    assert (plain[:, 17:20] == 1).all(), "without CRF the boundary sits inside the dark half"
    assert (refined[:, :20] == 0).all() and (refined[:, 20:] == 1).all(), "the CRF snaps it to the edge"

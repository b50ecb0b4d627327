"""Dense-CRF post-processing for `cosa eval --crf` through the `[crf]` extra (docs/method.md, "CRF post-processing")."""

from __future__ import annotations

import numpy as np

from cosa_sdk.errors import CosaConfigError


def dense_crf(image: np.ndarray, probs: np.ndarray, *, iterations: int = 1) -> np.ndarray:
    """Refine per-class probabilities (K, H, W) on an RGB uint8 image (H, W, 3); returns the label map.

    The official evaluation's setting: one mean-field step, Gaussian (sxy 1, compat 1) plus bilateral
    (sxy 121, srgb 5, compat 4) pairwise terms.
    """
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        raise CosaConfigError('--crf needs pydensecrf2: pip install "cosa-sdk[crf]"') from None
    num_classes, h, w = probs.shape
    if image.shape[:2] != (h, w):
        raise CosaConfigError(f"CRF image {image.shape[:2]} and probabilities {(h, w)} differ in size")
    crf = dcrf.DenseCRF2D(w, h, num_classes)
    unary = -np.log(np.clip(probs, 1e-8, 1.0)).reshape(num_classes, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=1, compat=1)
    crf.addPairwiseBilateral(sxy=121, srgb=5, rgbim=np.ascontiguousarray(image, dtype=np.uint8), compat=4)
    refined = np.asarray(crf.inference(iterations), dtype=np.float32).reshape(num_classes, h, w)
    return refined.argmax(0)

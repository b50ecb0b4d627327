"""cosa-sdk: CoSA weakly supervised semantic segmentation, from image labels to a served model.

`cosa_sdk.load(bundle).segment(image)` needs only numpy, pillow and an ONNX Runtime.
"""

from __future__ import annotations

__version__ = "0.1.0"

from cosa_sdk.errors import CosaError, CosaInputError, CosaModelError
from cosa_sdk.result import SegmentationResult
from cosa_sdk.segmenter import Segmenter, load

__all__ = [
    "CosaError",
    "CosaInputError",
    "CosaModelError",
    "SegmentationResult",
    "Segmenter",
    "__version__",
    "load",
]

"""Export a trained segmentation stream to a model bundle: ONNX, INT8 ONNX, TensorRT.

`export_bundle(checkpoint, out, ExportOptions(...))` is `cosa export` as a function. Importing this
package does not import torch; the exporters load it when they run.
"""

from __future__ import annotations

from cosa_sdk.export.pipeline import ExportOptions, ExportResult, export_bundle

__all__ = ["ExportOptions", "ExportResult", "export_bundle"]

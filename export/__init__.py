"""Export a trained segmentation stream to a model bundle: ONNX, INT8 ONNX, TensorRT."""

"""Inference backends: ONNX Runtime, TensorRT, torch."""

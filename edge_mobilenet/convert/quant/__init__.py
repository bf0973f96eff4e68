"""Quantization analysis: per-layer int8 error (TFLite and ONNX), the accuracy-aware search, and the
``quant-report`` it feeds."""

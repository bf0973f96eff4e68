"""The floor that runs artifacts, with no TensorFlow: LiteRT / tflite-runtime and ONNX Runtime sessions,
tensor specs, input quantization and output dequantization, XNNPACK delegation facts, the host's timing
loop, and the self-contained device runner (``device_runner.py`` travels to devices alone).

``sessions.run_artifact`` and ``sessions.artifact_specs`` run and describe any artifact by its runtime.
"""

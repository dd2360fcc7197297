"""ONNX Runtime: the `onnx` target (hand-written graph, genai package)."""

"""ONNX Runtime: the `onnx` target (target.py), its hand-written graph (graph.py) and package (package.py)."""

MODEL, DATA = "model.onnx", "model.onnx.data"
ACCURACY = {"int8": 4, "fp32": 1}  # --onnx-accuracy -> MatMulNBits accuracy_level

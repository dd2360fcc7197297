"""Core ML: the `ios` target (target.py) and its conversion (convert.py)."""

ENTRY = "model.mlpackage"
QRANGE = {4: (-8, 7), 8: (-128, 127)}  # the integer widths Core ML's constexpr weights take here

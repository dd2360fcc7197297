"""Names of the parity pairs, shared by the report and its plots."""

PAIRS = {
    "float_vs_quant": "float -> quantized eager (quantization error)",
    "quant_vs_artifact": "quantized eager -> artifact (lowering error)",
    "float_vs_artifact": "float -> artifact (end to end)",
    "quant_noise_floor": "quantized eager -> itself with 1-ulp input noise (floor for the lowering error)",
}
SHORT = {"float_vs_quant": "float→quant", "quant_vs_artifact": "quant→artifact", "float_vs_artifact": "float→artifact",
         "quant_noise_floor": "noise floor"}

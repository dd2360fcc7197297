"""Quantization: recipes (TOML) and their application with torchao."""

"""Shipped quantization recipes (TOML package data, read with importlib.resources)."""

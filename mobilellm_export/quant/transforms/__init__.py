"""Rewrites of the float model before rounding (smoothing, rotation): a registry."""

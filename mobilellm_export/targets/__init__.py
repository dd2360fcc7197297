"""Lowering targets: one module per runtime, the only place that imports its backend."""

"""Core ML: the `ios` target."""

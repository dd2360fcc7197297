"""ExecuTorch: the .pte/.ptd program (generic) and its XNNPACK target (`android`)."""

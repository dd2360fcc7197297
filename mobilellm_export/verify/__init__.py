"""Verification: parity metrics and latency for any pair of runners, and the report."""

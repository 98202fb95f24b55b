"""Benchmarks (``python -m minigrad_pfa.bench.<name>``)."""

"""Benchmarks: each prints its figures, and the anchor's from the same run as a ratio."""

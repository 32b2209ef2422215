"""Benchmark and comparison scripts (run as ``python -m experiments.<name>``)."""

"""Benchmarks for ttr_stats (run as modules: ``python -m benchmarks.cpu_methods``)."""

"""Benchmarks: each prints its numbers and writes bench/results_*.json."""

"""Benchmarks: each prints its numbers and writes bench/results/results_*.json."""

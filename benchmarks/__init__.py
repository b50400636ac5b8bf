"""Benchmarks: each peer side by side in one run, results as JSON under results/."""

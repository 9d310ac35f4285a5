"""Benchmarks, one module per technique: each defines run(args) -> dict."""

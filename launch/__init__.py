"""Entry points: quickstart, launchers, benchmarks."""

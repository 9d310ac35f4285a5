"""Quickstart stages, one module per technique: each defines run(workdir, *, fast) -> dict."""

"""offload: placeholder docstring."""

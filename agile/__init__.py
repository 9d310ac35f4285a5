"""agile: placeholder docstring."""

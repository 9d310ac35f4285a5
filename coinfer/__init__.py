"""coinfer: placeholder docstring."""

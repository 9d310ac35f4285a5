"""subnets: placeholder docstring."""

"""branching: placeholder docstring."""

"""cluster/api."""

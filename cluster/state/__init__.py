"""cluster/state."""

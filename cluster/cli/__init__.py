"""cluster/cli."""

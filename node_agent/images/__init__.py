"""node_agent/images."""

"""node_agent/network."""

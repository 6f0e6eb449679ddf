"""node_agent/drivers."""

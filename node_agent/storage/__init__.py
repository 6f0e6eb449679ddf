"""node_agent/storage."""

"""sdweb.engine."""

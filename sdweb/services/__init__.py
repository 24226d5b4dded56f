"""sdweb.services."""

"""sdweb.history."""

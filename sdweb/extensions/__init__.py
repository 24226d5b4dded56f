"""sdweb.extensions."""

"""sdweb.images."""

"""sdweb.api."""

"""sdweb.ui."""

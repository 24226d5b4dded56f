"""sdweb.engine.models."""

"""sdweb.engine.samplers."""

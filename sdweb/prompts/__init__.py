"""sdweb.prompts."""

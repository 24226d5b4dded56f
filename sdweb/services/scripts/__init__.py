"""Scripts: one request in, many requests run, their results combined (X/Y/Z plot, prompt matrix ...)."""

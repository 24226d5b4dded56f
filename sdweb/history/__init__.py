"""Prompt history: every generation kept in SQLite with full-text search (:mod:`sdweb.history.store`)."""

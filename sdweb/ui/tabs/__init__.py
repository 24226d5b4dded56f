"""The web UI tabs: one module per tab, each with a ``render_*_tab`` function."""

"""The web UI tabs: one module per tab, each with a ``render_*_tab`` function.

A tab whose pure pieces outgrow it keeps them beside it as ``<tab>_<what>.py`` (``img2img_inputs``,
``img2img_batch``); pieces several tabs share are :mod:`sdweb.ui.components`.
"""

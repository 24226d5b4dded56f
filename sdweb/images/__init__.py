"""Images on disk and their metadata, without torch or gradio.

* :mod:`sdweb.images.infotext`: A1111 infotext, written and parsed exactly as A1111 does.
* :mod:`sdweb.images.store`: the ``outputs/`` folder (A1111 names, atomic saves, gallery listing, path gate).
* :mod:`sdweb.images.metadata`: reading metadata from any tool's images; safe decoding of uploads.
"""

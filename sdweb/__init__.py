"""sdweb: a local Stable Diffusion web UI, compatible with AUTOMATIC1111's files, metadata and API."""

__version__ = "0.1.0"

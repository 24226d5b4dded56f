"""How API responses carry images and values: base64 PNGs (with their infotext) and plain JSON data."""

from __future__ import annotations

import base64
import io
import logging
import math
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)


def encode_png_base64(image: Any, infotext: str | None = None) -> str:
    """A PNG (with the infotext in its ``parameters`` chunk when given), base64, no ``data:`` prefix."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if infotext:
        info.add_text("parameters", infotext)  # tEXt, or iTXt for non-Latin-1 text
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON data: non-finite floats become None (JSON has no NaN), and objects JSON
    cannot hold (a ``torch.dtype`` in the runtime description, a Path in an option) become text.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(item) for item in value]
    return str(value)


def has_non_finite(value: Any) -> bool:
    """Whether ``value`` (a number, or lists and mappings of them) holds NaN or an infinity."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, Mapping):
        return any(has_non_finite(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(has_non_finite(item) for item in value)
    return False

"""Reading an uploaded picture in a tab: sdweb's own decoder and size limit, and errors for the user.

Uploads are decoded by ``sdweb.images.metadata.decode_image_bytes`` (its pixel limit refuses
decompression bombs with a message) rather than by gradio, which would decode any size.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image

logger = logging.getLogger(__name__)


class UploadError(ValueError):
    """An upload or choice that cannot be used (missing, broken, too large, contradictory).

    The message is for the user.
    """


def read_upload(path: str | Path | None, what: str) -> Image.Image:
    """Decode an uploaded file with sdweb's size limit; ``what`` names it in the error message."""
    from sdweb.images.metadata import ImageDecodeError, decode_image_bytes

    if not path:
        raise UploadError(f"Upload {what} first.")
    try:
        return decode_image_bytes(Path(path).read_bytes())
    except (OSError, ImageDecodeError) as exc:
        raise UploadError(f"Cannot read {what}: {exc}") from exc

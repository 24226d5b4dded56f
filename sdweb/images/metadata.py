"""Reading generation metadata out of image files, and decoding untrusted image bytes safely.

This module owns:

* :func:`read_image_metadata`: the A1111 infotext of an image (PNG ``parameters`` text chunk, or the
  EXIF ``UserComment`` of a JPEG/WEBP), which tool made it (A1111/Forge, ComfyUI, InvokeAI, NovelAI,
  Fooocus), and every text chunk raw, for the PNG Info tab.
* The EXIF ``UserComment`` encoding A1111 uses (``UNICODE`` + NUL + UTF-16): :func:`encode_user_comment`,
  :func:`decode_user_comment` and :func:`exif_bytes_with_user_comment`, which
  :class:`sdweb.images.store.ImageStore` writes with. Pillow's own ``Image.Exif``; no piexif.
* :func:`decode_image_bytes` / :func:`decode_base64_image`: uploads and API payloads become a loaded
  ``PIL.Image`` or a clear :class:`ImageDecodeError` (broken data, decompression bombs, bad base64),
  never a half-read image.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import re
import struct
from dataclasses import dataclass, field
from typing import Literal

from PIL import ExifTags, Image, UnidentifiedImageError

from sdweb.images.infotext import has_parameter_line

logger = logging.getLogger(__name__)

MetadataSource = Literal["a1111", "comfyui", "invokeai", "novelai", "fooocus", "unknown", "none"]

#: What the PNG Info tab says for an image that carries nothing to read.
NO_METADATA_MESSAGE = "This image has no generation parameters"

#: Default decode limit: an 8192x8192 image. Below Pillow's own warning threshold (~89 MP), far above
#: anything Stable Diffusion makes, small enough that a crafted file cannot eat the server's memory.
DEFAULT_MAX_PIXELS = 8192 * 8192

#: EXIF UserComment character-code prefixes (EXIF 2.3, section 4.6.5).
_UNICODE_PREFIX = b"UNICODE\x00"
_ASCII_PREFIX = b"ASCII\x00\x00\x00"
_JIS_PREFIX = b"JIS\x00\x00\x00\x00\x00"
_UNDEFINED_PREFIX = b"\x00" * 8

#: Image info entries that are format details, not metadata a person wrote.
_FORMAT_INFO_KEYS = frozenset(
    {
        "jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background",
        "timestamp", "duration", "progressive", "progression", "icc_profile", "chromaticity",
        "photoshop", "transparency", "gamma", "srgb", "adobe", "adobe_transform", "aspect",
        "xmp", "interlace", "mp", "mpoffset",
    }
)
#: Text keys by which InvokeAI marked its images over the years.
_INVOKEAI_KEYS = ("invokeai_metadata", "invokeai_graph", "invokeai_workflow", "sd-metadata", "Dream")


class ImageDecodeError(ValueError):
    """Bytes that are not an image sdweb will decode (broken, not an image, or too many pixels)."""


@dataclass(frozen=True)
class ImageMetadata:
    """What an image says about how it was made.

    Attributes:
        parameters: the A1111 infotext, when the image has one (A1111, Forge, Fooocus in A1111 mode,
            and anything else that writes ``parameters`` or an infotext ``UserComment``).
        source: which tool the metadata looks like it came from; ``"none"`` when there is none.
        raw: every text entry of the image (``prompt``/``workflow`` for ComfyUI, ``invokeai_metadata``,
            NovelAI's ``Comment``/``Description``, ``UserComment`` from EXIF, ...), for showing as is.
    """

    parameters: str | None
    source: MetadataSource
    raw: dict[str, str] = field(default_factory=dict)

    @property
    def message(self) -> str | None:
        """A sentence for a person when there are no A1111 parameters to show; None when there are."""
        if self.parameters:
            return None
        if self.source == "none":
            return NO_METADATA_MESSAGE
        names = {
            "comfyui": "ComfyUI",
            "invokeai": "InvokeAI",
            "novelai": "NovelAI",
            "fooocus": "Fooocus",
        }
        if self.source in names:
            return (
                f"This image was made with {names[self.source]}; its metadata is shown as it is "
                "(it has no A1111 generation parameters)"
            )
        return f"{NO_METADATA_MESSAGE} (it has other text metadata, shown as it is)"


# ---------------------------------------------------------------------------------------------
# EXIF UserComment
# ---------------------------------------------------------------------------------------------


def encode_user_comment(text: str) -> bytes:
    """EXIF UserComment bytes as A1111 writes them (piexif's ``encoding="unicode"``): UTF-16 BE."""
    return _UNICODE_PREFIX + text.encode("utf-16-be", errors="replace")


def decode_user_comment(data: bytes) -> str:
    """Text of an EXIF UserComment, whatever character code and byte order the writer used."""
    prefix, body = data[:8], data[8:]
    if prefix == _UNICODE_PREFIX:
        if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
            return body.decode("utf-16", errors="replace").rstrip("\x00")
        # A1111 (piexif) writes big-endian whatever the file's byte order; some tools follow the TIFF
        # byte order instead. Mostly-Latin text has its zero bytes on even offsets in UTF-16 BE.
        zeros_even = body[0::2].count(0)
        zeros_odd = body[1::2].count(0)
        encoding = "utf-16-le" if zeros_odd > zeros_even else "utf-16-be"
        return body[: len(body) // 2 * 2].decode(encoding, errors="replace").rstrip("\x00")
    if prefix == _ASCII_PREFIX:
        return body.decode("ascii", errors="replace").rstrip("\x00")
    if prefix == _JIS_PREFIX:
        return body.decode("shift_jis", errors="replace").rstrip("\x00")
    if prefix == _UNDEFINED_PREFIX:
        return body.decode("utf-8", errors="replace").rstrip("\x00")
    return data.decode("utf-8", errors="replace").rstrip("\x00")


def exif_bytes_with_user_comment(text: str) -> bytes:
    """A complete EXIF block (for ``Image.save(exif=...)``) holding ``text`` as UserComment.

    Written big-endian: then the UTF-16 BE text matches the file's byte order, so readers that follow
    the byte order (exiftool) and readers that assume big-endian (A1111/piexif) both read it.
    """
    exif = Image.Exif()
    exif.endian = ">"
    exif[ExifTags.IFD.Exif] = {ExifTags.Base.UserComment: encode_user_comment(text)}
    return exif.tobytes()


def _exif_user_comment(image: Image.Image) -> str | None:
    try:
        exif_ifd = image.getexif().get_ifd(ExifTags.IFD.Exif)
    except (OSError, ValueError, SyntaxError, struct.error) as error:
        logger.debug("unreadable EXIF: %s", error)
        return None
    value = exif_ifd.get(ExifTags.Base.UserComment)
    if isinstance(value, bytes):
        text = decode_user_comment(value)
    elif isinstance(value, str):
        text = value
    else:
        return None
    return text or None


# ---------------------------------------------------------------------------------------------
# Reading metadata
# ---------------------------------------------------------------------------------------------


def _text_entries(image: Image.Image) -> dict[str, str]:
    entries: dict[str, str] = {}
    for key, value in image.info.items():
        if not isinstance(key, str) or key in _FORMAT_INFO_KEYS:
            continue
        if isinstance(value, str):
            entries[key] = str(value)
        elif key == "comment" and isinstance(value, bytes):  # GIF / JPEG comment
            entries[key] = value.decode("utf-8", errors="replace")
    # PNG text chunks that come after the image data are only in ``text`` (it reads the whole file).
    png_text = getattr(image, "text", None)
    if isinstance(png_text, dict):
        for key, value in png_text.items():
            entries.setdefault(str(key), str(value))
    return entries


def _is_novelai(raw: dict[str, str]) -> bool:
    if raw.get("Software") == "NovelAI":
        return True
    if "Comment" not in raw or "Description" not in raw:
        return False
    try:
        comment = json.loads(raw["Comment"])
    except ValueError:
        return False
    return isinstance(comment, dict) and "uc" in comment


def read_image_metadata(image: Image.Image) -> ImageMetadata:
    """The generation metadata of an opened image: the A1111 infotext, its source and all raw text."""
    raw = _text_entries(image)
    user_comment = _exif_user_comment(image)
    if user_comment is not None:
        raw.setdefault("UserComment", user_comment)

    if "fooocus_scheme" in raw:
        # Fooocus writes ``parameters`` as an A1111 infotext or as its own JSON, and says which.
        is_text = raw["fooocus_scheme"] == "a1111" and "parameters" in raw
        return ImageMetadata(raw["parameters"] if is_text else None, "fooocus", raw)
    if raw.get("parameters"):
        return ImageMetadata(raw["parameters"], "a1111", raw)
    if user_comment is not None and has_parameter_line(user_comment):
        return ImageMetadata(user_comment, "a1111", raw)
    if "prompt" in raw or "workflow" in raw:
        return ImageMetadata(None, "comfyui", raw)
    if any(key in raw for key in _INVOKEAI_KEYS):
        return ImageMetadata(None, "invokeai", raw)
    if _is_novelai(raw):
        return ImageMetadata(None, "novelai", raw)
    comment = raw.get("comment")
    if comment and has_parameter_line(comment):
        return ImageMetadata(comment, "a1111", raw)
    return ImageMetadata(None, "unknown" if raw else "none", raw)


# ---------------------------------------------------------------------------------------------
# Decoding untrusted bytes
# ---------------------------------------------------------------------------------------------


def decode_image_bytes(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode image file bytes into a fully loaded image, or raise :class:`ImageDecodeError`.

    The pixel count is checked from the header before any pixel is decoded, so a small file that
    claims a huge size (a decompression bomb) costs nothing.
    """
    if not data:
        raise ImageDecodeError("no image data (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError(
            "the data is not an image that can be read "
            "(expected PNG, JPEG, WEBP or another format Pillow knows)"
        ) from None
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(f"image refused as a decompression bomb: {error}") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as error:
        raise ImageDecodeError(f"the image data is broken: {error}") from None

    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image is {width}x{height} ({width * height:,} pixels), more than the limit of "
            f"{max_pixels:,} pixels; refused so that it cannot exhaust memory"
        )
    try:
        image.load()
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(f"image refused as a decompression bomb: {error}") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError) as error:
        raise ImageDecodeError(f"the image data is broken or truncated: {error}") from None
    return image


_DATA_URL_RE = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),", re.IGNORECASE)


def decode_base64_image(text: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a base64 image (plain, or a ``data:image/...;base64,`` URL) as :func:`decode_image_bytes`."""
    payload = text.strip()
    match = _DATA_URL_RE.match(payload)
    if match is not None:
        mime = match.group("mime").lower()
        if mime and not mime.startswith("image/"):
            raise ImageDecodeError(f"data URL holds {mime!r}, not an image")
        if ";base64" not in match.group("params").lower():
            raise ImageDecodeError("data URL is not base64-encoded (expected 'data:image/...;base64,')")
        payload = payload[match.end() :]
    elif payload.lower().startswith("data:"):
        raise ImageDecodeError("malformed data URL (expected 'data:image/...;base64,<data>')")
    payload = "".join(payload.split())
    payload += "=" * (-len(payload) % 4)
    try:
        if "-" in payload or "_" in payload:
            data = base64.urlsafe_b64decode(payload.encode("ascii"))
        else:
            data = base64.b64decode(payload.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as error:
        raise ImageDecodeError(f"not valid base64 image data: {error}") from None
    return decode_image_bytes(data, max_pixels=max_pixels)

"""Preparing an init image for img2img: transparency flattened, then fitted to the requested size.

This module owns A1111's four img2img resize modes as Pillow operations (no torch), so the UI, the
API and the engine agree on what a mode means:

* 0 "Just resize": stretch to ``width x height`` (aspect ratio not kept).
* 1 "Crop and resize": scale to cover the target, keep the aspect ratio, cut off what sticks out
  (centred).
* 2 "Resize and fill": scale to fit inside the target, keep the aspect ratio, and fill the bands left
  over by stretching the image's outermost rows (or columns) into them, as A1111 does.
* 3 "Just resize (latent upscale)": the image is encoded at its own size (rounded to the VAE's grid by
  :func:`latent_upscale_source_size`) and its latents are resized by the engine.

Resampling is Lanczos throughout (A1111's default when no upscaler model is chosen for img2img).
Transparency is flattened onto a background colour before anything else (A1111's
``img2img_background_color``, white by default): the VAE knows only RGB, and dropping the alpha
channel instead would turn "transparent" into whatever colour the hidden pixels happen to hold.
"""

from __future__ import annotations

import logging
from typing import Literal

from PIL import Image

logger = logging.getLogger(__name__)

ResizeMode = Literal[0, 1, 2, 3]

#: A1111's names of the resize modes, by number (the API's ``resize_mode``).
RESIZE_MODE_NAMES: dict[int, str] = {
    0: "Just resize",
    1: "Crop and resize",
    2: "Resize and fill",
    3: "Just resize (latent upscale)",
}
#: The background transparent pixels are flattened onto (A1111's ``img2img_background_color``).
DEFAULT_BACKGROUND = "#ffffff"


def flatten_alpha(image: Image.Image,
                  background: str | tuple[int, int, int] = DEFAULT_BACKGROUND) -> Image.Image:
    """``image`` as RGB; pixels with transparency are composited onto ``background``.

    Palette images with a transparent index, LA and RGBA images carry transparency; CMYK, greyscale
    and 16-bit images are only converted.
    """
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        return image if image.mode == "RGB" else image.convert("RGB")
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, background)
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def resize_image(image: Image.Image, mode: int, width: int, height: int) -> Image.Image:
    """``image`` fitted to exactly ``width x height`` by resize ``mode`` 0, 1 or 2 (see the module).

    Mode 3 is not a pixel operation: use :func:`latent_upscale_source_size` and resize the latents.
    """
    if width < 1 or height < 1:
        raise ValueError(f"the target size must be positive (got {width}x{height})")
    if mode == 0:
        return image.resize((width, height), Image.Resampling.LANCZOS)
    if mode == 1:
        return _crop_and_resize(image, width, height)
    if mode == 2:
        return _resize_and_fill(image, width, height)
    if mode == 3:
        raise ValueError("resize mode 3 (latent upscale) resizes the latents, not the image")
    raise ValueError(f"resize_mode must be one of {sorted(RESIZE_MODE_NAMES)} "
                     f"({', '.join(f'{k} = {v}' for k, v in RESIZE_MODE_NAMES.items())}); got {mode}")


def latent_upscale_source_size(image: Image.Image, multiple: int = 8) -> tuple[int, int]:
    """The size the image is encoded at for mode 3: its own, rounded to the VAE's grid (at least one cell)."""
    return (max(multiple, round(image.width / multiple) * multiple),
            max(multiple, round(image.height / multiple) * multiple))


def _crop_and_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    # Scale so the image covers the target on both axes, then cut the centre out.
    scale = max(width / image.width, height / image.height)
    scaled_w = max(width, round(image.width * scale))
    scaled_h = max(height, round(image.height * scale))
    scaled = image.resize((scaled_w, scaled_h), Image.Resampling.LANCZOS)
    left = (scaled_w - width) // 2
    top = (scaled_h - height) // 2
    return scaled.crop((left, top, left + width, top + height))


def _resize_and_fill(image: Image.Image, width: int, height: int) -> Image.Image:
    # Scale so the image fits inside the target, centre it, and stretch its edge rows/columns outwards.
    scale = min(width / image.width, height / image.height)
    scaled_w = min(width, max(1, round(image.width * scale)))
    scaled_h = min(height, max(1, round(image.height * scale)))
    scaled = image.resize((scaled_w, scaled_h), Image.Resampling.LANCZOS)
    canvas = Image.new(scaled.mode, (width, height))
    left = (width - scaled_w) // 2
    top = (height - scaled_h) // 2
    canvas.paste(scaled, (left, top))
    if top > 0:
        canvas.paste(scaled.crop((0, 0, scaled_w, 1)).resize((scaled_w, top)), (left, 0))
    bottom = height - top - scaled_h
    if bottom > 0:
        edge = scaled.crop((0, scaled_h - 1, scaled_w, scaled_h)).resize((scaled_w, bottom))
        canvas.paste(edge, (left, top + scaled_h))
    if left > 0:
        canvas.paste(canvas.crop((left, 0, left + 1, height)).resize((left, height)), (0, 0))
    right = width - left - scaled_w
    if right > 0:
        edge = canvas.crop((left + scaled_w - 1, 0, left + scaled_w, height)).resize((right, height))
        canvas.paste(edge, (left + scaled_w, 0))
    return canvas

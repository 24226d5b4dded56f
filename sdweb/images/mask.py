"""Inpainting masks in Pillow: what the engine denoises, and how the result is pasted back.

This module owns the pixel side of inpainting, with A1111's meanings (no torch):

* The mask: white (255) = repaint, black = keep. ``invert`` swaps them. An RGBA mask with real
  transparency is read from its alpha channel (as A1111 does for masks drawn on a transparent layer).
  It must have the init image's size.
* ``mask_blur``: a Gaussian blur of that radius softens the edge (so the repainted part blends in).
* "Whole picture" (``only_masked`` false): image and mask are fitted to ``width x height`` with the
  resize mode; the output has that size.
* "Only masked" (``only_masked`` true): the box around the mask, grown by ``padding`` pixels and then
  to the output's aspect ratio, is cut out and scaled to ``width x height``; that is what the model
  sees, so small areas get the full resolution. The result is scaled back and pasted into the
  original picture, so the output has the init image's size.
* Pasting back: the generated pixels are laid under the original with the blurred mask (doubled, as
  A1111, so the repainted part reaches the edge of the mask); pixels outside the mask stay the
  original's exactly.
* ``fill`` 0 ("fill"): before encoding, the masked area is filled with the colours around it,
  blurred (so the model starts from the surroundings, not from what was there).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageFilter, ImageOps

from sdweb.images.resize import flatten_alpha, resize_image

logger = logging.getLogger(__name__)

#: A1111's names of ``inpainting_fill``, by number.
MASKED_CONTENT_NAMES: dict[int, str] = {0: "fill", 1: "original", 2: "latent noise", 3: "latent nothing"}


class MaskError(ValueError):
    """A mask that cannot be used with its init image (says why)."""


@dataclass(frozen=True)
class InpaintPlan:
    """One init image prepared for inpainting."""

    #: RGB, ``width x height``: what the VAE encodes (with "fill" applied).
    init: Image.Image
    #: L, ``width x height``: the blurred mask, 255 = repaint; the engine's latent mask comes from it.
    mask: Image.Image
    #: RGB: the picture the result is pasted into (the init image fitted, or the whole original).
    base: Image.Image
    #: L, ``base``'s size: how much of the generated image shows at each pixel of ``base``.
    overlay: Image.Image
    #: ``(left, top, right, bottom)`` in ``base`` that the generated image covers ("only masked").
    paste_box: tuple[int, int, int, int] | None = None


def read_mask(mask: Image.Image, *, invert: bool = False) -> Image.Image:
    """The mask as L (255 = repaint): from the alpha channel when it has real transparency."""
    if mask.mode in ("RGBA", "LA") and mask.getextrema()[-1] != (255, 255):
        alpha = mask.getchannel("A")
        result = alpha.point(lambda value: 255 if value > 128 else 0)
    else:
        result = mask.convert("L")
    return ImageOps.invert(result) if invert else result


def prepare_inpaint(image: Image.Image, mask: Image.Image, *, width: int, height: int, resize_mode: int,
                    mask_blur: int, invert: bool, fill: int, only_masked: bool, padding: int,
                    mask_blur_y: int | None = None) -> InpaintPlan:
    """Fit ``image`` and ``mask`` for one inpainting job (see the module docstring).

    ``mask_blur_y``: a vertical blur other than ``mask_blur`` (then the horizontal one), as A1111's
    ``mask_blur_x`` / ``mask_blur_y``; None blurs both ways alike.
    """
    if mask.size != image.size:
        raise MaskError(f"the mask is {mask.width}x{mask.height} but its init image is "
                        f"{image.width}x{image.height}; they must have the same size")
    if resize_mode == 3:
        raise MaskError("resize mode 3 (latent upscale) cannot be used with a mask; use 0, 1 or 2")
    rgb = flatten_alpha(image)
    binary = read_mask(mask, invert=invert)
    if binary.getbbox() is None:
        raise MaskError("the mask is empty (nothing to repaint): paint the area to change in white")
    radius = (mask_blur, mask_blur if mask_blur_y is None else mask_blur_y)
    blurred = binary.filter(ImageFilter.GaussianBlur(radius)) if max(radius) > 0 else binary
    if only_masked:
        box = _expand_to_aspect(_crop_box(binary, padding), width, height, rgb.width, rgb.height)
        fitted_mask = resize_image(blurred.crop(box), 2, width, height)
        init = resize_image(rgb.crop(box), 2, width, height)
        base, overlay, paste_box = rgb, _doubled(blurred), box
    else:
        fitted_mask = resize_image(blurred, resize_mode, width, height)
        init = resize_image(rgb, resize_mode, width, height)
        base, overlay, paste_box = init, _doubled(fitted_mask), None
    if fill == 0:
        init = fill_masked(init, fitted_mask)
    return InpaintPlan(init=init, mask=fitted_mask, base=base, overlay=overlay, paste_box=paste_box)


def paste_back(generated: Image.Image, plan: InpaintPlan) -> Image.Image:
    """The generated image put into ``plan.base`` through the overlay mask (unmasked pixels kept)."""
    layer = plan.base.copy()
    if plan.paste_box is None:
        layer = generated.convert("RGB")
    else:
        left, top, right, bottom = plan.paste_box
        layer.paste(resize_image(generated.convert("RGB"), 1, right - left, bottom - top), (left, top))
    return Image.composite(layer, plan.base, plan.overlay)


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """``image`` with the masked area filled from its surroundings (ever finer blurs, coarse first)."""
    keep = ImageOps.invert(mask.point(lambda value: 255 if value > 0 else 0))
    known = image.convert("RGBA")
    known.putalpha(keep)
    # Premultiplied, so blurring spreads only the colours that are kept, weighted by how many were seen.
    premultiplied = known.convert("RGBa")
    filled = Image.new("RGBA", image.size, (127, 127, 127, 255))
    for radius in (256, 64, 16, 4, 1):
        blurred = premultiplied.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        blurred.putalpha(blurred.getchannel("A").point(lambda value: 255 if value > 8 else 0))
        filled.alpha_composite(blurred)
    filled.alpha_composite(known)
    return filled.convert("RGB")


def _doubled(mask: Image.Image) -> Image.Image:
    return ImageChops.add(mask, mask)  # clips at 255


def _crop_box(mask: Image.Image, padding: int) -> tuple[int, int, int, int]:
    left, top, right, bottom = mask.getbbox() or (0, 0, mask.width, mask.height)
    return (max(0, left - padding), max(0, top - padding), min(mask.width, right + padding),
            min(mask.height, bottom + padding))


def _expand_to_aspect(box: tuple[int, int, int, int], width: int, height: int, image_w: int,
                      image_h: int) -> tuple[int, int, int, int]:
    """Grow ``box`` (centred, within the image) until its aspect ratio is ``width / height``."""
    left, top, right, bottom = box
    box_w, box_h = right - left, bottom - top
    ratio = width / height
    if box_w / box_h < ratio:
        target_w = min(image_w, round(box_h * ratio))
        left, right = _grow(left, right, target_w, image_w)
    else:
        target_h = min(image_h, round(box_w / ratio))
        top, bottom = _grow(top, bottom, target_h, image_h)
    return left, top, right, bottom


def _grow(start: int, end: int, size: int, limit: int) -> tuple[int, int]:
    extra = size - (end - start)
    start -= extra // 2
    end += extra - extra // 2
    if start < 0:
        end, start = end - start, 0
    if end > limit:
        start, end = max(0, start - (end - limit)), limit
    return start, end

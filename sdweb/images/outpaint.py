"""Outpainting by padding the canvas ("Poor man's outpainting"): a bigger picture plus its mask.

This module owns the pixel side of outpainting with plain checkpoints (Pillow only, no torch):

1. :func:`pad_for_outpainting` grows the picture by ``pixels`` on the chosen sides (``left``, ``right``,
   ``up``, ``down``; A1111's names). The new area is filled by stretching the picture's edge pixels
   outwards ("edge"), optionally with noise on top ("noise"), so the model has colours to start from.
   Sides grow a little more where needed so the canvas is a multiple of 8 pixels (the VAE's grid).
2. The mask is white over the new area and reaches ``overlap`` pixels into the picture on each padded
   side (A1111 uses the mask blur for this), so the seam is repainted too; the rest is black.
3. :func:`prepare_outpainting` turns an img2img request into the inpainting request that runs on that
   canvas: "Whole picture" at the canvas size, so the picture's own pixels (outside the overlap) come
   back unchanged. The regular inpainting path (:mod:`sdweb.images.mask`) does the rest.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

from sdweb.images.resize import flatten_alpha
from sdweb.params import Img2ImgParams

logger = logging.getLogger(__name__)

#: The sides a picture can grow on, in A1111's order and names.
OUTPAINT_SIDES: tuple[str, ...] = ("left", "right", "up", "down")
#: How the new area is filled before the model repaints it.
OUTPAINT_FILLS: tuple[str, ...] = ("edge", "noise")
#: Largest pixels per side (A1111's slider goes to 256; a bound keeps the canvas sane).
MAX_OUTPAINT_PIXELS = 1024
#: Largest canvas side (GenerationParams' width/height bound).
MAX_CANVAS_SIDE = 2048
#: How strongly "noise" disturbs the stretched edge colours (0 none, 1 pure noise).
NOISE_STRENGTH = 0.35


class OutpaintError(ValueError):
    """Outpainting values that cannot be used (the message names the value and the range)."""


@dataclass(frozen=True)
class OutpaintCanvas:
    """A padded picture, its mask, and where the original sits in it."""

    #: RGB, the canvas: the original pasted at ``box``, the new area filled.
    image: Image.Image
    #: L, the canvas' size: 255 = repaint (the new area plus the overlap), 0 = keep.
    mask: Image.Image
    #: ``(left, top, right, bottom)`` of the original picture in the canvas.
    box: tuple[int, int, int, int]


def pad_for_outpainting(
    image: Image.Image,
    *,
    pixels: int,
    sides: Sequence[str],
    overlap: int = 0,
    fill: str = "edge",
    seed: int = 0,
    multiple: int = 8,
) -> OutpaintCanvas:
    """Grow ``image`` by ``pixels`` on ``sides``; see the module docstring.

    Raises:
        OutpaintError: no or unknown sides, ``pixels`` out of range, an unknown fill, or a canvas larger
            than :data:`MAX_CANVAS_SIDE`.
    """
    # 1. Check the values.
    chosen = _check_sides(sides)
    if not 1 <= pixels <= MAX_OUTPAINT_PIXELS:
        raise OutpaintError(f"pixels to expand must be between 1 and {MAX_OUTPAINT_PIXELS} (got {pixels})")
    if fill not in OUTPAINT_FILLS:
        raise OutpaintError(f"unknown outpainting fill {fill!r}; known: {', '.join(OUTPAINT_FILLS)}")
    if overlap < 0:
        raise OutpaintError(f"the overlap must be 0 or more pixels (got {overlap})")

    # 2. How much each side grows: ``pixels``, then up to the grid (on a grown side, else the far one).
    grow = {side: pixels if side in chosen else 0 for side in OUTPAINT_SIDES}
    _round_up(grow, image.width, ("left", "right"), multiple)
    _round_up(grow, image.height, ("up", "down"), multiple)
    width = image.width + grow["left"] + grow["right"]
    height = image.height + grow["up"] + grow["down"]
    if max(width, height) > MAX_CANVAS_SIDE:
        raise OutpaintError(f"the outpainted picture would be {width}x{height}; at most {MAX_CANVAS_SIDE} "
                            "pixels a side: expand by fewer pixels or start from a smaller picture")

    # 3. The canvas, the new area filled from the edges.
    source = flatten_alpha(image)
    box = (grow["left"], grow["up"], grow["left"] + image.width, grow["up"] + image.height)
    canvas = _stretch_edges(source, grow)
    new_area = Image.new("L", canvas.size, 255)
    ImageDraw.Draw(new_area).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=0)
    if fill == "noise":
        noisy = Image.blend(canvas, _noise(canvas.size, seed), NOISE_STRENGTH)
        canvas = Image.composite(noisy, canvas, new_area)

    # 4. The mask: the new area, reaching ``overlap`` pixels into the picture on the grown sides.
    mask = Image.new("L", canvas.size, 255)
    keep = (
        box[0] + overlap if grow["left"] else 0,
        box[1] + overlap if grow["up"] else 0,
        box[2] - overlap if grow["right"] else width,
        box[3] - overlap if grow["down"] else height,
    )
    if keep[0] < keep[2] and keep[1] < keep[3]:
        ImageDraw.Draw(mask).rectangle((keep[0], keep[1], keep[2] - 1, keep[3] - 1), fill=0)
    return OutpaintCanvas(image=canvas, mask=mask, box=box)


def prepare_outpainting(
    params: Img2ImgParams,
    image: Image.Image,
    *,
    pixels: int,
    sides: Sequence[str],
    fill: str = "edge",
) -> tuple[Img2ImgParams, Image.Image, Image.Image]:
    """``(request, canvas, mask)`` for outpainting ``image`` with ``params``' prompt and settings.

    The request inpaints the "Whole picture" at the canvas size (so the output is the canvas, the
    picture in place), with the mask as drawn ("Inpaint masked"); the overlap is ``params.mask_blur``.

    Raises:
        OutpaintError: as :func:`pad_for_outpainting`.
    """
    canvas = pad_for_outpainting(image, pixels=pixels, sides=sides, overlap=params.mask_blur, fill=fill,
                                 seed=max(params.seed, 0))
    request = params.model_copy(update={
        "width": canvas.image.width,
        "height": canvas.image.height,
        "resize_mode": 0,
        "inpaint_full_res": False,
        "inpainting_mask_invert": False,
    })
    return request, canvas.image, canvas.mask


def _check_sides(sides: Sequence[str]) -> set[str]:
    if isinstance(sides, str):
        sides = [sides]
    chosen = {str(side).strip().lower() for side in sides}
    unknown = sorted(chosen - set(OUTPAINT_SIDES))
    if unknown:
        raise OutpaintError(f"unknown outpainting direction(s) {', '.join(map(repr, unknown))}; "
                            f"known: {', '.join(OUTPAINT_SIDES)}")
    if not chosen:
        raise OutpaintError(f"choose at least one outpainting direction ({', '.join(OUTPAINT_SIDES)})")
    return chosen


def _round_up(grow: dict[str, int], size: int, pair: tuple[str, str], multiple: int) -> None:
    """Grow one axis a little more so the canvas side is a multiple of ``multiple``."""
    short = -(size + grow[pair[0]] + grow[pair[1]]) % multiple
    if short:
        side = pair[1] if grow[pair[1]] or not grow[pair[0]] else pair[0]
        grow[side] += short


def _stretch_edges(image: Image.Image, grow: dict[str, int]) -> Image.Image:
    """The picture on a bigger canvas, each new column/row a copy of the nearest edge pixels."""
    width, height = image.size
    # Sideways first, then up/down from the widened picture, so the corners take the corner pixels.
    wide = Image.new("RGB", (width + grow["left"] + grow["right"], height))
    wide.paste(image, (grow["left"], 0))
    if grow["left"]:
        wide.paste(image.crop((0, 0, 1, height)).resize((grow["left"], height)), (0, 0))
    if grow["right"]:
        wide.paste(image.crop((width - 1, 0, width, height)).resize((grow["right"], height)),
                   (grow["left"] + width, 0))
    tall = Image.new("RGB", (wide.width, height + grow["up"] + grow["down"]))
    tall.paste(wide, (0, grow["up"]))
    if grow["up"]:
        tall.paste(wide.crop((0, 0, wide.width, 1)).resize((wide.width, grow["up"])), (0, 0))
    if grow["down"]:
        tall.paste(wide.crop((0, height - 1, wide.width, height)).resize((wide.width, grow["down"])),
                   (0, grow["up"] + height))
    return tall


def _noise(size: tuple[int, int], seed: int) -> Image.Image:
    """Uniform RGB noise, the same for the same seed (outpainting is reproducible from the infotext)."""
    rng = random.Random(seed)
    return Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))

"""What the img2img form's pictures make of a request: the init image, the mask (drawn or uploaded) and
outpainting, and the output size an upload suggests. Pure functions, tested without a browser.

* Inpainting: the mask is painted over the init image with a brush (an image editor whose background
  follows the init image; :func:`mask_from_editor` turns the strokes into the mask) or uploaded.
* Outpainting: the picture grows on the chosen sides and the new area is inpainted
  (:func:`sdweb.images.outpaint.prepare_outpainting`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageChops

from sdweb.images.outpaint import OUTPAINT_SIDES, OutpaintError, prepare_outpainting
from sdweb.params import Img2ImgParams
from sdweb.ui.components.uploads import UploadError, read_upload
from sdweb.ui.controls import MAX_SIDE
from sdweb.ui.fields import img2img_params_from_form

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutpaintChoice:
    """The Outpainting accordion's values."""

    enabled: bool = False
    pixels: int = 128
    sides: tuple[str, ...] = OUTPAINT_SIDES
    fill: str = "edge"


def mask_from_editor(value: Mapping[str, Any] | None, size: tuple[int, int]) -> Image.Image | None:
    """The inpainting mask painted in the image editor: L at ``size``, 255 wherever any layer has paint.

    ``value`` is gradio's ImageEditor value (``{"background", "layers", "composite"}``, images as PIL,
    numpy arrays or file paths). The strokes' colour does not matter, only where they are (their alpha);
    layers of another size than the init image (the editor's canvas) are scaled to it. None when nothing
    was painted.
    """
    if not value:
        return None
    painted: Image.Image | None = None
    for layer in value.get("layers") or ():
        image = _as_image(layer)
        if image is None:
            continue
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            coverage = image.convert("RGBA").getchannel("A")
        else:
            coverage = image.convert("L")  # a layer without alpha: its bright strokes
        strokes = coverage.point(lambda level: 255 if level > 0 else 0)
        if strokes.size != size:
            strokes = strokes.resize(size, Image.Resampling.NEAREST)
        painted = strokes if painted is None else ImageChops.lighter(painted, strokes)
    if painted is None or painted.getbbox() is None:
        return None
    return painted


def editor_value_for(image: Any) -> dict[str, Any] | None:
    """The image editor's value that shows ``image`` (a path or picture) with nothing painted on it."""
    if not image:
        return None
    return {"background": image, "layers": [], "composite": image}


def _as_image(item: Any) -> Image.Image | None:
    if item is None:
        return None
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, np.ndarray):
        return Image.fromarray(item)
    with Image.open(item) as opened:  # a file path (type="filepath")
        opened.load()
        return opened.copy()


def img2img_request(
    values: Mapping[str, Any],
    image_path: str | None,
    mask_path: str | None,
    *,
    drawn: Mapping[str, Any] | None = None,
    outpaint: OutpaintChoice | None = None,
    section_values: Mapping[str, Any] | None = None,
) -> tuple[Img2ImgParams, list[Image.Image], Image.Image | None]:
    """The request, init images and mask from the tab's values, uploaded files and drawn mask.

    ``drawn`` is the inpaint editor's value (its strokes are the mask); ``outpaint`` grows the picture
    and makes the mask itself; ``section_values`` are the request fields the form's sections add.

    Raises:
        UploadError: no init image, an upload that does not decode, both a drawn and an uploaded mask,
            a mask together with outpainting, or outpainting values that cannot be used.
        pydantic.ValidationError: a value out of range.
    """
    image = read_upload(image_path, "an image for img2img")
    uploaded = read_upload(mask_path, "the mask") if mask_path else None
    painted = mask_from_editor(drawn, image.size)
    if uploaded is not None and painted is not None:
        raise UploadError("There is a drawn mask and an uploaded mask: clear one of them (the drawn one "
                          "with the editor's eraser or by uploading the image again).")
    params = img2img_params_from_form(values, section_values)
    return picture_job(params, image, painted if painted is not None else uploaded, outpaint)


def picture_job(
    params: Img2ImgParams, image: Image.Image, mask: Image.Image | None, outpaint: OutpaintChoice | None
) -> tuple[Img2ImgParams, list[Image.Image], Image.Image | None]:
    """``(request, init images, mask)`` for one picture: as it is, or grown for outpainting.

    Raises:
        UploadError: a mask together with outpainting, or outpainting values that cannot be used.
    """
    if outpaint is None or not outpaint.enabled:
        return params, [image], mask
    if mask is not None:
        raise UploadError("Outpainting makes its own mask: clear the drawn or uploaded mask, or turn "
                          "outpainting off.")
    try:
        request, canvas, made = prepare_outpainting(params, image, pixels=int(outpaint.pixels),
                                                    sides=outpaint.sides, fill=outpaint.fill)
    except OutpaintError as exc:
        raise UploadError(f"Outpainting: {exc}.") from exc
    return request, [canvas], made


def size_for_upload(width: int, height: int) -> tuple[int, int]:
    """The output size an uploaded picture suggests: its own, to a multiple of 8, within the limits.

    Larger pictures are scaled down with their aspect ratio so the longer side is ``MAX_SIDE``.
    """
    scale = min(1.0, MAX_SIDE / max(width, height, 1))

    def fit(side: int) -> int:
        return int(min(MAX_SIDE, max(64, round(side * scale / 8) * 8)))

    return fit(width), fit(height)

"""The built-in upscalers and the Extras tab's "scale by" / "scale to" arithmetic, with Pillow only.

This module owns what ``/sdapi/v1/upscalers`` lists and what ``extra-single-image`` /
``extra-batch-images`` do to one image:

* Upscalers: "None" (leaves the image as it is, as A1111's "None"), "Lanczos" and "Nearest"
  (Pillow's resampling filters). They need no model files and no torch.
* Mode 0 "Scale by": ``factor`` times the size, rounded to whole pixels. (A1111 floors the result to a
  multiple of 8; here the size is the exact product, which is what people ask for.)
* Mode 1 "Scale to": scale by the larger of ``to_width / width`` and ``to_height / height`` so the
  image covers the box; with ``crop`` the centre ``to_width x to_height`` is kept (exact size), without
  it the aspect ratio wins and one side may be larger than asked, as in A1111.

Memory: a Pillow resize holds the source and the result and nothing else, so no tiling is needed;
what bounds memory is :data:`MAX_OUTPUT_SIDE` (checked before any pixel is touched). Tiles matter
for model upscalers (ESRGAN-family networks, whose activations grow with the input); those are not
built in: spandrel, the library that loads them, imports torchvision, which does not import beside
the CPU torch build the core install uses. They are meant for an optional ``upscalers`` extra that
would add a tiled engine-side upscaler behind the same :func:`upscale_image` names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from PIL import Image

logger = logging.getLogger(__name__)

#: Largest side an upscaled image may have (the decode limit of uploads, 8192, too).
MAX_OUTPUT_SIDE = 8192
#: Largest "scale by" factor (A1111's slider goes to 8).
MAX_FACTOR = 8.0

_FILTERS: dict[str, Image.Resampling | None] = {
    "None": None,
    "Lanczos": Image.Resampling.LANCZOS,
    "Nearest": Image.Resampling.NEAREST,
}

ExtrasResizeMode = Literal[0, 1]

#: A1111's latent upscale modes for hires fix: name -> (``torch.nn.functional.interpolate`` mode,
#: antialias). The engine applies them (``sdweb.engine.hires``); listed here so the API can name them
#: without torch.
LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}


class UpscaleError(ValueError):
    """An upscale request that cannot be done (size or factor out of range); says why."""


class UnknownUpscalerError(UpscaleError):
    """No upscaler by that name (the message lists the known ones)."""


@dataclass(frozen=True)
class UpscalerInfo:
    """One entry of ``/sdapi/v1/upscalers``."""

    name: str
    scale: float = 4.0
    model_name: str | None = None
    model_path: str | None = None


def list_upscalers() -> list[UpscalerInfo]:
    """The built-in upscalers, in A1111's order."""
    return [UpscalerInfo(name=name) for name in _FILTERS]


def find_upscaler(name: str) -> str:
    """The canonical name of upscaler ``name`` (case-insensitive), or :class:`UpscaleError`."""
    for known in _FILTERS:
        if known.lower() == name.strip().lower():
            return known
    raise UnknownUpscalerError(f"upscaler {name!r} not found; known: {', '.join(_FILTERS)} "
                       "(model upscalers such as ESRGAN are not supported yet)")


def find_hires_upscaler(name: str) -> str:
    """The canonical name of a hires fix upscaler (a latent mode or a built-in one).

    Unknown names raise :class:`UnknownUpscalerError` listing them all.
    """
    for mode in LATENT_UPSCALE_MODES:
        if mode.lower() == name.strip().lower():
            return mode
    try:
        return find_upscaler(name)
    except UnknownUpscalerError:
        known = ", ".join([*LATENT_UPSCALE_MODES, *_FILTERS])
        raise UnknownUpscalerError(f"hr_upscaler {name!r} not found; known: {known}") from None


def upscaled_size(width: int, height: int, *, mode: int, factor: float, to_width: int, to_height: int,
                  crop: bool) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """``((scaled_w, scaled_h), crop_to)``: the size to resample to, then the box to cut (or None)."""
    if mode == 0:
        if not 0 < factor <= MAX_FACTOR:
            raise UpscaleError(f"upscaling_resize must be above 0 and at most {MAX_FACTOR:g} (got {factor})")
        scaled = (max(1, round(width * factor)), max(1, round(height * factor)))
        crop_to = None
    elif mode == 1:
        if to_width < 1 or to_height < 1:
            raise UpscaleError(f"upscaling_resize_w and upscaling_resize_h must be at least 1 "
                               f"(got {to_width}x{to_height})")
        ratio = max(to_width / width, to_height / height)
        scaled = (max(to_width if crop else 1, round(width * ratio)),
                  max(to_height if crop else 1, round(height * ratio)))
        crop_to = (to_width, to_height) if crop else None
    else:
        raise UpscaleError(f"resize_mode must be 0 (scale by) or 1 (scale to), got {mode}")
    if max(scaled) > MAX_OUTPUT_SIDE:
        raise UpscaleError(f"the upscaled image would be {scaled[0]}x{scaled[1]}; at most "
                           f"{MAX_OUTPUT_SIDE} pixels a side are allowed")
    return scaled, crop_to


def upscale_image(image: Image.Image, *, upscaler: str, mode: int = 0, factor: float = 2.0,
                  to_width: int = 512, to_height: int = 512, crop: bool = True) -> Image.Image:
    """``image`` upscaled as the Extras tab asks; "None" returns it unchanged (only converted)."""
    name = find_upscaler(upscaler)
    image = _workable(image)
    resample = _FILTERS[name]
    if resample is None:
        return image
    scaled_size, crop_to = upscaled_size(image.width, image.height, mode=mode, factor=factor,
                                         to_width=to_width, to_height=to_height, crop=crop)
    scaled = image if scaled_size == image.size else image.resize(scaled_size, resample)
    if crop_to is None or crop_to == scaled.size:
        return scaled
    left = (scaled.width - crop_to[0]) // 2
    top = (scaled.height - crop_to[1]) // 2
    return scaled.crop((left, top, left + crop_to[0], top + crop_to[1]))


def _workable(image: Image.Image) -> Image.Image:
    # Palette, CMYK and 16-bit images resample badly or not at all: work in RGB(A).
    if image.mode in ("RGB", "RGBA", "L"):
        return image
    transparent = image.mode in ("LA", "PA") or "transparency" in image.info
    return image.convert("RGBA" if transparent else "RGB")

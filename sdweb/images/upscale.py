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
what bounds memory is :data:`MAX_OUTPUT_SIDE` (checked before any pixel is touched).

Model upscalers (ESRGAN-family ``.pth`` / ``.safetensors`` files in ``models/ESRGAN``) are run by the
engine (:mod:`sdweb.engine.upscalers`, tiled, through the optional ``upscalers`` extra) and listed
beside these by the service layer (:mod:`sdweb.services.upscalers`). This module stays torch-free:
:func:`upscale_image` takes the model's resampling as a function (``model_resize``) and keeps the size
arithmetic and cropping the same for every upscaler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
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


class ModelUpscalerError(UpscaleError):
    """A model upscaler that cannot run: the optional extra is missing, or its file is unusable."""


@dataclass(frozen=True)
class UpscalerInfo:
    """One entry of ``/sdapi/v1/upscalers`` (A1111's fields)."""

    name: str
    scale: float = 4.0
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None


def list_upscalers() -> list[UpscalerInfo]:
    """The built-in upscalers, in A1111's order."""
    return [UpscalerInfo(name=name) for name in _FILTERS]


def find_upscaler(name: str, model_names: Sequence[str] = ()) -> str:
    """The canonical name of upscaler ``name`` (case-insensitive), or :class:`UnknownUpscalerError`.

    ``model_names``: the model upscalers there are (``models/ESRGAN``), known after the built-ins.
    """
    for known in (*_FILTERS, *model_names):
        if known.lower() == name.strip().lower():
            return known
    hint = "" if model_names else " (model upscalers: put ESRGAN .pth/.safetensors files in models/ESRGAN)"
    raise UnknownUpscalerError(f"upscaler {name!r} not found; known: {', '.join([*_FILTERS, *model_names])}"
                               f"{hint}")


def find_hires_upscaler(name: str, model_names: Sequence[str] = ()) -> str:
    """The canonical name of a hires fix upscaler (a latent mode, a built-in one or a model's).

    Unknown names raise :class:`UnknownUpscalerError` listing them all.
    """
    for mode in LATENT_UPSCALE_MODES:
        if mode.lower() == name.strip().lower():
            return mode
    try:
        return find_upscaler(name, model_names)
    except UnknownUpscalerError:
        known = ", ".join([*LATENT_UPSCALE_MODES, *_FILTERS, *model_names])
        raise UnknownUpscalerError(f"hr_upscaler {name!r} not found; known: {known}") from None


def is_builtin_upscaler(name: str) -> bool:
    """Whether ``name`` is one of the Pillow upscalers or latent modes (needs no model file)."""
    return name in _FILTERS or name in LATENT_UPSCALE_MODES


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


ModelResize = Callable[[Image.Image, tuple[int, int]], Image.Image]


def upscale_image(image: Image.Image, *, upscaler: str, mode: int = 0, factor: float = 2.0,
                  to_width: int = 512, to_height: int = 512, crop: bool = True,
                  model_resize: ModelResize | None = None) -> Image.Image:
    """``image`` upscaled as the Extras tab asks; "None" returns it unchanged (only converted).

    ``model_resize(image, size)``: for a model upscaler, the function that brings ``image`` to ``size``
    with it (``upscaler`` is then only its name); without it ``upscaler`` must be a built-in one.
    """
    name = upscaler if model_resize is not None else find_upscaler(upscaler)
    image = _workable(image)
    resample = None if model_resize is not None else _FILTERS[name]
    if model_resize is None and resample is None:
        return image
    scaled_size, crop_to = upscaled_size(image.width, image.height, mode=mode, factor=factor,
                                         to_width=to_width, to_height=to_height, crop=crop)
    if scaled_size == image.size:
        scaled = image
    elif model_resize is not None:
        scaled = model_resize(image, scaled_size)
    else:
        scaled = image.resize(scaled_size, resample)
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

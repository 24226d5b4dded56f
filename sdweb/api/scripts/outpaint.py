"""A1111's "Poor man's outpainting" img2img script: pad the init image and inpaint the new area.

``script_name: "poor man's outpainting"`` (any case) with A1111's ``script_args`` order
``[pixels, mask_blur, inpainting_fill, directions]`` (missing ones take the script's defaults); the
padding and its mask are :func:`sdweb.images.outpaint.prepare_outpainting`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sdweb.api.errors import ApiError
from sdweb.api.models import Txt2ImgRequest
from sdweb.api.scripts.base import ImageJob, ScriptHandler
from sdweb.images.mask import MASKED_CONTENT_NAMES
from sdweb.images.outpaint import OUTPAINT_SIDES, OutpaintError, prepare_outpainting

logger = logging.getLogger(__name__)

#: The script's name, A1111's title as its API matches it (lower case).
OUTPAINT_SCRIPT = "poor man's outpainting"
#: Its ``script_args`` in A1111's order, with A1111's defaults: pixels, mask blur, masked content, directions.
OUTPAINT_SCRIPT_DEFAULTS: tuple[Any, ...] = (128, 4, 0, list(OUTPAINT_SIDES))
#: Its arguments as ``GET /script-info`` describes them (A1111's labels and ranges).
OUTPAINT_SCRIPT_ARGS: tuple[dict[str, Any], ...] = (
    {"label": "Pixels to expand", "value": 128, "minimum": 8, "maximum": 256, "step": 8},
    {"label": "Mask blur", "value": 4, "minimum": 0, "maximum": 64, "step": 1},
    {"label": "Masked content", "value": "fill", "choices": list(MASKED_CONTENT_NAMES.values())},
    {"label": "Outpainting direction", "value": list(OUTPAINT_SIDES), "choices": list(OUTPAINT_SIDES)},
)


@dataclass(frozen=True)
class OutpaintScript:
    """The poor man's outpainting script's arguments, checked."""

    pixels: int
    mask_blur: int
    inpainting_fill: int
    directions: tuple[str, ...]


def _is_whole(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer()


def outpaint_script_args(args: Sequence[Any], request: Txt2ImgRequest) -> OutpaintScript:
    """The script's arguments, checked; bad ones (or a mask sent with it) -> 422 naming each."""
    args = list(args)
    if len(args) > len(OUTPAINT_SCRIPT_DEFAULTS):
        raise ApiError(422, f"script_args: poor man's outpainting takes at most 4 values [pixels, "
                            f"mask_blur, inpainting_fill, directions] (got {len(args)})")
    pixels, blur, fill, directions = [*args, *OUTPAINT_SCRIPT_DEFAULTS[len(args):]]
    problems = []
    if getattr(request, "mask", None):
        problems.append("mask: poor man's outpainting makes its own mask; send no mask")
    if not _is_whole(pixels) or not 1 <= pixels <= 1024:
        problems.append(f"script_args[0] (pixels): a whole number from 1 to 1024 (got {pixels!r})")
    if not _is_whole(blur) or not 0 <= blur <= 64:
        problems.append(f"script_args[1] (mask_blur): a whole number from 0 to 64 (got {blur!r})")
    names = {name: number for number, name in MASKED_CONTENT_NAMES.items()}
    fill = names.get(fill, fill) if isinstance(fill, str) else fill
    if not _is_whole(fill) or fill not in MASKED_CONTENT_NAMES:
        problems.append(f"script_args[2] (inpainting_fill): 0-3 or one of {', '.join(names)} (got {fill!r})")
    if isinstance(directions, str):
        directions = [directions]
    if not isinstance(directions, list) or not all(isinstance(item, str) for item in directions):
        problems.append(f"script_args[3] (directions): a list of {', '.join(OUTPAINT_SIDES)} (got "
                        f"{directions!r})")
        directions = []
    if problems:
        raise ApiError(422, "; ".join(problems))
    return OutpaintScript(pixels=int(pixels), mask_blur=int(blur), inpainting_fill=int(fill),
                          directions=tuple(directions))


def outpaint_job(job: ImageJob, script: OutpaintScript) -> ImageJob:
    """The init image padded, and its new area as the mask to inpaint.

    A1111 uses the first init image; more than one is refused here rather than dropped.
    """
    if len(job.images) != 1:
        raise ApiError(422, f"init_images: poor man's outpainting takes one init image "
                            f"(got {len(job.images)})")
    params = job.params.model_copy(update={"mask_blur": script.mask_blur,
                                           "inpainting_fill": script.inpainting_fill})
    try:
        request, canvas, mask = prepare_outpainting(params, job.images[0], pixels=script.pixels,
                                                    sides=script.directions)
    except OutpaintError as exc:
        raise ApiError(422, f"script_args: {exc}") from exc
    return ImageJob(params=request, images=[canvas], mask=mask)


class OutpaintHandler(ScriptHandler):
    """Poor man's outpainting as an API script (img2img only)."""

    name = OUTPAINT_SCRIPT
    txt2img = False
    img2img = True

    def args_info(self) -> list[dict[str, Any]]:
        return [dict(arg) for arg in OUTPAINT_SCRIPT_ARGS]

    def parse(self, args: Sequence[Any], request: Txt2ImgRequest) -> OutpaintScript:
        return outpaint_script_args(args, request)

    def apply(self, job: ImageJob, parsed: Any) -> ImageJob:
        return outpaint_job(job, parsed)

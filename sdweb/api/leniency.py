"""A1111's leniency with request values: what it coerces, coerced the same way here, and said.

The rule of the ``/sdapi/v1`` API: it accepts what AUTOMATIC1111 v1.10 accepts and coerces as it
coerces; it refuses only what A1111 refuses or what would harm the server; whatever it changed is said
in the response (``info.warnings``) and the log. This module owns the value coercions; each function
appends one human sentence per change to the ``notes`` list it is given:

* integer fields take any finite number, truncated towards zero as A1111's pydantic v1 models do
  (``steps: 2.5`` -> 2, ``hr_second_pass_steps: 23.07`` -> 23): :func:`truncate_integers`, run on the
  raw body before the request model validates it;
* ``width`` and ``height`` are rounded down to a multiple of 8, A1111's latent size (500 -> 496):
  :func:`round_size`;
* seeds are reduced modulo 2**64 as torch's generators reduce them (negative ones included, -1 still
  means random): :func:`reduce_seed`;
* the largest image batch is a server setting (``api_max_megapixels``), not a fixed side:
  :func:`check_pixel_budget` answers a 422 naming the fields.
"""

from __future__ import annotations

import logging
import math
import types
import typing
from collections.abc import Mapping, MutableMapping
from functools import cache
from typing import Any

from pydantic import BaseModel

from sdweb.api.errors import ApiError
from sdweb.params import MAX_SEED_VALUE

logger = logging.getLogger(__name__)

#: The latent grid: A1111 makes ``width // 8 * 8`` pixels whatever it is asked.
SIZE_STEP = 8
#: The option that sets the pixel budget, and its default (megapixels; 0 = no limit).
PIXEL_BUDGET_OPTION = "api_max_megapixels"
DEFAULT_PIXEL_BUDGET = 16.0


@cache
def integer_fields(model: type[BaseModel]) -> frozenset[str]:
    """The fields of ``model`` whose type is ``int`` (or ``int | None``), bools excluded."""
    names = set()
    for name, info in model.model_fields.items():
        annotation = info.annotation
        options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) or (
            typing.get_origin(annotation) is typing.Union) else (annotation,)
        # ``Steps | None`` keeps its Annotated[int, ...] inside the union.
        bases = [typing.get_args(option)[0] if typing.get_origin(option) is typing.Annotated else option
                 for option in options]
        if int in bases:
            names.add(name)
    return frozenset(names)


def truncate_integers(model: type[BaseModel], data: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    """``data`` with fractional numbers in ``model``'s integer fields truncated (``2.9`` -> 2)."""
    changed = dict(data)
    for name in sorted(integer_fields(model)):
        value = data.get(name)
        if isinstance(value, float) and math.isfinite(value) and not value.is_integer():
            changed[name] = int(value)
            notes.append(f"{name}: {value!r} is not a whole number; used {int(value)} (truncated, as A1111)")
    return changed


def round_size(values: MutableMapping[str, Any], notes: list[str],
               fields: tuple[str, ...] = ("width", "height")) -> None:
    """Round ``width``/``height`` in ``values`` down to a multiple of 8, saying so when one changes."""
    for name in fields:
        value = values.get(name)
        if isinstance(value, int) and value >= SIZE_STEP and value % SIZE_STEP:
            values[name] = value - value % SIZE_STEP
            notes.append(f"{name}: {value} is not a multiple of {SIZE_STEP}; the image is {values[name]} "
                         "(rounded down, as A1111)")


def reduce_seed(values: MutableMapping[str, Any], name: str, notes: list[str]) -> None:
    """A seed outside ``-1..2**64-1`` reduced modulo 2**64, as torch's ``manual_seed`` takes it."""
    value = values.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or -1 <= value <= MAX_SEED_VALUE:
        return
    reduced = value % (MAX_SEED_VALUE + 1)
    values[name] = reduced
    notes.append(f"{name}: {value} is outside 0..2**64-1; used {reduced} (reduced modulo 2**64, as torch "
                 "reduces seeds)")


def pixel_budget(options: Any) -> float:
    """The budget in megapixels from the settings (0 or less: no limit)."""
    try:
        value = options.as_dict().get(PIXEL_BUDGET_OPTION, DEFAULT_PIXEL_BUDGET)
        return float(value)
    except (TypeError, ValueError):
        return DEFAULT_PIXEL_BUDGET


def hires_target(values: Mapping[str, Any]) -> tuple[int, int] | None:
    """Hires fix's final size (A1111's rules: both resize sides, one side with the aspect, else the
    scale); None without hires fix.
    """
    if not values.get("enable_hr"):
        return None
    width, height = int(values.get("width", 512)), int(values.get("height", 512))
    resize_x, resize_y = int(values.get("hr_resize_x") or 0), int(values.get("hr_resize_y") or 0)
    if resize_x and resize_y:
        return resize_x, resize_y
    if resize_x:
        return resize_x, round(resize_x * height / width)
    if resize_y:
        return round(resize_y * width / height), resize_y
    scale = float(values.get("hr_scale") or 2.0)
    return int(width * scale), int(height * scale)


def check_pixel_budget(values: Mapping[str, Any], budget_megapixels: float) -> None:
    """422 when ``width x height x batch_size`` (or hires fix's final size) is over the budget."""
    if budget_megapixels <= 0:
        return
    limit = budget_megapixels * 1024 * 1024
    batch = int(values.get("batch_size") or 1)
    sizes = [("width x height", int(values.get("width", 512)), int(values.get("height", 512)))]
    target = hires_target(values)
    if target is not None:
        sizes.append(("hires fix's size (hr_scale / hr_resize_x / hr_resize_y)", *target))
    for what, width, height in sizes:
        pixels = width * height * batch
        if pixels > limit:
            raise ApiError(422, f"{what} x batch_size: {width}x{height} x {batch} is "
                                f"{pixels / 1024 / 1024:.1f} megapixels, over this server's budget of "
                                f"{budget_megapixels:g} (the setting {PIXEL_BUDGET_OPTION}); make the image "
                                "or the batch smaller, or raise the setting if the GPU has the memory")

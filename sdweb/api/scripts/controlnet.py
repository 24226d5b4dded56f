"""The sd-webui-controlnet extension's way in: ``alwayson_scripts: {"controlnet": {"args": [unit, ...]}}``.

Each unit is a JSON object with the extension's field names and defaults (``enabled`` false when left
out, as the extension's API v3). Accepted spellings, as the extension accepts them:

* ``image`` or ``input_image``: base64 (a ``data:`` URL prefix is fine), or ``{"image": ..., "mask": ...}``;
  ``mask`` or ``mask_image``; no image on img2img means the init image;
* ``lowvram`` for ``low_vram``, ``guidance`` for ``guidance_end``;
* ``control_mode``, ``resize_mode``, ``hr_option``: the names ("Balanced", "Crop and Resize", "Both") or
  their indices (0, 1, 2); ``resize_mode`` also the old names ("Inner Fit (Scale to Fit)" ...).

Fields the extension has and sdweb does not use (``save_detected_map``, ``inpaint_crop_input_image``,
batch fields...) are accepted and ignored; an unknown field, a value out of range or an image that
does not decode is a 422 naming the unit and the field. Whether the model exists and fits the
checkpoint is checked when the request is queued (:meth:`sdweb.services.controlnet.ControlNetService.check`).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from sdweb.api.errors import ApiError
from sdweb.api.models import Txt2ImgRequest
from sdweb.api.scripts.base import ImageJob, ScriptHandler
from sdweb.images.metadata import ImageDecodeError, decode_image_bytes
from sdweb.params import CONTROL_HR_OPTIONS, CONTROL_MODES, CONTROL_RESIZE_MODES, ControlNetUnit

logger = logging.getLogger(__name__)

#: The extension's fields sdweb accepts and does not use.
IGNORED_FIELDS = frozenset({
    "is_ui", "input_mode", "batch_images", "output_dir", "loopback", "save_detected_map",
    "inpaint_crop_input_image", "advanced_weighting", "effective_region_mask", "pulid_mode",
    "union_control_type", "ipadapter_input", "batch_mask_dir", "animatediff_batch", "batch_modifiers",
    "batch_image_files", "batch_keyframe_idx", "is_img2img",
})
ALIASES = {"lowvram": "low_vram", "input_image": "image", "guidance": "guidance_end", "mask_image": "mask"}
RESIZE_ALIASES = {
    "Inner Fit (Scale to Fit)": "Crop and Resize",
    "Outer Fit (Shrink to Fit)": "Resize and Fill",
    "Scale to Fit (Inner Fit)": "Crop and Resize",
    "Envelope (Outer Fit)": "Resize and Fill",
}
_CHOICES = {"control_mode": CONTROL_MODES, "resize_mode": CONTROL_RESIZE_MODES,
            "hr_option": CONTROL_HR_OPTIONS}


def _image_bytes(value: Any, where: str) -> bytes | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(422, f"{where}: a base64-encoded image (got {type(value).__name__})")
    text = value.strip()
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        data = base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(422, f"{where}: not base64 ({exc})") from exc
    try:
        decode_image_bytes(data)
    except ImageDecodeError as exc:
        raise ApiError(422, f"{where}: {exc}") from exc
    return data


def _choice(field: str, value: Any, where: str) -> str:
    choices = _CHOICES[field]
    wanted = f"one of {', '.join(choices)} or 0-{len(choices) - 1} (got {value!r})"
    if isinstance(value, bool):
        raise ApiError(422, f"{where}.{field}: {wanted}")
    if isinstance(value, int | float) and float(value).is_integer() and 0 <= int(value) < len(choices):
        return choices[int(value)]
    if isinstance(value, str):
        text = RESIZE_ALIASES.get(value, value) if field == "resize_mode" else value
        for choice in choices:
            if choice.lower() == text.strip().lower():
                return choice
        if text.strip().isdigit() and int(text) < len(choices):
            return choices[int(text)]
    raise ApiError(422, f"{where}.{field}: {wanted}")


def parse_unit(value: Any, index: int) -> ControlNetUnit:
    """One unit of ``alwayson_scripts.controlnet.args``; ApiError 422 naming the unit and field."""
    where = f"alwayson_scripts.controlnet.args[{index}]"
    if not isinstance(value, dict):
        raise ApiError(422, f"{where}: a ControlNet unit is a JSON object (got {type(value).__name__})")
    fields: dict[str, Any] = {}
    for key, item in value.items():
        name = ALIASES.get(key, key)
        if name in fields and key != name:
            raise ApiError(422, f"{where}: both {key!r} and {name!r} given")
        fields[name] = item
    for name in IGNORED_FIELDS:
        fields.pop(name, None)
    fields.setdefault("enabled", False)  # the extension's default
    image = fields.pop("image", None)
    mask = fields.pop("mask", None)
    if isinstance(image, dict):  # the extension's older {"image": ..., "mask": ...} form
        mask = image.get("mask", mask)
        image = image.get("image")
    fields["image"] = _image_bytes(image, f"{where}.image")
    fields["mask"] = _image_bytes(mask, f"{where}.mask")
    for field in _CHOICES:
        if field in fields:
            fields[field] = _choice(field, fields[field], where)
    if fields.get("model") is None:
        fields["model"] = "None"
    if fields.get("module") is None:
        fields["module"] = "none"
    try:
        return ControlNetUnit(**fields)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = ".".join(str(part) for part in error.get("loc", ())) or "unit"
            message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
            if error.get("type") == "extra_forbidden":
                message = "not a ControlNet unit field"
            problems.append(f"{where}.{loc}: {message}")
        raise ApiError(422, "; ".join(problems)) from exc


class ControlNetHandler(ScriptHandler):
    """``alwayson_scripts.controlnet``: puts the units into the request's ``controlnet_units``."""

    name = "controlnet"
    alwayson = True

    def args_info(self) -> list[dict[str, Any]]:
        return [{"label": f"ControlNet Unit {index}", "value": None} for index in range(3)]

    def parse(self, args: Sequence[Any], request: Txt2ImgRequest) -> tuple[ControlNetUnit, ...]:
        if len(args) > 16:
            raise ApiError(422, f"alwayson_scripts.controlnet.args: at most 16 units (got {len(args)})")
        return tuple(parse_unit(value, index) for index, value in enumerate(args))

    def apply(self, job: ImageJob, parsed: Any) -> ImageJob:
        units = tuple(parsed or ())
        if not any(unit.enabled for unit in units):
            return job
        params = job.params.model_copy(update={"controlnet_units": units})
        return ImageJob(params=params, images=job.images, mask=job.mask)

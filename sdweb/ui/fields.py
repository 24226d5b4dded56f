"""The txt2img form as data: which GenerationParams field each txt2img component edits.

One place for both directions, so every "send to txt2img" path (gallery, history, PNG Info) fills the
same fields the same way:

* :func:`params_from_form` turns the form's values (``{field name: value}``) into a validated
  :class:`GenerationParams` (pydantic's ValidationError on bad input; the caller shows it).
* :func:`form_from_params` and :func:`form_from_infotext` turn a request or a pasted infotext back into
  form values, ready for :meth:`Txt2ImgForm.updates`.

Pure Python (no gradio import) so the mapping is unit-tested without a browser.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sdweb.params import (
    A1111_COMPAT_INFOTEXT,
    CFG_SKIP_NUMBERS,
    SCHEDULE_SETTINGS,
    SIGMA_DEFAULTS,
    GenerationParams,
    Img2ImgParams,
)

logger = logging.getLogger(__name__)

#: The GenerationParams fields the txt2img tab has a component for, in form order.
FORM_FIELDS: tuple[str, ...] = (
    "prompt",
    "negative_prompt",
    "styles",
    "checkpoint",
    "sampler_name",
    "scheduler",
    "steps",
    "cfg_scale",
    "distilled_cfg_scale",  # the model-family section (Flux dev)
    "width",
    "height",
    "n_iter",
    "batch_size",
    "seed",
    "subseed",
    "subseed_strength",
    "seed_resize_from_w",
    "seed_resize_from_h",
    "clip_skip",
    # The rest of "Override settings": A1111's noise settings an infotext carries ("" / empty = the setting).
    "rng",
    "eta_noise_seed_delta",
    "eta",
    "sampler_path",
    # A1111's compatibility settings (use_old_scheduling ...): "" the setting, "on", "off".
    *A1111_COMPAT_INFOTEXT,
    # A1111's schedule settings (rho, sigma range, Beta's shape): empty = the setting.
    *SCHEDULE_SETTINGS,
    # A1111's sampler parameters and CFG skipping (s_churn ..., s_min_uncond, skip_early_cond): empty = the
    # setting; "NGMS all steps" (s_min_uncond_all) a switch.
    *SIGMA_DEFAULTS,
    *CFG_SKIP_NUMBERS,
    "s_min_uncond_all",
    # A1111's "Emphasis mode" and "Noise schedule for sampling" ("" the setting).
    "emphasis",
    "sd_noise_schedule",
    # Hires fix (the "Hires. fix" accordion).
    "enable_hr",
    "hr_upscaler",
    "hr_second_pass_steps",
    "denoising_strength",
    "hr_scale",
    "hr_resize_x",
    "hr_resize_y",
    "hr_sampler_name",
    "hr_scheduler",
    "hr_prompt",
    "hr_negative_prompt",
)

#: The img2img tab's fields beyond the txt2img ones it shares (Img2ImgParams' own), in form order.
IMG2IMG_FIELDS: tuple[str, ...] = (
    "resize_mode",
    "mask_blur",
    "inpainting_fill",
    "inpaint_full_res",
    "inpaint_full_res_padding",
    "inpainting_mask_invert",
)

#: Form fields holding whole numbers (gradio Number/Slider hand floats back).
_INT_FIELDS = frozenset(
    {
        "steps",
        "width",
        "height",
        "n_iter",
        "batch_size",
        "seed",
        "subseed",
        "seed_resize_from_w",
        "seed_resize_from_h",
        "clip_skip",
        "eta_noise_seed_delta",
        "hr_second_pass_steps",
        "hr_resize_x",
        "hr_resize_y",
        "resize_mode",
        "mask_blur",
        "inpainting_fill",
        "inpaint_full_res_padding",
    }
)

#: Sent values' key for the pasted ControlNet units (a list of
#: :class:`~sdweb.images.controlnet_infotext.PastedUnit`; the ControlNet section fills its unit tabs from
#: it). Absent: the units are left as they are (a picture sent to img2img without parameters).
CONTROLNET_UNITS = "controlnet_units"

#: The clip-skip slider's value meaning "use the Clip skip setting" (GenerationParams.clip_skip=None).
CLIP_SKIP_FROM_SETTING = 0
#: Form fields whose empty value ("" in a dropdown, an emptied number box) means "the setting" (None).
FROM_SETTING_FIELDS = ("rng", "eta_noise_seed_delta", "eta", "sampler_path", "emphasis", "sd_noise_schedule")
#: Dropdown fields among them: None is shown as "" (the "Setting" choice).
_SETTING_CHOICE_FIELDS = ("rng", "sampler_path", "emphasis", "sd_noise_schedule")
#: Dropdown fields for A1111's compatibility settings: "" the setting (None), "on" True, "off" False.
SWITCH_FIELDS: tuple[str, ...] = (*A1111_COMPAT_INFOTEXT, "s_min_uncond_all")
SWITCH_CHOICES: tuple[tuple[str, str], ...] = (("Setting", ""), ("On", "on"), ("Off", "off"))


def _defaults() -> dict[str, Any]:
    params = GenerationParams()
    values = {name: getattr(params, name) for name in FORM_FIELDS}
    values["styles"] = []
    values["clip_skip"] = CLIP_SKIP_FROM_SETTING
    for name in (*_SETTING_CHOICE_FIELDS, *SWITCH_FIELDS):
        values[name] = ""
    return values


#: What a fresh txt2img form shows (GenerationParams' own defaults).
FORM_DEFAULTS: Mapping[str, Any] = _defaults()


def _as_int(value: Any) -> Any:
    """Whole floats become ints; anything else is left for pydantic to refuse with its message."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                return value
            return int(number) if number.is_integer() else number
    return value


def params_from_form(
    values: Mapping[str, Any], section_values: Mapping[str, Any] | None = None
) -> GenerationParams:
    """Build the request from the form's values. Missing or empty values take the defaults.

    ``section_values``: request fields the form's sections add (:mod:`sdweb.ui.sections`), as they are.

    Raises:
        pydantic.ValidationError: a value is out of range (the message names the field).
    """
    return GenerationParams(**{**_request_data(values, FORM_FIELDS), **(section_values or {})})


def img2img_params_from_form(
    values: Mapping[str, Any], section_values: Mapping[str, Any] | None = None
) -> Img2ImgParams:
    """The img2img request from the img2img form's values (txt2img's fields plus IMG2IMG_FIELDS).

    ``section_values``: request fields the form's sections add (:mod:`sdweb.ui.sections`), as they are.

    Raises:
        pydantic.ValidationError: a value is out of range (the message names the field).
    """
    data = _request_data(values, (*FORM_FIELDS, *IMG2IMG_FIELDS))
    return Img2ImgParams(**{**data, **(section_values or {})})


def _request_data(values: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name in names:
        if name not in values:
            continue
        value = values[name]
        if name in _INT_FIELDS:
            value = _as_int(value)
        if name == "styles":
            value = tuple(value or ())
        elif name == "checkpoint":
            value = value or None
        elif name == "clip_skip":
            value = None if value in (None, CLIP_SKIP_FROM_SETTING, "") else value
        elif name in SWITCH_FIELDS:
            if value is None or value == "":
                continue  # "Setting": the option decides
            value = {"on": True, "off": False}.get(str(value).strip().lower(), value)
        elif value is None or (value == "" and name not in ("prompt", "negative_prompt")):
            continue  # an emptied number box means "the default", as in A1111
        data[name] = value
    return data


def form_from_params(params: GenerationParams, *, checkpoint_title: str | None = None) -> dict[str, Any]:
    """The form values that reproduce ``params`` (``checkpoint_title``: the dropdown's title for it)."""
    values: dict[str, Any] = {name: getattr(params, name) for name in FORM_FIELDS}
    values["styles"] = list(params.styles)
    values["clip_skip"] = params.clip_skip if params.clip_skip is not None else CLIP_SKIP_FROM_SETTING
    for name in _SETTING_CHOICE_FIELDS:
        values[name] = values[name] if values[name] is not None else ""
    for name in SWITCH_FIELDS:
        values[name] = "" if values[name] is None else ("on" if values[name] else "off")
    values["checkpoint"] = checkpoint_title or params.checkpoint
    if values["checkpoint"] is None:
        del values["checkpoint"]  # keep whatever the dropdown shows
    return values


def pasted_gpu_rng(services: Any) -> str:
    """What reproduces A1111's default GPU noise here (``AppServices.pasted_gpu_rng``), for a pasted
    infotext without an ``RNG`` key: "GPU" where CUDA runs the models, "NV" elsewhere.
    """
    probe = getattr(services, "pasted_gpu_rng", None)
    return str(probe()) if callable(probe) else "GPU"


@dataclass
class PastedValues:
    """Form values recovered from an infotext, and what could not be carried over (for the user)."""

    values: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def pasted_backcompat(services: Any) -> bool:
    """A1111's "Automatic backward compatibility" setting (``auto_backcompat``) for a paste: on unless
    the settings say otherwise.
    """
    options = getattr(services, "options", None)
    try:
        return options is None or options.get("auto_backcompat") is not False
    except KeyError:
        return True


def form_from_infotext(text: str, models: Any | None = None, *, gpu_rng: str = "GPU",
                       backcompat: bool = True) -> PastedValues:
    """Parse an A1111 infotext into form values; pick the checkpoint whose hash matches one on disk.

    ``models`` is the :class:`~sdweb.services.models.ModelService` (``find(query)`` raising
    LookupError). A hash (or name) that matches no checkpoint leaves the dropdown as it is, with a note.
    ``gpu_rng``: what reproduces A1111's default GPU noise here (``AppServices.pasted_gpu_rng()``).
    Keys that change the picture but have no field here (``Discard penultimate sigma``...) are named in
    the notes. ``backcompat``: A1111's "Automatic backward compatibility" (:func:`pasted_backcompat`): an
    infotext from an old A1111 (its ``Version``) turns on the compatibility settings that version had
    (:func:`sdweb.images.infotext_versions.version_backcompat`).
    """
    from sdweb.images.controlnet_infotext import controlnet_units_from_infotext
    from sdweb.images.infotext import (
        INFOTEXT_NOT_HONOURED,
        INFOTEXT_UNIPC,
        infotext_to_params,
        parse_infotext,
    )
    from sdweb.images.infotext_versions import version_backcompat
    from sdweb.params import UNIPC_DEFAULTS

    parsed = parse_infotext(text)
    pasted = PastedValues()
    if backcompat:
        written = parsed
        parsed = version_backcompat(parsed)
        implied = [key for key, value in parsed.items() if written.get(key) != value]
        if implied:
            pasted.notes.append(f"Version {parsed.get('Version')}: {', '.join(implied)} turned on, as that "
                                "A1111 version did (Settings > Compatibility > Automatic backward "
                                "compatibility)")
    # A value that does not fit is left at its default with a note: a paste should not be all-or-nothing.
    params, extras = infotext_to_params(parsed, problems=pasted.notes, gpu_rng=gpu_rng)
    pasted.notes.extend(f"{key} {extras[key]!r} is not supported yet; the image will differ"
                        for key in INFOTEXT_NOT_HONOURED if key in extras)
    # A1111's UniPC settings are settings here too (Settings > Sampler parameters), not form fields.
    pasted.notes.extend(f"{key} {parsed[key]!r}: set it in Settings > Sampler parameters ({name}) to make "
                        "the same image" for key, name in INFOTEXT_UNIPC.items()
                        if key in parsed and getattr(params, name) != UNIPC_DEFAULTS[name])
    # Hires keys left over are second-pass settings this program does not have (checkpoint, CFG scale).
    pasted.notes.extend(f"{key} {value!r} is not supported yet; the second pass uses the first pass's"
                        for key, value in extras.items() if str(key).startswith("Hires "))
    pasted.values = form_from_params(params.model_copy(update={"checkpoint": None}))
    # ControlNet units (the extension's "ControlNet N" lines), for the ControlNet section's fill: the
    # units named are restored, the others turned off (an infotext without lines: none was used).
    units = controlnet_units_from_infotext(parsed)
    pasted.values[CONTROLNET_UNITS] = units
    pasted.notes.extend(note for unit in units for note in unit.notes)
    title = _checkpoint_title(parsed, models, pasted.notes)
    if title is not None:
        pasted.values["checkpoint"] = title
    if params.additional_modules:
        names = _module_files(params.additional_modules, models, pasted.notes)
        if names is not None:
            pasted.values["additional_modules"] = names  # the "VAE / Text Encoder" selector (Txt2ImgTab.fill)
    return pasted


def _module_files(stems: Any, models: Any | None, notes: list[str]) -> list[str] | None:
    """Forge's "Module N" stems as the file names the "VAE / Text Encoder" selector lists (None: keep it)."""
    names: list[str] = []
    for stem in stems:
        try:
            names.append(str(models.find_module(stem).name))
        except (LookupError, AttributeError):
            notes.append(f"VAE / Text Encoder {stem!r} is not in models/text_encoder or models/VAE; "
                         "the VAE / Text Encoder choice was left unchanged")
            return None
    return names


def _checkpoint_title(parsed: Mapping[str, Any], models: Any | None, notes: list[str]) -> str | None:
    model_hash = str(parsed.get("Model hash") or "").strip()
    model_name = str(parsed.get("Model") or "").strip()
    if models is None or not (model_hash or model_name):
        return None
    for query in (model_hash, model_name):
        if not query:
            continue
        try:
            return str(models.find(query).title)
        except LookupError:
            continue
    wanted = f"{model_name} [{model_hash}]" if model_hash and model_name else model_hash or model_name
    notes.append(f"checkpoint {wanted} is not on disk; the checkpoint was left unchanged")
    return None


def sent_values(values: Mapping[str, Any], options: Any) -> dict[str, Any]:
    """The values a "Send to" / "Restore parameters" puts into a form: A1111's ``send_seed`` off leaves
    the form's seed as it was, ``send_size`` off its width and height.
    """
    dropped: set[str] = set()
    if options is not None:
        settings = options.as_dict()
        if settings.get("send_seed", True) is False:
            dropped |= {"seed", "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h"}
        if settings.get("send_size", True) is False:
            dropped |= {"width", "height"}
    return {name: value for name, value in values.items() if name not in dropped}

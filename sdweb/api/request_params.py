"""A txt2img (or img2img) API request -> the typed :class:`~sdweb.params.GenerationParams` we queue.

:func:`build_params` is the one entry; each step is a small function here (override_settings and
infotext values are :mod:`sdweb.api.request_overrides`'). How request fields we cannot honour yet are
treated:

* ones that would change the image (scripts no handler runs (:mod:`sdweb.api.scripts`),
  ``refiner_checkpoint``, non-neutral ``s_*`` values, hires fix with its own checkpoint) are refused
  with 422 and a message saying so: never a silently different image;
* ones that do not (``do_not_save_*``, ``hr_*`` while ``enable_hr`` is false, ``comments``...) are
  ignored and listed in one warning log line per request, as are fields no A1111 version knows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from sdweb.api.errors import ApiError, describe_validation_errors
from sdweb.api.models import Img2ImgRequest, Txt2ImgRequest
from sdweb.api.request_overrides import infotext_values, kept_overrides, override_location, override_values
from sdweb.api.scripts import ScriptRegistry
from sdweb.params import GenerationParams

logger = logging.getLogger(__name__)

#: Request fields copied as they are into GenerationParams (same name, same meaning).
DIRECT_FIELDS: tuple[str, ...] = (
    "prompt", "negative_prompt", "seed", "subseed", "subseed_strength", "seed_resize_from_w",
    "seed_resize_from_h", "batch_size", "n_iter", "steps", "cfg_scale", "width", "height", "eta",
    "tiling", "distilled_cfg_scale",
)
#: The API's defaults where they differ from GenerationParams' (A1111: steps 50, "Euler").
API_DEFAULTS: Mapping[str, Any] = {"steps": 50, "sampler_name": "Euler", "scheduler": "Automatic"}

#: Fields accepted and ignored because they do not change the image (logged when set to non-defaults).
IGNORED_FIELDS: tuple[str, ...] = (
    "do_not_save_samples", "do_not_save_grid", "denoising_strength", "firstphase_width",
    "firstphase_height", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y",
    "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt",
    "comments", "disable_extra_networks", "refiner_switch_at", "firstpass_image", "script_args",
)
#: Hires fix fields that become GenerationParams fields when ``enable_hr`` is true (same names).
HIRES_FIELDS: tuple[str, ...] = ("hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x",
                                 "hr_resize_y", "denoising_strength", "hr_prompt", "hr_negative_prompt")
#: Second-pass sampler fields, and the values meaning "the same as the first pass" (A1111's UI labels).
HIRES_SAMPLER_SAME: Mapping[str, tuple[str, ...]] = {
    "hr_sampler_name": ("", "Use same sampler"), "hr_scheduler": ("", "Use same scheduler"),
}
#: Hires fix fields that would give the second pass settings we cannot honour yet, and "the same".
HIRES_SAME: Mapping[str, tuple[str, ...]] = {"hr_checkpoint_name": ("", "Use same checkpoint")}
#: Sampler tuning values that leave the image as it is; anything else would change it.
NEUTRAL_SAMPLER_VALUES: Mapping[str, tuple[float, ...]] = {
    "s_churn": (0.0,), "s_tmin": (0.0,), "s_tmax": (0.0, math.inf), "s_noise": (1.0,), "s_min_uncond": (0.0,),
}


def build_params(request: Txt2ImgRequest, services: Any,
                 scripts: ScriptRegistry) -> tuple[GenerationParams, dict[str, Any]]:
    """The request as GenerationParams, plus what to do after the job (``keep_settings``).

    ``scripts``: the registry that says which ``script_name`` / ``alwayson_scripts`` can run.
    """
    given = request.given()
    # 1. Refuse what would silently make another image than the one asked for.
    refuse_unsupported(request, given, scripts)
    log_ignored(request, given)

    # 2. Defaults, then the infotext's values, then the fields the client sent.
    values = request_values(request, given, services)

    # 3. Settings overridden for this request (and kept afterwards when the client asks).
    overrides = dict(request.override_settings or {})
    values.update(override_values(overrides, services))
    keep = kept_overrides(overrides, request.override_settings_restore_afterwards)
    after: dict[str, Any] = {"keep_settings": keep} if keep else {}

    # 4. Fields the client left out take the defaults of the checkpoint's family (Flux: CFG 1,
    # Distilled CFG Scale 3.5, schnell 4 steps; SD 3.5: its steps and CFG), as the UI switches them.
    values.update(family_values(values, given, request, services))

    # 5. Sampler and schedule type by their canonical names ("k_euler_a" -> "Euler a"); same for
    # the hires upscaler ("latent" -> "Latent").
    values.update(canonical_names(values, services))

    # 6. The typed request; bounds are checked here too (infotext and override values).
    return typed_params(values), after


def refuse_unsupported(request: Txt2ImgRequest, given: set[str], scripts: ScriptRegistry) -> None:
    """422 listing every field that would make another image than asked for (we cannot honour it yet)."""
    problems: list[str] = []
    if request.enable_hr and isinstance(request, Img2ImgRequest):
        problems.append("enable_hr: hires fix is a txt2img feature; send enable_hr false to img2img")
    elif request.enable_hr:
        for name, same in HIRES_SAME.items():
            value = getattr(request, name)
            if value not in (None, *same):
                problems.append(f"{name}: a second-pass setting of its own is not supported yet "
                                f"(got {value!r}; send {same[-1]!r})")
    problems.extend(scripts.problems(request))
    if request.refiner_checkpoint and request.refiner_checkpoint != "None":
        problems.append("refiner_checkpoint: the refiner is not supported yet")
    for name, neutral in NEUTRAL_SAMPLER_VALUES.items():
        value = getattr(request, name)
        if name in given and value not in neutral:
            problems.append(f"{name}: only {' or '.join(str(v) for v in neutral)} is supported yet "
                            f"(got {value})")
    if problems:
        raise ApiError(422, "; ".join(problems))


def log_ignored(request: Txt2ImgRequest, given: set[str]) -> None:
    """One warning line naming the fields sent that we accept and ignore (they do not change the image)."""
    defaults = Txt2ImgRequest()
    ignored = [name for name in IGNORED_FIELDS
               if name in given and getattr(request, name) != getattr(defaults, name)
               and not (name == "denoising_strength" and isinstance(request, Img2ImgRequest))
               and not (request.enable_hr and (name in HIRES_FIELDS or name in HIRES_SAMPLER_SAME))]
    if "sampler_index" in given and "sampler_name" in given:
        ignored.append("sampler_index")
    unknown = request.unknown_fields()
    if ignored:
        logger.warning("txt2img: ignoring A1111 fields not supported yet (they do not change the "
                       "image): %s", ", ".join(ignored))
    if unknown:
        logger.warning("txt2img: ignoring unknown fields: %s", ", ".join(unknown[:20]))


def request_values(request: Txt2ImgRequest, given: set[str], services: Any) -> dict[str, Any]:
    """GenerationParams values: the API's defaults, then the infotext's, then the fields sent."""
    values: dict[str, Any] = dict(API_DEFAULTS)
    if request.infotext:
        values.update(infotext_values(request.infotext, given, services))
    for name in DIRECT_FIELDS:
        if name in given:
            values[name] = getattr(request, name)
    if request.restore_faces:
        # Restored when a restorer can run; else the images come back with a warning in ``info``.
        values["restore_faces"] = True
    if request.enable_hr:
        values.update(hires_values(request, given))
    if "styles" in given:
        values["styles"] = tuple(request.styles or ())
    # sampler_name wins; sampler_index (A1111's older field, default "Euler") when it is absent.
    if "sampler_name" in given:
        values["sampler_name"] = request.sampler_name
    elif "sampler_index" in given:
        values["sampler_name"] = request.sampler_index
    if "scheduler" in given:
        values["scheduler"] = request.scheduler
    return values


#: Request fields a model family has its own default for (see ``sdweb.engine.families.defaults``).
FAMILY_FIELDS: tuple[str, ...] = ("steps", "cfg_scale", "distilled_cfg_scale", "sampler_name")


def family_values(values: Mapping[str, Any], given: set[str], request: Txt2ImgRequest,
                  services: Any) -> dict[str, Any]:
    """The family defaults of the request's checkpoint (else the selected one) for the fields not sent.

    Only SD 3.x / Flux checkpoints change anything: SD 1.x/XL keep A1111's API defaults.
    """
    models = getattr(services, "models", None)
    family_defaults = getattr(models, "family_defaults", None)
    if family_defaults is None:
        return {}
    from sdweb.engine.families.defaults import is_flow_family

    checkpoint = values.get("checkpoint")
    if not is_flow_family(models.family_of(checkpoint if isinstance(checkpoint, str) else None)):
        return {}
    defaults = family_defaults(checkpoint if isinstance(checkpoint, str) else None)
    sent = set(given)
    if "sampler_index" in given:
        sent.add("sampler_name")
    from_infotext = set(infotext_fields(request, services)) if request.infotext else set()
    changes: dict[str, Any] = {}
    for name in FAMILY_FIELDS:
        value = getattr(defaults, name)
        if name not in sent and name not in from_infotext and value is not None:
            changes[name] = value
    return changes


def infotext_fields(request: Txt2ImgRequest, services: Any) -> dict[str, Any]:
    return infotext_values(request.infotext or "", request.given(), services)


def hires_values(request: Txt2ImgRequest, given: set[str]) -> dict[str, Any]:
    """Hires fix's fields (``enable_hr`` is true); "Use same sampler" and the like become ``""``."""
    values: dict[str, Any] = {"enable_hr": True}
    values.update({name: getattr(request, name) for name in HIRES_FIELDS
                   if name in given and getattr(request, name) is not None})
    for name, same in HIRES_SAMPLER_SAME.items():
        if name in given:
            value = getattr(request, name)
            values[name] = "" if value in (None, *same) else value
    return values


def canonical_names(values: Mapping[str, Any], services: Any) -> dict[str, Any]:
    """The sampler, schedule type, hires sampler and hires upscaler by their canonical names.

    One that does not exist is a 400 naming it and the known ones.
    """
    names: dict[str, Any] = {}
    names["sampler_name"], names["scheduler"] = resolve_sampler(
        services, str(values["sampler_name"]), str(values.get("scheduler") or "Automatic"))
    if values.get("enable_hr") and (values.get("hr_sampler_name") or values.get("hr_scheduler")):
        names["hr_sampler_name"], names["hr_scheduler"] = resolve_second_pass_sampler(
            services, names["sampler_name"], str(values.get("hr_sampler_name") or ""),
            str(values.get("hr_scheduler") or ""))
    if values.get("enable_hr") and values.get("hr_upscaler"):
        names["hr_upscaler"] = resolve_hires_upscaler(services, str(values["hr_upscaler"]))
    return names


def resolve_sampler(services: Any, sampler: str, scheduler: str) -> tuple[str, str]:
    """Canonical sampler and schedule type names; old "DPM++ 2M Karras" names are split; 400 if unknown."""
    registry = services.samplers()
    try:
        spec = registry.get(sampler)
    except ValueError:
        # Before A1111 1.9 the schedule was part of the name ("DPM++ 2M Karras").
        from sdweb.images.infotext import split_sampler_name

        head, schedule = split_sampler_name(sampler, scheduler)
        try:
            spec = registry.get(head)
        except ValueError as exc:
            known = ", ".join(registry.names())
            raise ApiError(400, f"Sampler not found: {sampler!r}; known: {known}") from exc
        scheduler = schedule
    try:
        schedule_spec = registry.get_schedule(scheduler)
    except ValueError:
        try:
            schedule_spec = registry.get_schedule(scheduler.replace("_", " "))
        except ValueError as exc:
            known = ", ".join(registry.schedule_names())
            raise ApiError(400, f"Scheduler not found: {scheduler!r}; known: {known}") from exc
    return spec.name, schedule_spec.name


def resolve_second_pass_sampler(services: Any, first_sampler: str, sampler: str,
                                scheduler: str) -> tuple[str, str]:
    """Canonical names of hires fix's own sampler / schedule type; "" stays "the first pass's"."""
    try:
        name, schedule = resolve_sampler(services, sampler or first_sampler, scheduler or "Automatic")
    except ApiError as exc:
        raise ApiError(exc.status, f"hr_sampler_name/hr_scheduler: {exc.detail}") from exc
    # An old-style "DPM++ 2M Karras" brings its schedule type; "Automatic" from nothing stays "".
    keep_schedule = bool(scheduler) or schedule != "Automatic"
    return (name if sampler else ""), (schedule if keep_schedule else "")


def resolve_hires_upscaler(services: Any, name: str) -> str:
    """The hires upscaler's listed name (the models/ESRGAN ones too); 400 if there is none."""
    from sdweb.images.upscale import UnknownUpscalerError, find_hires_upscaler

    service = services.upscalers  # knows the models/ESRGAN names too
    find = service.find_hires if service is not None else find_hires_upscaler
    try:
        return find(name)
    except UnknownUpscalerError as exc:
        raise ApiError(400, str(exc)) from exc


def typed_params(values: Mapping[str, Any]) -> GenerationParams:
    """GenerationParams from the values; 422 naming the field when one is out of bounds.

    A value that came from ``override_settings`` is named by its key there.
    """
    try:
        return GenerationParams(**values)
    except ValidationError as exc:
        detail, errors = describe_validation_errors(
            [{**item, "loc": override_location(item.get("loc", ()))} for item in exc.errors()])
        raise ApiError(422, detail, errors=errors) from exc

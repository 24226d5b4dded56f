"""A txt2img (or img2img) API request -> the typed :class:`~sdweb.params.GenerationParams` we queue.

:func:`build_params` is the one entry; each step is a small function here (override_settings and
infotext values are :mod:`sdweb.api.request_overrides`'). How request fields we cannot honour yet are
treated:

* ones that would change the image (scripts no handler runs (:mod:`sdweb.api.scripts`),
  ``refiner_checkpoint``, hires fix with its own checkpoint) are refused
  with 422 and a message saying so: never a silently different image;
* ones that do not (``do_not_save_*``, ``hr_*`` while ``enable_hr`` is false, ``comments``...) are
  ignored and listed in one warning log line per request, as are fields no A1111 version knows.

Values A1111 is lenient with are taken as A1111 takes them, and each change is said in
``info.warnings`` and the log (the ``warnings`` of what :func:`build_params` returns): fractional
integers (:mod:`sdweb.api.leniency`), sizes not a multiple of 8, seeds beyond 64 bits, unknown sampler
and schedule names or ComfyUI spellings of them (:mod:`sdweb.api.sampler_names`), unknown styles,
``firstphase_width/height`` (the first pass's size), and txt2img-only fields sent to img2img.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from sdweb.api.errors import ApiError, describe_validation_errors
from sdweb.api.leniency import check_pixel_budget, pixel_budget, reduce_seed, round_size
from sdweb.api.models import Img2ImgRequest, Txt2ImgRequest
from sdweb.api.request_overrides import infotext_values, kept_overrides, override_location, override_values
from sdweb.api.sampler_names import resolve_sampler
from sdweb.api.scripts import ScriptRegistry
from sdweb.params import GenerationParams

logger = logging.getLogger(__name__)

#: Request fields copied as they are into GenerationParams (same name, same meaning).
DIRECT_FIELDS: tuple[str, ...] = (
    "prompt", "negative_prompt", "seed", "subseed", "subseed_strength", "seed_resize_from_w",
    "seed_resize_from_h", "batch_size", "n_iter", "steps", "cfg_scale", "width", "height", "eta",
    "tiling", "distilled_cfg_scale", "s_churn", "s_tmin", "s_tmax", "s_noise", "s_min_uncond",
)
#: The API's defaults where they differ from GenerationParams' (A1111: steps 50, "Euler").
API_DEFAULTS: Mapping[str, Any] = {"steps": 50, "sampler_name": "Euler", "scheduler": "Automatic"}

#: Fields accepted and ignored because they do not change the image (logged when set to non-defaults).
IGNORED_FIELDS: tuple[str, ...] = (
    "do_not_save_samples", "do_not_save_grid", "denoising_strength", "hr_scale", "hr_upscaler",
    "hr_second_pass_steps", "hr_resize_x", "hr_resize_y",
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
#: txt2img's own fields: A1111's img2img request has none of them, so img2img ignores them (and says so).
TXT2IMG_ONLY_FIELDS: tuple[str, ...] = (
    "enable_hr", "firstphase_width", "firstphase_height", "hr_scale", "hr_upscaler", "hr_second_pass_steps",
    "hr_resize_x", "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt",
    "hr_negative_prompt", "firstpass_image",
)


def build_params(request: Txt2ImgRequest, services: Any,
                 scripts: ScriptRegistry) -> tuple[GenerationParams, dict[str, Any]]:
    """The request as GenerationParams, plus what to do after the job: ``keep_settings``, and the
    ``warnings`` (what A1111's leniency changed or ignored, one sentence each; also logged).

    ``scripts``: the registry that says which ``script_name`` / ``alwayson_scripts`` can run.
    """
    notes = request.coercions()
    given = request.given()
    # 1. Refuse what would silently make another image than the one asked for.
    refuse_unsupported(request, given, scripts)
    log_ignored(request, given)
    if isinstance(request, Img2ImgRequest):
        notes.extend(txt2img_fields_ignored(request, given))

    # 2. Defaults, then the infotext's values, then the fields the client sent.
    values = request_values(request, given, services, notes)

    # 3. Settings overridden for this request (and kept afterwards when the client asks).
    overrides = dict(request.override_settings or {})
    values.update(override_values(overrides, services))
    keep = kept_overrides(overrides, request.override_settings_restore_afterwards)
    after: dict[str, Any] = {"keep_settings": keep} if keep else {}

    # 4. Fields the client left out take the defaults of the checkpoint's family (Flux: CFG 1,
    # Distilled CFG Scale 3.5, schnell 4 steps; SD 3.5: its steps and CFG), as the UI switches them.
    values.update(family_values(values, given, request, services))

    # 5. Sampler and schedule type by their canonical names ("k_euler_a" -> "Euler a", unknown ones
    # as A1111 falls back); same for the hires upscaler ("latent" -> "Latent"); styles we have.
    values.update(canonical_names(values, services, notes))
    values.update(known_styles(values, services, notes))

    # 6. A1111's coercions of sizes and seeds; the server's pixel budget.
    round_size(values, notes)
    for name in ("seed", "subseed"):
        reduce_seed(values, name, notes)
    check_pixel_budget(values, pixel_budget(services.options))

    # 7. The typed request; bounds are checked here too (infotext and override values).
    params = typed_params(values)
    if notes:
        logger.warning("%s: %s", "img2img" if isinstance(request, Img2ImgRequest) else "txt2img",
                       "; ".join(notes))
    after["warnings"] = notes
    return params, after


def refuse_unsupported(request: Txt2ImgRequest, given: set[str], scripts: ScriptRegistry) -> None:
    """422 listing every field that would make another image than asked for (we cannot honour it yet)."""
    problems: list[str] = []
    if request.enable_hr and not isinstance(request, Img2ImgRequest):
        for name, same in HIRES_SAME.items():
            value = getattr(request, name)
            if value not in (None, *same):
                problems.append(f"{name}: a second-pass setting of its own is not supported yet "
                                f"(got {value!r}; send {same[-1]!r})")
    problems.extend(scripts.problems(request))
    if request.refiner_checkpoint and request.refiner_checkpoint != "None":
        problems.append("refiner_checkpoint: the refiner is not supported yet")
    if problems:
        raise ApiError(422, "; ".join(problems))


def log_ignored(request: Txt2ImgRequest, given: set[str]) -> None:
    """One warning line naming the fields sent that we accept and ignore (they do not change the image)."""
    defaults = Txt2ImgRequest()
    img2img = isinstance(request, Img2ImgRequest)
    ignored = [name for name in IGNORED_FIELDS
               if name in given and getattr(request, name) != getattr(defaults, name)
               and not (name == "denoising_strength" and img2img)
               and not (img2img and name in TXT2IMG_ONLY_FIELDS)  # said in the response instead
               and not (request.enable_hr and (name in HIRES_FIELDS or name in HIRES_SAMPLER_SAME))]
    if "sampler_index" in given and "sampler_name" in given:
        ignored.append("sampler_index")
    unknown = request.unknown_fields()
    if ignored:
        logger.warning("txt2img: ignoring A1111 fields not supported yet (they do not change the "
                       "image): %s", ", ".join(ignored))
    if unknown:
        logger.warning("txt2img: ignoring unknown fields: %s", ", ".join(unknown[:20]))


def txt2img_fields_ignored(request: Img2ImgRequest, given: set[str]) -> list[str]:
    """The note for txt2img-only fields sent to img2img (A1111's img2img has none of them)."""
    defaults = Txt2ImgRequest()
    sent = [name for name in TXT2IMG_ONLY_FIELDS
            if name in given and getattr(request, name) != getattr(defaults, name)]
    if not sent:
        return []
    return [f"{', '.join(sent)}: txt2img fields, ignored by img2img (as A1111 does)"]


def request_values(request: Txt2ImgRequest, given: set[str], services: Any,
                   notes: list[str] | None = None) -> dict[str, Any]:
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
    img2img = isinstance(request, Img2ImgRequest)
    if not img2img:
        values.update(first_phase_size(request, values, notes if notes is not None else []))
    if request.enable_hr and not img2img:
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


def first_phase_size(request: Txt2ImgRequest, values: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """``firstphase_width/height`` (A1111's pre-1.0 hires fix fields): as A1111 1.10, when either is set
    they are the size of the (first pass) image, and hires fix scales from there; 0 keeps that side.
    """
    first_w, first_h = request.firstphase_width or 0, request.firstphase_height or 0
    if first_w <= 0 and first_h <= 0:
        return {}
    size = {"width": first_w or values.get("width", 512), "height": first_h or values.get("height", 512)}
    what = "the first pass" if request.enable_hr else "the image"
    notes.append(f"firstphase_width/firstphase_height: {what} is {size['width']}x{size['height']} "
                 "(they replace width/height, as in A1111 1.10)")
    return size


def known_styles(values: Mapping[str, Any], services: Any, notes: list[str]) -> dict[str, Any]:
    """The request's styles that exist; A1111 skips the others, and so do we (with a note)."""
    wanted = tuple(values.get("styles") or ())
    if not wanted or services.styles is None:
        return {}
    known = set(services.styles.names())
    missing = [name for name in wanted if name not in known]
    if missing:
        notes.append(f"styles: {', '.join(repr(name) for name in missing)} not found; ignored (as A1111 "
                     "does). Saved styles: GET /sdapi/v1/prompt-styles")
    return {"styles": tuple(name for name in wanted if name in known)}


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


def canonical_names(values: Mapping[str, Any], services: Any, notes: list[str]) -> dict[str, Any]:
    """The sampler, schedule type, hires sampler and hires upscaler by their canonical names.

    Unknown samplers and schedule types fall back as A1111's (:mod:`sdweb.api.sampler_names`); an
    unknown hires upscaler is a 400 naming it and the known ones (A1111 fails on it too).
    """
    registry = services.samplers()
    names: dict[str, Any] = {}
    names["sampler_name"], names["scheduler"] = resolve_sampler(
        registry, str(values["sampler_name"]), str(values.get("scheduler") or "Automatic"), notes)
    if (str(values["sampler_name"]).strip().lower() == "uni_pc_bh2" and names["sampler_name"] == "UniPC"
            and values.get("uni_pc_variant") is None):
        names["uni_pc_variant"] = "bh2"  # ComfyUI's name carries the variant (unless overridden)
    if values.get("enable_hr") and (values.get("hr_sampler_name") or values.get("hr_scheduler")):
        names["hr_sampler_name"], names["hr_scheduler"] = resolve_second_pass_sampler(
            registry, names["sampler_name"], str(values.get("hr_sampler_name") or ""),
            str(values.get("hr_scheduler") or ""), notes)
    if values.get("enable_hr") and values.get("hr_upscaler"):
        names["hr_upscaler"] = resolve_hires_upscaler(services, str(values["hr_upscaler"]), notes)
    return names


def resolve_second_pass_sampler(registry: Any, first_sampler: str, sampler: str, scheduler: str,
                                notes: list[str]) -> tuple[str, str]:
    """Canonical names of hires fix's own sampler / schedule type; "" stays "the first pass's"."""
    found: list[str] = []
    name, schedule = resolve_sampler(registry, sampler or first_sampler, scheduler or "Automatic", found,
                                     field="hr_sampler_name", schedule_field="hr_scheduler")
    if sampler and any(note.startswith("hr_sampler_name") for note in found):
        # An unknown second-pass sampler: the first pass's, rather than A1111's default sampler.
        found = [note.replace(f"used {name!r}", f"used the first pass's {first_sampler!r}")
                 for note in found]
        name, sampler = first_sampler, ""
    notes.extend(found)
    # An old-style "DPM++ 2M Karras" brings its schedule type; "Automatic" from nothing stays "".
    keep_schedule = bool(scheduler) or schedule != "Automatic"
    return (name if sampler else ""), (schedule if keep_schedule else "")


def resolve_hires_upscaler(services: Any, name: str, notes: list[str]) -> str:
    """The hires upscaler's listed name (the models/ESRGAN ones too); an A1111 name whose model file
    is missing is Lanczos with a note (:mod:`sdweb.api.upscaler_names`); 400 for other unknown names.
    """
    from sdweb.api.upscaler_names import resolve_upscaler
    from sdweb.images.upscale import UnknownUpscalerError, find_hires_upscaler

    service = services.upscalers  # knows the models/ESRGAN names too
    find = service.find_hires if service is not None else find_hires_upscaler
    try:
        return resolve_upscaler(name, find, service.model_names if service is not None else tuple, notes,
                                field="hr_upscaler")
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

"""The A1111-compatible REST API: ``make_router(services)`` returns the ``/sdapi/v1`` routes.

The router has no prefix of its own: the app includes it with ``prefix="/sdapi/v1"``. Every route is
typed with the models of :mod:`sdweb.api.models` (so ``/docs`` and ``/openapi.json`` describe them),
guarded by HTTP Basic auth when credentials are configured (:mod:`sdweb.api.security`), and answers
errors in A1111's shape through :mod:`sdweb.api.errors`.

txt2img and img2img requests go through the one GPU queue the UI uses (``services.generation.submit``,
``submit_img2img``), in arrival order; waiting for a job happens in a worker thread so the event loop
keeps serving ``/progress`` and ``/interrupt`` meanwhile. The Extras run in the request's thread
(:mod:`sdweb.api.image_requests`): Pillow upscalers right there, model upscalers via the GPU queue.

How request fields we cannot honour yet are treated (see also :mod:`sdweb.api.models`):

* ones that would change the image (``restore_faces``, ``script_name``, ``alwayson_scripts``,
  ``refiner_checkpoint``, non-neutral ``s_*`` values, hires fix with its own checkpoint) are refused
  with 422 and a message saying so: never a silently different image;
* ones that do not (``do_not_save_*``, ``hr_*`` while ``enable_hr`` is false, ``comments``...) are
  ignored and listed in one warning log line per request, as are fields no A1111 version knows.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Depends, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from sdweb.api.errors import ApiError, describe_validation_errors, reject_unpaired_surrogates
from sdweb.api.image_requests import (
    MAX_EXTRAS_BATCH,
    OUTPAINT_SCRIPT,
    OUTPAINT_SCRIPT_ARGS,
    decode_images,
    img2img_echo,
    img2img_params,
    init_images_of,
    is_img2img_script,
    mask_of,
    outpaint_request,
    outpaint_script_of,
    refuse_unsupported_extras,
    refuse_unsupported_img2img,
    source_infotext,
    upscale_for_extras,
)
from sdweb.api.models import (
    ERROR_RESPONSES,
    EmbeddingsResponse,
    ErrorResponse,
    ExtensionItem,
    ExtrasBatchImagesRequest,
    ExtrasBatchImagesResponse,
    ExtrasSingleImageRequest,
    ExtrasSingleImageResponse,
    FaceRestorerItem,
    ImageToImageResponse,
    Img2ImgRequest,
    InterrogateRequest,
    InterrogateResponse,
    LatentUpscalerModeItem,
    LoraItem,
    MemoryResponse,
    NamedPathItem,
    PNGInfoRequest,
    PNGInfoResponse,
    ProgressResponse,
    ProgressState,
    PromptStyleItem,
    SamplerItem,
    SchedulerItem,
    ScriptInfo,
    ScriptsList,
    SDModelItem,
    SDVaeItem,
    TextToImageResponse,
    Txt2ImgRequest,
    UpscalerItem,
    options_model,
)
from sdweb.api.security import api_dependencies
from sdweb.params import GenerationParams, GenerationResult
from sdweb.services.container import AppServices
from sdweb.services.generation import GenerationError, Job

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# What we do with each A1111 field and setting
# ---------------------------------------------------------------------------------------------

#: Request fields copied as they are into GenerationParams (same name, same meaning).
DIRECT_FIELDS: tuple[str, ...] = (
    "prompt", "negative_prompt", "seed", "subseed", "subseed_strength", "seed_resize_from_w",
    "seed_resize_from_h", "batch_size", "n_iter", "steps", "cfg_scale", "width", "height", "eta",
    "tiling",
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

#: override_settings keys that are request fields here.
OVERRIDE_TO_FIELD: Mapping[str, str] = {
    "sd_model_checkpoint": "checkpoint",
    "CLIP_stop_at_last_layers": "clip_skip",
    "randn_source": "rng",
    "sd_vae": "vae",
}
#: Our settings that do not change the image: overriding them per request is ignored (logged).
NON_IMAGE_OPTIONS = frozenset({
    "samples_format", "samples_save", "grid_save", "jpeg_quality", "outdir_txt2img_samples",
    "outdir_txt2img_grids", "live_previews_enable", "show_progress_every_n_steps", "torch_threads",
    "disabled_extensions",
})
#: A1111 settings we do not have that change the image unless left at these values.
A1111_IMAGE_SETTINGS: Mapping[str, Any] = {
    "eta_noise_seed_delta": 0,
    "token_merging_ratio": 0,
    "always_discard_next_to_last_sigma": False,
    "sd_unet": "Automatic",
    "use_old_emphasis_implementation": False,
    "face_restoration": False,
}
#: Infotext keys that mean a feature we do not have yet; applying the rest would make another image.
INFOTEXT_UNSUPPORTED: Mapping[str, str] = {
    "Hires checkpoint": "a hires fix checkpoint", "Hires CFG Scale": "a hires fix CFG scale",
    "Face restoration": "face restoration",
}

NOT_IMPLEMENTED_RESPONSE: dict[int | str, dict[str, Any]] = {
    501: {"model": ErrorResponse, "description": "The feature does not exist yet"},
}


# ---------------------------------------------------------------------------------------------
# Small pure helpers
# ---------------------------------------------------------------------------------------------


def encode_png_base64(image: Any, infotext: str | None = None) -> str:
    """A PNG (with the infotext in its ``parameters`` chunk when given), base64, no ``data:`` prefix."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if infotext:
        info.add_text("parameters", infotext)  # tEXt, or iTXt for non-Latin-1 text
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON data: non-finite floats become None (JSON has no NaN), and objects JSON
    cannot hold (a ``torch.dtype`` in the runtime description, a Path in an option) become text.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(item) for item in value]
    return str(value)


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, Mapping):
        return any(_has_non_finite(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_non_finite(item) for item in value)
    return False


def memory_snapshot() -> dict[str, Any]:
    """A1111's ``ram``: total system memory, this process's resident size as ``used``, bytes.

    Read from ``/proc`` (no psutil); elsewhere the peak resident size from ``resource``, or an error.
    """
    try:
        fields: dict[str, int] = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            fields[key] = int(rest.split()[0]) * 1024
        rss = 0
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
        total = fields["MemTotal"]
        return {"free": total - rss, "used": rss, "total": total,
                "available": fields.get("MemAvailable", fields.get("MemFree", 0))}
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scale = 1 if os.uname().sysname == "Darwin" else 1024  # bytes on macOS, KiB on Linux
        return {"used": peak * scale, "error": "system totals unavailable; used is the peak size"}
    except (ImportError, OSError, AttributeError):
        return {"error": "memory statistics are unavailable on this system"}


def _load_failure_status(exc: BaseException) -> int:
    """422 for a file the model manager refuses, 507 when memory ran out, else 500."""
    if isinstance(exc, (LookupError, ValueError)):
        return 422
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return 507
    return 500


# ---------------------------------------------------------------------------------------------
# The routes
# ---------------------------------------------------------------------------------------------


class A1111Api:
    """The route handlers, bound to one services container."""

    def __init__(self, services: AppServices) -> None:
        self.services = services
        # Requests are checked and queued one at a time, in arrival order (asyncio.Lock is FIFO);
        # the check may build the sampler registry the first time, which imports diffusers.
        self._submit_lock = asyncio.Lock()

    # ------------------------------------------------------------------ txt2img
    async def txt2img(self, request: Txt2ImgRequest) -> TextToImageResponse:
        async with self._submit_lock:
            params, plan = await run_in_threadpool(self.build_params, request)
            try:
                job = self.services.generation.submit(params, save=bool(request.save_images), source="api",
                                                      job_id=request.force_task_id or None)
            except GenerationError as exc:
                raise ApiError(exc.status, exc.message) from exc
        result = await run_in_threadpool(self._wait, job)
        return await run_in_threadpool(self._txt2img_response, request, result, plan)

    def build_params(self, request: Txt2ImgRequest) -> tuple[GenerationParams, dict[str, Any]]:
        """The request as GenerationParams, plus what to do after the job (``restore`` settings)."""
        given = request.given()
        # 1. Refuse what would silently make another image than the one asked for.
        self._refuse_unsupported(request, given)
        self._log_ignored(request, given)

        # 2. Defaults, then the infotext's values, then the fields the client sent.
        values: dict[str, Any] = dict(API_DEFAULTS)
        if request.infotext:
            values.update(self._infotext_values(request.infotext, given))
        for name in DIRECT_FIELDS:
            if name in given:
                values[name] = getattr(request, name)
        if request.enable_hr:
            values["enable_hr"] = True
            values.update({name: getattr(request, name) for name in HIRES_FIELDS
                           if name in given and getattr(request, name) is not None})
            for name, same in HIRES_SAMPLER_SAME.items():
                if name in given:
                    value = getattr(request, name)
                    values[name] = "" if value in (None, *same) else value
        if "styles" in given:
            values["styles"] = tuple(request.styles or ())
        # sampler_name wins; sampler_index (A1111's older field, default "Euler") when it is absent.
        if "sampler_name" in given:
            values["sampler_name"] = request.sampler_name
        elif "sampler_index" in given:
            values["sampler_name"] = request.sampler_index
        if "scheduler" in given:
            values["scheduler"] = request.scheduler

        # 3. Settings overridden for this request.
        after: dict[str, Any] = {}
        overrides = dict(request.override_settings or {})
        values.update(self._override_values(overrides))
        if overrides and request.override_settings_restore_afterwards is False:
            after["keep_settings"] = {key: value for key, value in overrides.items()
                                      if key in OVERRIDE_TO_FIELD}

        # 4. Sampler and schedule type by their canonical names ("k_euler_a" -> "Euler a"); same for
        # the hires upscaler ("latent" -> "Latent").
        values["sampler_name"], values["scheduler"] = self._resolve_sampler(
            str(values["sampler_name"]), str(values.get("scheduler") or "Automatic"))
        if values.get("enable_hr") and (values.get("hr_sampler_name") or values.get("hr_scheduler")):
            values["hr_sampler_name"], values["hr_scheduler"] = self._resolve_second_pass_sampler(
                values["sampler_name"], str(values.get("hr_sampler_name") or ""),
                str(values.get("hr_scheduler") or ""))
        if values.get("enable_hr") and values.get("hr_upscaler"):
            from sdweb.images.upscale import UnknownUpscalerError, find_hires_upscaler

            service = self.services.upscalers  # knows the models/ESRGAN names too
            find = service.find_hires if service is not None else find_hires_upscaler
            try:
                values["hr_upscaler"] = find(str(values["hr_upscaler"]))
            except UnknownUpscalerError as exc:
                raise ApiError(400, str(exc)) from exc

        # 5. The typed request; bounds are checked here too (infotext and override values).
        try:
            params = GenerationParams(**values)
        except ValidationError as exc:
            detail, errors = describe_validation_errors(
                [{**item, "loc": self._api_location(item.get("loc", ()))} for item in exc.errors()])
            raise ApiError(422, detail, errors=errors) from exc
        return params, after

    def _refuse_unsupported(self, request: Txt2ImgRequest, given: set[str]) -> None:
        problems: list[str] = []
        if request.enable_hr and isinstance(request, Img2ImgRequest):
            problems.append("enable_hr: hires fix is a txt2img feature; send enable_hr false to img2img")
        elif request.enable_hr:
            for name, same in HIRES_SAME.items():
                value = getattr(request, name)
                if value not in (None, *same):
                    problems.append(f"{name}: a second-pass setting of its own is not supported yet "
                                    f"(got {value!r}; send {same[-1]!r})")
        if request.restore_faces:
            problems.append("restore_faces: face restoration is not supported yet")
        if request.script_name and not (isinstance(request, Img2ImgRequest)
                                        and is_img2img_script(request.script_name)):
            problems.append(f"script_name: Script {request.script_name!r} not found (scripts are not "
                            "supported yet)")
        if request.alwayson_scripts:
            names = ", ".join(sorted(request.alwayson_scripts))
            problems.append(f"alwayson_scripts: always on script(s) {names} not found (scripts are not "
                            "supported yet)")
        if request.refiner_checkpoint and request.refiner_checkpoint != "None":
            problems.append("refiner_checkpoint: the refiner is not supported yet")
        for name, neutral in NEUTRAL_SAMPLER_VALUES.items():
            value = getattr(request, name)
            if name in given and value not in neutral:
                problems.append(f"{name}: only {' or '.join(str(v) for v in neutral)} is supported yet "
                                f"(got {value})")
        if problems:
            raise ApiError(422, "; ".join(problems))

    def _log_ignored(self, request: Txt2ImgRequest, given: set[str]) -> None:
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

    def _infotext_values(self, infotext: str, given: set[str]) -> dict[str, Any]:
        """The fields an infotext fills (only those the request left unset)."""
        from sdweb.images.infotext import InfotextError, infotext_to_params, parse_infotext

        parsed = parse_infotext(infotext)
        try:
            from_text, extras = infotext_to_params(parsed)
        except InfotextError as exc:  # its message already names the infotext key
            raise ApiError(422, str(exc) if str(exc).startswith("infotext") else f"infotext: {exc}") from exc
        unsupported = sorted({feature for key, feature in INFOTEXT_UNSUPPORTED.items() if key in extras})
        if unsupported:
            raise ApiError(422, f"infotext: it uses {', '.join(unsupported)}, which is not supported yet")
        if str(extras.get("ENSD", "0")).strip() not in ("0", ""):
            raise ApiError(422, "infotext: ENSD (eta noise seed delta) is not supported yet")
        if "RNG" in extras:
            raise ApiError(422, f"infotext: RNG {extras['RNG']!r} is not supported (only CPU and GPU)")
        values: dict[str, Any] = {}
        # A hires fix image's infotext turns hires fix on, with the values it wrote (infotext_to_params).
        for name in from_text.model_fields_set:
            if name == "styles" or name in given:
                continue
            if name in ("sampler_name", "scheduler") and ({"sampler_name", "sampler_index"} & given):
                continue
            values[name] = getattr(from_text, name)
        # A1111 writes both; the hash is found only once the file was hashed, the name always.
        wanted = [str(extras[key]) for key in ("Model hash", "Model") if extras.get(key)]
        if wanted:
            values["checkpoint"] = self._infotext_checkpoint(wanted)
        applied = {"Model hash", "Model", "Version", "VAE", "VAE hash"}
        left = [key for key in extras if key not in applied]
        if left:
            logger.warning("txt2img: infotext keys not applied: %s", ", ".join(left[:20]))
        return values

    def _infotext_checkpoint(self, wanted: list[str]) -> str:
        problem = ""
        for query in wanted:
            try:
                return str(self.services.models.find(query).title)
            except LookupError as exc:
                problem = str(exc).strip("'\"")
        raise ApiError(404, f"infotext: Model {' / '.join(wanted)} is not available here ({problem}); "
                            "choose one with override_settings.sd_model_checkpoint")

    def _override_values(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        ignored: list[str] = []
        problems: list[str] = []
        options = self.services.options
        known_options = {spec.key for spec in options.specs}
        for key, value in overrides.items():
            if key in OVERRIDE_TO_FIELD:
                if key == "sd_vae" and value == "Automatic":
                    value = None  # the setting's default behaviour, as without an override
                values[OVERRIDE_TO_FIELD[key]] = value
            elif key in NON_IMAGE_OPTIONS or key not in known_options and key not in A1111_IMAGE_SETTINGS:
                ignored.append(key)
            elif key in A1111_IMAGE_SETTINGS:
                if value != A1111_IMAGE_SETTINGS[key]:
                    problems.append(f"override_settings.{key}: not supported yet (only "
                                    f"{A1111_IMAGE_SETTINGS[key]!r})")
            elif value != options.get(key):
                problems.append(f"override_settings.{key}: cannot be changed for one request; set it with "
                                "POST /sdapi/v1/options")
        if problems:
            raise ApiError(422, "; ".join(problems))
        if ignored:
            logger.warning("txt2img: override_settings not applied (they do not change the image): %s",
                           ", ".join(ignored[:20]))
        vae = values.get("vae")
        if isinstance(vae, str) and vae not in ("Automatic", "None"):
            try:
                values["vae"] = self.services.models.vae_registry.find(vae).name
            except LookupError as exc:
                raise ApiError(404, f"override_settings.sd_vae: {str(exc).strip(chr(34) + chr(39))}") from exc
        if "checkpoint" in values and isinstance(values["checkpoint"], str):
            values["checkpoint"] = self._find_checkpoint(values["checkpoint"],
                                                         "override_settings.sd_model_checkpoint").title
        return values

    def _find_checkpoint(self, query: str, where: str) -> Any:
        try:
            return self.services.models.find(query)
        except LookupError as exc:
            raise ApiError(404, f"{where}: Model not found: {str(exc).strip(chr(34) + chr(39))}") from exc

    def _resolve_sampler(self, sampler: str, scheduler: str) -> tuple[str, str]:
        registry = self.services.samplers()
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

    def _resolve_second_pass_sampler(self, first_sampler: str, sampler: str,
                                     scheduler: str) -> tuple[str, str]:
        """Canonical names of hires fix's own sampler / schedule type; "" stays "the first pass's"."""
        try:
            name, schedule = self._resolve_sampler(sampler or first_sampler, scheduler or "Automatic")
        except ApiError as exc:
            raise ApiError(exc.status, f"hr_sampler_name/hr_scheduler: {exc.detail}") from exc
        # An old-style "DPM++ 2M Karras" brings its schedule type; "Automatic" from nothing stays "".
        keep_schedule = bool(scheduler) or schedule != "Automatic"
        return (name if sampler else ""), (schedule if keep_schedule else "")

    @staticmethod
    def _api_location(loc: Any) -> tuple[Any, ...]:
        names = {field: f"override_settings.{key}" for key, field in OVERRIDE_TO_FIELD.items()}
        parts = tuple(loc)
        if parts and parts[0] in names:
            return (names[parts[0]], *parts[1:])
        return parts

    def _wait(self, job: Job) -> GenerationResult:
        try:
            return job.wait()
        except GenerationError as exc:
            if job.result is not None and job.progress.state == "interrupted":
                return job.result  # interrupted while still queued: nothing made, nothing wrong
            raise ApiError(exc.status, exc.message) from exc

    def _txt2img_response(self, request: Txt2ImgRequest, result: GenerationResult,
                          plan: Mapping[str, Any]) -> TextToImageResponse:
        keep = plan.get("keep_settings")
        if keep:
            self._keep_settings(keep)
        images: list[str] = []
        if request.send_images is not False:
            images = [encode_png_base64(image, infotext)
                      for image, infotext in zip(result.images, result.infotexts, strict=False)]
        return TextToImageResponse(images=images, parameters=json_safe(request.echo()),
                                   info=json.dumps(json_safe(self.info_of(request, result)),
                                                   ensure_ascii=False))

    def _keep_settings(self, keep: Mapping[str, Any]) -> None:
        """override_settings_restore_afterwards=false: the overrides become the settings."""
        changes = dict(keep)
        try:
            checkpoint = changes.pop("sd_model_checkpoint", None)
            if checkpoint:
                self.services.models.select(str(checkpoint))
            if changes:
                self.services.options.update(changes)
        except (LookupError, ValueError) as exc:
            logger.warning("could not keep override_settings after the request: %s", exc)

    def info_of(self, request: Txt2ImgRequest, result: GenerationResult) -> dict[str, Any]:
        """The ``info`` object of A1111's response (sent as a JSON string)."""
        params = result.params
        seeds = list(result.seeds)
        return {
            "prompt": result.prompts[0] if result.prompts else params.prompt,
            "all_prompts": list(result.prompts),
            "negative_prompt": (result.negative_prompts[0] if result.negative_prompts
                                else params.negative_prompt),
            "all_negative_prompts": list(result.negative_prompts),
            "seed": seeds[0] if seeds else params.seed,
            "all_seeds": seeds,
            "subseed": result.subseeds[0] if result.subseeds else params.subseed,
            "all_subseeds": list(result.subseeds),
            "subseed_strength": params.subseed_strength,
            "width": params.width,
            "height": params.height,
            "sampler_name": params.sampler_name,
            "scheduler": params.scheduler,
            "cfg_scale": params.cfg_scale,
            "steps": params.steps,
            "batch_size": params.batch_size,
            "n_iter": params.n_iter,
            "restore_faces": False,
            "face_restoration_model": None,
            "sd_model_name": result.model_name,
            "sd_model_hash": result.model_hash,
            "sd_vae_name": result.vae_name,
            "sd_vae_hash": result.vae_hash,
            "seed_resize_from_w": params.seed_resize_from_w,
            "seed_resize_from_h": params.seed_resize_from_h,
            "denoising_strength": params.denoising_strength if params.enable_hr else None,
            "extra_generation_params": json_safe(dict(result.extra_generation_params)),
            "index_of_first_image": 0,  # no grid is sent back
            "infotexts": list(result.infotexts),
            "styles": list(params.styles),
            "job_timestamp": result.job_timestamp,
            "clip_skip": result.clip_skip,
            "is_using_inpainting_conditioning": False,
            "interrupted": result.interrupted,
            "version": self.services.version,
        }

    # ------------------------------------------------------------------ img2img
    async def img2img(self, request: Img2ImgRequest) -> ImageToImageResponse:
        """As txt2img, from init images (see :mod:`sdweb.api.image_requests`), on the same queue."""
        refuse_unsupported_img2img(request)
        async with self._submit_lock:
            base, plan = await run_in_threadpool(self.build_params, request)
            params = img2img_params(base, request)
            script = outpaint_script_of(request)
            images = await run_in_threadpool(init_images_of, request)
            mask = await run_in_threadpool(mask_of, request)
            if script is not None:
                params, images, mask = await run_in_threadpool(outpaint_request, params, images, script)
            try:
                job = self.services.generation.submit_img2img(
                    params, images, save=bool(request.save_images), source="api",
                    job_id=request.force_task_id or None, mask=mask)
            except GenerationError as exc:
                raise ApiError(exc.status, exc.message) from exc
        result = await run_in_threadpool(self._wait, job)
        response = await run_in_threadpool(self._txt2img_response, request, result, plan)
        info = json.loads(response.info)
        info["denoising_strength"] = params.denoising_strength
        return ImageToImageResponse(images=response.images, parameters=json_safe(img2img_echo(request)),
                                    info=json.dumps(info, ensure_ascii=False))

    # ------------------------------------------------------------------ extras (upscaling)
    def extra_single_image(self, request: ExtrasSingleImageRequest) -> ExtrasSingleImageResponse:
        refuse_unsupported_extras(request)
        (image,) = decode_images([request.image], "image")
        upscaled, info = upscale_for_extras(image, request, self.services.upscalers)
        return ExtrasSingleImageResponse(html_info=info,
                                         image=encode_png_base64(upscaled, source_infotext(image)))

    def extra_batch_images(self, request: ExtrasBatchImagesRequest) -> ExtrasBatchImagesResponse:
        refuse_unsupported_extras(request)
        count = len(request.imageList)
        if count > MAX_EXTRAS_BATCH:
            raise ApiError(422, f"imageList: at most {MAX_EXTRAS_BATCH} images (got {count})")
        encoded: list[str] = []
        info = ""
        for index, item in enumerate(request.imageList):
            # One at a time: one decoded source and its result in memory, whatever the batch size.
            image = decode_images([item.data], "imageList")[0]
            try:
                upscaled, info = upscale_for_extras(image, request, self.services.upscalers)
            except ApiError as exc:
                raise ApiError(exc.status, f"imageList[{index}] ({item.name}): {exc.detail}") from exc
            encoded.append(encode_png_base64(upscaled, source_infotext(image)))
        return ExtrasBatchImagesResponse(html_info=info, images=encoded)

    # ------------------------------------------------------------------ not there yet
    async def interrogate(self, request: InterrogateRequest) -> InterrogateResponse:
        raise ApiError(501, "interrogate (image captioning) is not supported yet")

    # ------------------------------------------------------------------ png-info
    def png_info(self, request: PNGInfoRequest) -> PNGInfoResponse:
        from sdweb.images.infotext import parse_infotext
        from sdweb.images.metadata import ImageDecodeError, decode_base64_image, read_image_metadata

        try:
            image = decode_base64_image(request.image)
        except ImageDecodeError as exc:
            raise ApiError(400, f"image: {exc}") from exc
        metadata = read_image_metadata(image)
        info = metadata.parameters or ""
        items = {key: value for key, value in metadata.raw.items() if key != "parameters"}
        parameters = parse_infotext(info) if info else {}
        return PNGInfoResponse(info=info, items=items, parameters=parameters)

    # ------------------------------------------------------------------ progress and control
    def progress(
        self,
        skip_current_image: bool = Query(False, description="Leave out the live preview image"),
        id_task: str | None = Query(None, max_length=200,
                                    description="A job id (force_task_id); default: the running job"),
    ) -> ProgressResponse:
        generation = self.services.generation
        job = generation.job(id_task) if id_task else generation.current
        if job is None:
            if id_task:
                raise ApiError(404, f"no job with id {id_task!r} (finished jobs are kept for a while)")
            return ProgressResponse(progress=0.0, eta_relative=0.0, state=ProgressState(), textinfo=None)
        progress = generation.progress(job)
        state = ProgressState(
            skipped=progress.skipped, interrupted=progress.interrupted,
            stopping_generation=progress.interrupted,
            job=job.kind if progress.state == "running" else progress.state,
            job_count=progress.job_count, job_timestamp=time.strftime("%Y%m%d%H%M%S",
                                                                      time.localtime(job.created)),
            job_no=progress.job_no, sampling_step=progress.sampling_step,
            sampling_steps=progress.sampling_steps, job_id=job.id, queue_position=progress.queue_position,
        )
        preview = progress.preview
        current_image = None
        if preview is not None and not skip_current_image:
            current_image = encode_png_base64(preview)
        textinfo = progress.textinfo or self._textinfo(progress)
        return ProgressResponse(progress=progress.fraction, eta_relative=progress.eta_seconds or 0.0,
                                state=state, current_image=current_image, textinfo=textinfo)

    @staticmethod
    def _textinfo(progress: Any) -> str:
        if progress.state == "queued":
            return f"In queue, position {progress.queue_position}"
        if progress.state == "running":
            return (f"Batch {progress.job_no + 1}/{progress.job_count}, "
                    f"step {progress.sampling_step}/{progress.sampling_steps}")
        if progress.state == "failed":
            return f"Failed: {progress.error}"
        return progress.state.capitalize()

    def interrupt(self) -> dict[str, Any]:
        self.services.generation.interrupt()
        return {}

    def skip(self) -> dict[str, Any]:
        self.services.generation.skip()
        return {}

    # ------------------------------------------------------------------ options and flags
    def get_options(self) -> dict[str, Any]:
        return json_safe(self.services.options.as_dict())

    def set_options(
        self, changes: dict[str, Any] = Body(..., examples=[{"CLIP_stop_at_last_layers": 2}])
    ) -> None:
        """Set options, all or nothing.

        ``sd_model_checkpoint`` loads that model first; when it cannot be found or loaded nothing
        changes and the current model stays.
        """
        options = self.services.options
        bad = [key for key, value in changes.items() if _has_non_finite(value)]
        if bad:
            raise ApiError(400, f"option {bad[0]!r}: must be a finite number")
        try:
            converted = options.validate(changes)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc
        checkpoint = converted.pop("sd_model_checkpoint", None)
        if checkpoint is not None:
            info = self._find_checkpoint(str(checkpoint), "sd_model_checkpoint")
            try:
                self.services.models.select(info.title)
            except Exception as exc:  # the engine's message is what the user needs
                logger.warning("could not switch to %s: %s", info.title, exc)
                raise ApiError(_load_failure_status(exc),
                               f"sd_model_checkpoint: could not load {info.title}: {exc}") from exc
        if converted:
            options.update(converted)

    def cmd_flags(self) -> dict[str, Any]:
        return json_safe(self.services.settings.public_flags())

    # ------------------------------------------------------------------ listings
    def samplers(self) -> list[SamplerItem]:
        return [SamplerItem(**item) for item in self.services.samplers().describe()]

    def schedulers(self) -> list[SchedulerItem]:
        return [SchedulerItem(**item) for item in self.services.samplers().describe_schedules()]

    def sd_models(self) -> list[SDModelItem]:
        return [
            SDModelItem(title=info.title, model_name=info.model_name, hash=info.shorthash,
                        sha256=info.sha256, filename=str(info.path), config=None)
            for info in self.services.models.list_checkpoints()
        ]

    def sd_vae(self) -> list[SDVaeItem]:
        return [SDVaeItem(model_name=info.name, filename=str(info.path))
                for info in self.services.models.list_vaes()]

    def prompt_styles(self) -> list[PromptStyleItem]:
        return [PromptStyleItem(name=style.name, prompt=style.prompt, negative_prompt=style.negative_prompt)
                for style in self.services.styles.list()]

    def embeddings(self) -> EmbeddingsResponse:
        return EmbeddingsResponse.model_validate(self.services.models.embeddings())

    def loras(self) -> list[LoraItem]:
        library = self.services.loras
        return [LoraItem(**item) for item in library.items()] if library is not None else []

    def upscalers(self) -> list[UpscalerItem]:
        from sdweb.images.upscale import list_upscalers

        service = self.services.upscalers
        listed = service.items() if service is not None else list_upscalers()
        return [UpscalerItem(name=item.name, scale=item.scale, model_name=item.model_name,
                             model_path=item.model_path, model_url=item.model_url) for item in listed]

    def no_items(self) -> list[Any]:
        """Listings of features that do not exist yet (hypernetworks, face restorers...): empty."""
        return []

    def latent_upscale_modes(self) -> list[LatentUpscalerModeItem]:
        from sdweb.images.upscale import LATENT_UPSCALE_MODES

        return [LatentUpscalerModeItem(name=name) for name in LATENT_UPSCALE_MODES]

    def scripts(self) -> ScriptsList:
        return ScriptsList(txt2img=[], img2img=[OUTPAINT_SCRIPT])

    def script_info(self) -> list[ScriptInfo]:
        return [ScriptInfo(name=OUTPAINT_SCRIPT, is_alwayson=False, is_img2img=True,
                           args=[dict(arg) for arg in OUTPAINT_SCRIPT_ARGS])]

    def extensions(self) -> list[ExtensionItem]:
        manager = self.services.extensions
        if manager is None:
            return []
        return [
            ExtensionItem(name=info.name, remote=info.git_remote or "", branch=info.branch or "",
                          commit_hash=info.git_commit or "", version=info.version or "",
                          commit_date="", enabled=bool(info.enabled))
            for info in manager.list()
        ]

    def memory(self) -> MemoryResponse:
        runtime = self.services.models.runtime_description()
        cuda = runtime.get("cuda") if isinstance(runtime.get("cuda"), dict) else None
        if cuda is None:
            cuda = {"error": "unavailable", "runtime": json_safe(runtime)}
        return MemoryResponse(ram=memory_snapshot(), cuda=json_safe(cuda))

    # ------------------------------------------------------------------ actions
    def refresh_checkpoints(self) -> None:
        self.services.models.refresh()

    def refresh_vae(self) -> None:
        self.services.models.refresh_vaes()

    def refresh_loras(self) -> None:
        if self.services.loras is not None:
            self.services.loras.refresh()

    def refresh_embeddings(self) -> None:
        self.services.models.refresh_embeddings()

    def unload_checkpoint(self) -> dict[str, Any]:
        self.services.models.unload()
        return {}

    def reload_checkpoint(self) -> dict[str, Any]:
        try:
            self.services.models.reload()
        except LookupError as exc:
            raise ApiError(404, str(exc).strip("'\"")) from exc
        except Exception as exc:  # the engine's message is what the user needs
            raise ApiError(_load_failure_status(exc), f"could not load the model: {exc}") from exc
        return {}


def make_router(services: AppServices) -> APIRouter:
    """The ``/sdapi/v1`` routes (include with ``prefix="/sdapi/v1"``), auth-guarded when configured."""
    dependencies = [*api_dependencies(services.settings.effective_api_auth),
                    Depends(reject_unpaired_surrogates)]
    router = APIRouter(dependencies=dependencies, responses=ERROR_RESPONSES, tags=["sdapi"])
    api = A1111Api(services)

    def add(path: str, endpoint: Callable[..., Any], method: str, model: Any = None, **kwargs: Any) -> None:
        router.add_api_route(path, endpoint, methods=[method], response_model=model, **kwargs)

    add("/txt2img", api.txt2img, "POST", TextToImageResponse)
    add("/img2img", api.img2img, "POST", ImageToImageResponse)
    add("/extra-single-image", api.extra_single_image, "POST", ExtrasSingleImageResponse)
    add("/extra-batch-images", api.extra_batch_images, "POST", ExtrasBatchImagesResponse)
    add("/interrogate", api.interrogate, "POST", InterrogateResponse, responses=NOT_IMPLEMENTED_RESPONSE)
    add("/png-info", api.png_info, "POST", PNGInfoResponse)
    add("/progress", api.progress, "GET", ProgressResponse)
    add("/interrupt", api.interrupt, "POST", dict[str, Any])
    add("/skip", api.skip, "POST", dict[str, Any])
    options_doc = {200: {"model": options_model(services.options.specs), "description": "All settings"}}
    add("/options", api.get_options, "GET", None, responses=options_doc)
    add("/options", api.set_options, "POST", None)
    add("/cmd-flags", api.cmd_flags, "GET", dict[str, Any])
    add("/samplers", api.samplers, "GET", list[SamplerItem])
    add("/schedulers", api.schedulers, "GET", list[SchedulerItem])
    add("/upscalers", api.upscalers, "GET", list[UpscalerItem])
    add("/latent-upscale-modes", api.latent_upscale_modes, "GET", list[LatentUpscalerModeItem])
    add("/hypernetworks", api.no_items, "GET", list[NamedPathItem])
    add("/face-restorers", api.no_items, "GET", list[FaceRestorerItem])
    add("/realesrgan-models", api.no_items, "GET", list[NamedPathItem])
    add("/sd-models", api.sd_models, "GET", list[SDModelItem])
    add("/sd-vae", api.sd_vae, "GET", list[SDVaeItem])
    add("/prompt-styles", api.prompt_styles, "GET", list[PromptStyleItem])
    add("/embeddings", api.embeddings, "GET", EmbeddingsResponse)
    add("/loras", api.loras, "GET", list[LoraItem])
    add("/scripts", api.scripts, "GET", ScriptsList)
    add("/script-info", api.script_info, "GET", list[ScriptInfo])
    add("/extensions", api.extensions, "GET", list[ExtensionItem])
    add("/memory", api.memory, "GET", MemoryResponse)
    add("/refresh-checkpoints", api.refresh_checkpoints, "POST", None)
    add("/refresh-vae", api.refresh_vae, "POST", None)
    add("/refresh-loras", api.refresh_loras, "POST", None)
    add("/refresh-embeddings", api.refresh_embeddings, "POST", None)
    add("/unload-checkpoint", api.unload_checkpoint, "POST", dict[str, Any])
    add("/reload-checkpoint", api.reload_checkpoint, "POST", dict[str, Any])
    return router

"""``POST /txt2img`` and ``/img2img``: build the request, queue it, wait, answer in A1111's shape.

Both go through the one GPU queue the UI uses (``services.generation.submit``, ``submit_img2img``),
in arrival order: requests are checked and queued one at a time (an ``asyncio.Lock`` is FIFO), and
waiting for a job happens in a worker thread so the event loop keeps serving ``/progress`` and
``/interrupt`` meanwhile. The request becomes typed parameters in :mod:`sdweb.api.request_params`
(img2img's own fields and images in :mod:`sdweb.api.image_requests`); the scripts it names
(:mod:`sdweb.api.scripts`) are checked before any work and applied to the job before it is queued.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi.concurrency import run_in_threadpool

from sdweb.api.encoding import encode_image_base64, json_safe
from sdweb.api.errors import ApiError
from sdweb.api.image_requests import (
    UrlPolicy,
    img2img_echo,
    img2img_params,
    init_images_of,
    mask_of,
    refuse_unsupported_img2img,
)
from sdweb.api.models import ImageToImageResponse, Img2ImgRequest, TextToImageResponse, Txt2ImgRequest
from sdweb.api.request_params import build_params
from sdweb.api.routes import ApiRoutes
from sdweb.api.scripts import ImageJob, ScriptRegistry
from sdweb.params import GenerationResult
from sdweb.safepath import for_client
from sdweb.services.container import AppServices
from sdweb.services.generation import GenerationError, Job

logger = logging.getLogger(__name__)


def add_routes(routes: ApiRoutes) -> None:
    handlers = GenerationRoutes(routes.services, routes.scripts)
    routes.add("/txt2img", handlers.txt2img, "POST", TextToImageResponse)
    routes.add("/img2img", handlers.img2img, "POST", ImageToImageResponse)


class GenerationRoutes:
    """The txt2img and img2img handlers, bound to one services container."""

    def __init__(self, services: AppServices, scripts: ScriptRegistry) -> None:
        self.services = services
        self.scripts = scripts
        # Requests are checked and queued one at a time, in arrival order (asyncio.Lock is FIFO);
        # the check may build the sampler registry the first time, which imports diffusers.
        self._submit_lock = asyncio.Lock()

    async def txt2img(self, request: Txt2ImgRequest) -> TextToImageResponse:
        async with self._submit_lock:
            params, after = await run_in_threadpool(build_params, request, self.services, self.scripts)
            scripts = self.scripts.plan(request)
            if scripts:
                params = (await run_in_threadpool(self.scripts.apply, scripts, ImageJob(params))).params
            job = await run_in_threadpool(self._submit, request, scripts, ImageJob(params))
        result = await run_in_threadpool(self._wait, job)
        return await run_in_threadpool(self._txt2img_response, request, result, after)

    async def img2img(self, request: Img2ImgRequest) -> ImageToImageResponse:
        """As txt2img, from init images (see :mod:`sdweb.api.image_requests`), on the same queue."""
        refuse_unsupported_img2img(request)
        # Decoded (or fetched: URLs) before taking the queue's turn, which a slow download must not hold.
        urls = UrlPolicy.of(self.services)
        images = await run_in_threadpool(init_images_of, request, urls)
        mask = await run_in_threadpool(mask_of, request, urls)
        async with self._submit_lock:
            base, after = await run_in_threadpool(build_params, request, self.services, self.scripts)
            params = img2img_params(base, request)
            scripts = self.scripts.plan(request)
            if scripts:
                job = await run_in_threadpool(self.scripts.apply, scripts, ImageJob(params, images, mask))
                params, images, mask = job.params, job.images, job.mask
            job = await run_in_threadpool(self._submit, request, scripts, ImageJob(params, images, mask))
        result = await run_in_threadpool(self._wait, job)
        response = await run_in_threadpool(self._txt2img_response, request, result, after)
        info = json.loads(response.info)
        info["denoising_strength"] = params.denoising_strength
        return ImageToImageResponse(images=response.images, parameters=json_safe(img2img_echo(request)),
                                    info=json.dumps(info, ensure_ascii=False))

    def _submit(self, request: Txt2ImgRequest, scripts: list[Any], image_job: ImageJob) -> Job:
        """Queue the request: by the selected script when it runs its own job, else as one request."""
        save, job_id = bool(request.save_images), request.force_task_id or None
        job = self.scripts.submit(scripts, image_job, services=self.services, save=save, job_id=job_id)
        if job is not None:
            return job
        try:
            if isinstance(request, Img2ImgRequest):
                return self.services.generation.submit_img2img(
                    image_job.params, image_job.images, save=save, source="api", job_id=job_id,
                    mask=image_job.mask)
            return self.services.generation.submit(image_job.params, save=save, source="api", job_id=job_id)
        except GenerationError as exc:
            raise ApiError(exc.status, exc.message) from exc

    def _wait(self, job: Job) -> GenerationResult:
        try:
            return job.wait()
        except GenerationError as exc:
            if job.result is not None and job.progress.state == "interrupted":
                return job.result  # interrupted while still queued: nothing made, nothing wrong
            raise ApiError(exc.status, exc.message) from exc

    def _txt2img_response(self, request: Txt2ImgRequest, result: GenerationResult,
                          after: Mapping[str, Any]) -> TextToImageResponse:
        keep = after.get("keep_settings")
        if keep:
            self._keep_settings(keep)
        images = list(result.images)
        infotexts = list(result.infotexts)
        grid_first = bool(request.save_images) and len(images) > 1 and option(self.services.options,
                                                                               "return_grid", True)
        if grid_first:
            # As A1111 with return_grid: the grid (with the first image's infotext) comes first.
            from sdweb.images.store import make_grid

            images.insert(0, make_grid(images))
            infotexts.insert(0, infotexts[0] if infotexts else "")
        encoded: list[str] = []
        if request.send_images is not False:
            # As A1111's API: images in the samples_format, the infotext inside.
            fmt = option(self.services.options, "samples_format", "png")
            quality = option(self.services.options, "jpeg_quality", 80)
            # A1111's enable_pnginfo: off = no parameters inside the images (info still has them).
            inside = option(self.services.options, "enable_pnginfo", True) is not False
            encoded = [encode_image_base64(image, infotext if inside else "", fmt, quality)
                       for image, infotext in zip(images, infotexts, strict=False)]
        info = info_of(result, self.services.version)
        info.update(index_of_first_image=1 if grid_first else 0, infotexts=infotexts)
        # What A1111's leniency coerced or ignored in the request, then what the job itself says.
        # No server path reaches a client (a missing face model names its folder relative to the data folder).
        info["warnings"] = [for_client(str(text))
                            for text in (*(after.get("warnings") or ()), *info.get("warnings", ()))]
        return TextToImageResponse(images=encoded, parameters=json_safe(request.echo()),
                                   info=json.dumps(json_safe(info), ensure_ascii=False))

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


def option(options: Any, key: str, default: Any) -> Any:
    """A setting's value, or ``default`` where this install has no such setting (A1111-only keys)."""
    value = options.as_dict().get(key, default)
    return default if value is None else value


def info_of(result: GenerationResult, version: str) -> dict[str, Any]:
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
        "restore_faces": params.restore_faces,
        "face_restoration_model": result.extra_generation_params.get("Face restoration"),
        "sd_model_name": result.model_name,
        "sd_model_hash": result.model_hash,
        "sd_vae_name": result.vae_name,
        "sd_vae_hash": result.vae_hash,
        "seed_resize_from_w": params.seed_resize_from_w,
        "seed_resize_from_h": params.seed_resize_from_h,
        "denoising_strength": params.denoising_strength if params.enable_hr else None,
        "extra_generation_params": json_safe(dict(result.extra_generation_params)),
        "index_of_first_image": 0,  # 1 when the grid comes first (the route sets it)
        "infotexts": list(result.infotexts),
        "styles": list(params.styles),
        "job_timestamp": result.job_timestamp,
        "clip_skip": result.clip_skip,
        "is_using_inpainting_conditioning": False,
        "interrupted": result.interrupted,
        "version": version,
        # Not A1111's: what the client should know that did not stop the job (a skipped restoration,
        # and, added by the route, what was coerced or ignored in the request).
        "warnings": list(result.warnings),
    }

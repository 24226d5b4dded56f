"""Hires fix: txt2img at the requested size, upscaled, then an img2img pass at the larger size.

This module owns the two-pass txt2img A1111 calls "Hires. fix" (``enable_hr``):

1. For each of the ``n_iter`` batches, the first pass is plain txt2img at ``width x height``
   (:func:`sdweb.engine.generate.run_txt2img`, same seeds).
2. The result is upscaled to the hires size (:func:`hires_size`): a latent upscaler ("Latent",
   "Latent (nearest)", ... A1111's modes, ``torch.nn.functional.interpolate`` on the latents, no VAE
   round trip) or a pixel upscaler of :mod:`sdweb.images.upscale` (decode, resize, encode again).
3. The second pass is img2img (:mod:`sdweb.engine.img2img`) from those, with the same seeds (the noise
   drawn at the hires size), ``hr_second_pass_steps`` (0 = ``steps``) and ``denoising_strength``. As
   A1111's, A1111's samplers run exactly those steps, the last ones of an ``int(steps / min(strength,
   0.999))`` schedule (``img2img_fix_steps``'s count, whatever the setting); diffusers' schedulers keep
   diffusers' ``int(steps * strength)`` of a ``steps`` schedule. Prompt editing goes on along the first
   pass's timeline, as A1111's: ``[a:b:25]`` after 20 steps switches at the second pass's 5th model call,
   ``[a:b:1.5]`` halfway through it.

With a dedicated inpainting checkpoint (9-channel UNet) the first pass is txt2img's (everything
masked) and the second pass img2img's without a mask (:mod:`sdweb.engine.image_conditioning`), as A1111.

Progress counts both passes as one run of ``steps + second-pass steps`` per batch. Interrupt keeps the
finished batches; skip drops the batch being made, in either pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from PIL import Image

from sdweb.engine.accelerator import inference_context, offload_module, vae_decode
from sdweb.engine.generate import (
    OLD_TIMELINES_KEY,
    LoadedModelLike,
    run_txt2img,
    to_pil,
)
from sdweb.engine.guidance import prompt_schedule_steps
from sdweb.engine.image_conditioning import DEFAULT_MASK_WEIGHT
from sdweb.engine.img2img import _Img2Img, img2img_run_steps
from sdweb.engine.samplers.registry import SamplerRegistry
from sdweb.images.resize import resize_image
from sdweb.images.upscale import LATENT_UPSCALE_MODES, find_hires_upscaler
from sdweb.params import (
    MAX_SIDE,
    EngineRun,
    GeneratedImage,
    GenerationParams,
    Img2ImgParams,
    JobControl,
    StepProgress,
)

logger = logging.getLogger(__name__)

#: Largest side of the second pass: the request's own limit (memory is the API's pixel budget's business).
MAX_HIRES_SIDE = MAX_SIDE


def hires_size(params: GenerationParams, multiple: int = 8) -> tuple[int, int, int, int]:
    """``(scaled_w, scaled_h, final_w, final_h)`` of the second pass, A1111's arithmetic.

    ``hr_resize_x/y`` both 0: ``hr_scale`` times the size. One of them set: that side, the other from
    the aspect ratio. Both set: scale to cover that box, then crop its centre (``final`` < ``scaled``).
    Sizes are floored to the VAE's grid of ``multiple`` pixels.
    """
    width, height = params.width, params.height
    x, y = params.hr_resize_x, params.hr_resize_y
    if x == 0 and y == 0:
        scaled = (int(width * params.hr_scale), int(height * params.hr_scale))
        final = scaled
    elif y == 0:
        scaled = final = (x, x * height // width)
    elif x == 0:
        scaled = final = (y * width // height, y)
    else:
        if width / height < x / y:
            scaled = (x, x * height // width)
        else:
            scaled = (y * width // height, y)
        final = (x, y)
    scaled = (scaled[0] // multiple * multiple, scaled[1] // multiple * multiple)
    final = (min(final[0], scaled[0]) // multiple * multiple, min(final[1], scaled[1]) // multiple * multiple)
    if min(final) < multiple or max(scaled) > MAX_HIRES_SIDE:
        raise ValueError(f"hires fix size {scaled[0]}x{scaled[1]} is out of range (at least {multiple}, at "
                         f"most {MAX_HIRES_SIDE} pixels a side): change hr_scale or hr_resize_x/y")
    return scaled[0], scaled[1], final[0], final[1]


def run_hires_txt2img(
    model: LoadedModelLike,
    params: GenerationParams,
    *,
    samplers: SamplerRegistry,
    control: JobControl,
    on_step: Callable[[StepProgress], None],
    preview_every: int = 0,
    extra_networks: Any = None,
    inpainting_mask_weight: float = DEFAULT_MASK_WEIGHT,
    model_upscalers: Any = None,
    passes: tuple[Callable[..., EngineRun], Callable[..., EngineRun]] | None = None,
    controlnets: Any = None,
) -> EngineRun:
    """txt2img with hires fix (``params.enable_hr``); see the module docstring.

    Images come at the hires size, in seed order, as :func:`sdweb.engine.generate.run_txt2img`'s.
    ``inpainting_mask_weight``: the second pass's, for inpainting checkpoints only (A1111's setting).
    ``model_upscalers``: ``sdweb.engine.upscalers.ModelUpscalers``, for ``hr_upscaler`` models/ESRGAN names.
    ``passes``: a model family's own ``(txt2img, img2img)`` runners (SD 3.x / Flux: the flow-matching loop,
    ``sdweb.engine.families``) instead of the UNet loops; they take the same keywords as these.
    ``controlnets``: the job's ControlNet units; each takes part in the passes its ``hr_option`` names.
    """
    # 1. Check inputs before any model work.
    upscaler = find_hires_upscaler(params.hr_upscaler, model_upscalers.names() if model_upscalers else ())
    scale = int(getattr(model.pipe, "vae_scale_factor", 8))
    scaled_w, scaled_h, final_w, final_h = hires_size(params, scale)
    second_steps = params.hr_second_pass_steps or params.steps
    # The second pass's own prompt, negative prompt, sampler and schedule type ("" = the first pass's).
    # As A1111's (it hands the sampler the second pass's steps): exactly those steps, the last ones of
    # a steps / strength schedule, whatever img2img_fix_steps says.
    second_template = Img2ImgParams(**{
        **params.model_dump(), "enable_hr": False, "width": final_w, "height": final_h,
        "steps": second_steps, "n_iter": 1, "resize_mode": 0, "img2img_fix_steps": True,
        **params.hires_second_pass_fields()})
    prompt_options: dict[str, int] = {}
    if passes is not None:
        run_steps = second_template.diffusers_img2img_steps  # the family's flow loop counts as diffusers
    else:
        second_plan = samplers.build(second_template.sampler_name, second_template.scheduler,
                                     model.pipe.scheduler.config,
                                     path=second_template.sampler_path or "A1111")
        run_steps = img2img_run_steps(second_template, second_plan)
        first_plan = samplers.build(params.sampler_name, params.scheduler, model.pipe.scheduler.config,
                                    path=params.sampler_path or "A1111")
        # A1111's second pass goes on along the first pass's prompt-editing timeline ([a:b:N] counts on
        # from its end; fractions above 1 are of the second pass).
        prompt_options["first_pass_prompt_steps"] = prompt_schedule_steps(first_plan, params.steps)
    total = params.steps + run_steps
    latent = upscaler in LATENT_UPSCALE_MODES
    options = {"extra_networks": extra_networks} if extra_networks is not None else {}

    images: list[GeneratedImage] = []
    interrupted = False
    last: EngineRun | None = None
    for batch_index in range(params.n_iter):
        if control.interrupted:
            interrupted = True
            break
        control.clear_skip()
        seed = params.seed + batch_index * params.batch_size
        subseed = params.subseed + batch_index * params.batch_size

        def first_step(step: StepProgress, batch: int = batch_index) -> None:
            on_step(replace(step, total_steps=total, batch_index=batch, batch_count=params.n_iter))

        def second_step(step: StepProgress, batch: int = batch_index) -> None:
            on_step(replace(step, step=params.steps + step.step, total_steps=total, batch_index=batch,
                            batch_count=params.n_iter))

        # 2. First pass.
        first_params = params.model_copy(update={"enable_hr": False, "n_iter": 1, "seed": seed,
                                                 "subseed": subseed})
        first_pass = passes[0] if passes is not None else run_txt2img
        control_options = {"controlnets": controlnets, "hires_pass": False} if controlnets is not None else {}
        with control.hold():  # the passes' images are not the job's; this loop hands on the final ones
            first = first_pass(model, first_params, samplers=samplers, control=control, on_step=first_step,
                               preview_every=preview_every, output_type="latent" if latent else "pil",
                               **options, **control_options)
        if first.interrupted:
            # As A1111: interrupted in the first pass, the batch comes back at the first pass's size.
            reached = _first_pass_images(model, first.images, latent)
            images.extend(reached)
            control.images_done(replace(first, images=reached))
            interrupted = True
            break
        if not first.images:
            continue  # skipped
        # 3. Upscale, then the second pass.
        second_params = second_template.model_copy(update={"seed": seed, "subseed": subseed})
        init_images: list[Image.Image] = []
        init_latents: torch.Tensor | None = None
        if latent:
            init_latents = _upscale_latents(torch.cat([item.image for item in first.images]), upscaler,
                                            (scaled_w // scale, scaled_h // scale),
                                            (final_w // scale, final_h // scale))
        else:
            init_images = [_upscale_pixels(item.image, upscaler, (scaled_w, scaled_h), (final_w, final_h),
                                           model_upscalers) for item in first.images]
        with control.hold():
            if passes is not None:
                second = passes[1](model, second_params, init_images, samplers=samplers, control=control,
                                   on_step=second_step, preview_every=preview_every,
                                   init_latents=init_latents, **options)
            else:
                with inference_context(model.pipe):
                    second = _Img2Img(model, second_params, init_images, samplers, control, second_step,
                                      preview_every, init_latents=init_latents,
                                      inpainting_mask_weight=inpainting_mask_weight, **options,
                                      controlnets=controlnets, hires_pass=True, **prompt_options).run()
        last = second
        # Images are the first pass's request's: its prompts are what the infotext records as the prompt.
        batch = [replace(item, prompt=first_item.prompt, negative_prompt=first_item.negative_prompt,
                         extra=_both_passes_extra(item.extra, first_item.extra))
                 for item, first_item in zip(second.images, first.images, strict=False)]
        images.extend(batch)
        # Hand the batch on now (the service saves it before the next batch starts).
        control.images_done(replace(second, images=batch))
        if second.interrupted:
            interrupted = True
            break
    reference = last or EngineRun(images=[])
    info = getattr(model, "info", None)
    return EngineRun(images=images, model_name=getattr(info, "model_name", reference.model_name),
                     model_hash=getattr(info, "shorthash", reference.model_hash),
                     vae_name=getattr(model, "vae_name", None), vae_hash=getattr(model, "vae_hash", None),
                     clip_skip=int(params.clip_skip or 1), interrupted=interrupted)


def _both_passes_extra(second: dict[str, Any], first: dict[str, Any]) -> dict[str, Any]:
    """The second pass's infotext pairs, with "Old prompt editing timelines" when either pass's were
    changed by them (A1111 writes it once the first or the second pass's conditioning was), and
    "Emphasis" when either pass's texts had a bracket (A1111 keeps the key its first encoding added).
    """
    merged = dict(second)
    if first.get(OLD_TIMELINES_KEY) and not second.get(OLD_TIMELINES_KEY):
        merged[OLD_TIMELINES_KEY] = True
    if first.get("Emphasis") and not second.get("Emphasis"):
        merged["Emphasis"] = first["Emphasis"]
    return merged


def _first_pass_images(model: LoadedModelLike, items: list[GeneratedImage],
                       latent: bool) -> list[GeneratedImage]:
    """The first pass's images as pictures (decoded when the pass kept latents for a latent upscale)."""
    if not latent or not items:
        return list(items)
    vae = model.pipe.vae
    config = vae.config
    shift = float(getattr(config, "shift_factor", 0.0) or 0.0)
    pictures = []
    with inference_context(model.pipe):
        for item in items:
            scaled = item.image.float() / config.scaling_factor + shift
            pictures.append(replace(item, image=to_pil(vae_decode(vae, scaled)[0])))  # NaN-checked
    offload_module(vae)
    return pictures


def _upscale_latents(latents: torch.Tensor, mode_name: str, scaled: tuple[int, int],
                     final: tuple[int, int]) -> torch.Tensor:
    mode, antialias = LATENT_UPSCALE_MODES[mode_name]
    kwargs: dict[str, Any] = {"antialias": True} if antialias else {}
    upscaled = torch.nn.functional.interpolate(latents, size=(scaled[1], scaled[0]), mode=mode, **kwargs)
    left = (scaled[0] - final[0]) // 2
    top = (scaled[1] - final[1]) // 2
    return upscaled[:, :, top:top + final[1], left:left + final[0]]


def _upscale_pixels(image: Image.Image, upscaler: str, scaled: tuple[int, int],
                    final: tuple[int, int], model_upscalers: Any = None) -> Image.Image:
    if model_upscalers is not None and upscaler in model_upscalers.names():
        upscaled = model_upscalers.upscale(image, upscaler, scaled)  # an ESRGAN model, on the decoded image
    else:
        # "None" as A1111's: no upscaler model, so plain Lanczos to the size the second pass needs.
        resample = Image.Resampling.NEAREST if upscaler == "Nearest" else Image.Resampling.LANCZOS
        upscaled = image.resize(scaled, resample)
    return upscaled if scaled == final else resize_image(upscaled, 1, *final)

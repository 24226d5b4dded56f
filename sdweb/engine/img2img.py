"""img2img: the txt2img loop started part-way, from init images instead of pure noise.

This module owns what differs from txt2img (``sdweb.engine.generate``), and only that:

1. The init images are flattened (transparency onto white, as A1111) and fitted to the request's
   size with its resize mode (``sdweb.images.resize``), in Pillow, before the VAE sees them.
2. Each is encoded with the VAE: the latent distribution's *mean*, times ``scaling_factor`` (minus
   ``shift_factor`` first where the VAE has one). A1111 draws a sample from the distribution with the
   global RNG; the mean makes the same request give the same image (the difference is far below what
   the noise adds). Resize mode 3 encodes the image at its own size and resizes the latents
   (bilinear, as A1111).
3. Denoising strength picks where the schedule starts. A1111's samplers (the sampling functions of
   ``sdweb.engine.samplers.kdiffusion`` on the A1111 path) count as A1111 does
   (:attr:`~sdweb.params.Img2ImgParams.a1111_img2img_steps`): ``t_enc = int(min(strength, 0.999) *
   steps)`` and the last ``t_enc + 2`` sigmas of a ``steps`` schedule, so ``t_enc + 1`` steps run, from
   ``init + sigma * noise``; with ``img2img_fix_steps`` (and always in hires fix's second pass) exactly
   ``steps`` steps, the last ones of an ``int(steps / min(strength, 0.999))`` schedule. A1111's timestep
   samplers (DDIM, PLMS) noise the init to timestep ``t_enc`` of their own timesteps and sample the
   ``t_enc`` below it, as A1111's. diffusers' schedulers (the diffusers path) keep diffusers'
   ``get_timesteps`` convention: ``int(steps * strength)`` steps, the last ones of the ``steps``
   schedule, from ``scheduler.add_noise``. The seed's noise is txt2img's (``sdweb.engine.seeds``).
   Strength 0 runs no step and returns the init images through the VAE (A1111 makes one step at the
   smallest sigma); strength 1 starts from (almost) pure noise.

Prompt encoding (A1111's grammar), guidance, progress, previews, interrupt/skip, tiling and decoding
are the txt2img loop's own: :class:`_Img2Img` extends its runner and replaces only the sampling of a
batch. Progress counts the steps actually run.

Inpainting (a ``mask`` beside the init images): the images and mask are prepared by
:mod:`sdweb.images.mask` ("whole picture" or "only masked"); after every step the latents outside the
mask are reset to the init latents noised to the next step's level (diffusers' way with a plain UNet;
for function samplers the prediction outside the mask is the init latents, A1111's way; for A1111's
DDIM / PLMS / UniPC the UNet's input outside the mask is the clean init latents and the finished latents
are blended with them, as A1111 does for its timestep samplers: :func:`blend_before_denoising`);
"latent noise" / "latent nothing" start the masked area from noise / zeros; the decoded image is pasted
back through the blurred mask, so unmasked pixels are the original's exactly.

Dedicated inpainting checkpoints (9-channel UNet) go the same way and also see, at every step, the
mask and the masked image's latents (:mod:`sdweb.engine.image_conditioning`, A1111's
``img2img_image_conditioning``): with a mask, the prepared mask and init image; without one (plain
img2img, hires fix's second pass), a mask of ones and the init image weakened by
``inpainting_mask_weight`` (at its default 1: a grey picture). A1111 keeps the latent blending above for
these models too, and so do we.

Several init images: image *i* of every batch starts from init image *i*; one init image is used for
the whole batch. A1111 shrinks the batch to the number of images given; the service does that
before the engine (here the count must be 1 or ``batch_size``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from sdweb.engine.accelerator import inference_context, vae_decode
from sdweb.engine.generate import LoadedModelLike, _Txt2Img
from sdweb.engine.image_conditioning import (
    DEFAULT_MASK_WEIGHT,
    encode_pixels,
    full_mask_conditioning,
    image_to_pixels,
    mask_to_tensor,
    masked_image_conditioning,
)
from sdweb.engine.previews import live_preview
from sdweb.engine.samplers.registry import FunctionSamplerPlan, SamplerPlan, SamplerRegistry, SchedulerPlan
from sdweb.engine.seeds import BatchNoise, create_batch_noise
from sdweb.images.mask import InpaintPlan, paste_back, prepare_inpaint
from sdweb.images.resize import flatten_alpha, latent_upscale_source_size, resize_image
from sdweb.params import EngineRun, Img2ImgParams, JobControl, StepProgress

logger = logging.getLogger(__name__)

#: Largest side an init image is VAE-encoded at in resize mode 3 (the request size limit).
MAX_LATENT_UPSCALE_SOURCE_SIDE = 2048


def img2img_steps(steps: int, denoising_strength: float, *, sampler_path: str = "A1111",
                  fix_steps: bool = False) -> int:
    """How many sampling steps an img2img job runs: A1111's count, or diffusers' on the diffusers path."""
    return Img2ImgParams(steps=steps, denoising_strength=denoising_strength, sampler_path=sampler_path,
                         img2img_fix_steps=fix_steps).denoising_steps


def uses_a1111_steps(params: Img2ImgParams, plan: SamplerPlan) -> bool:
    """Whether this job's sampler counts img2img steps as A1111 (its sampling functions on the A1111 path)
    rather than as diffusers' ``get_timesteps`` (diffusers' schedulers, and everything on the diffusers path).
    """
    return isinstance(plan, FunctionSamplerPlan) and (params.sampler_path or "A1111") != "diffusers"


#: A1111's samplers that make no step of their own at strength 0 (``t_enc = 0``): DDIM / PLMS sample on
#: no timestep, UniPC fails, DPM fast / adaptive integrate over an empty range. The init image is kept.
_NO_STEP_AT_STRENGTH_0 = frozenset({"DPM fast", "DPM adaptive"})


def img2img_run_steps(params: Img2ImgParams, plan: SamplerPlan) -> int:
    """The steps an img2img pass with ``plan`` runs and reports.

    At strength 0 A1111's k-diffusion samplers make one step from the smallest sigma (its default); the
    rest, and every sampler with ``img2img_fix_steps``, make none (0: the init image is kept).
    """
    if uses_a1111_steps(params, plan):
        if params.denoising_strength <= 0 and isinstance(plan, FunctionSamplerPlan) and (
                plan.sampler.options.get("timesteps") or plan.sampler.name in _NO_STEP_AT_STRENGTH_0):
            return 0
        return params.a1111_img2img_steps[1] + 1
    return params.diffusers_img2img_steps


def run_img2img(
    model: LoadedModelLike,
    params: Img2ImgParams,
    init_images: Sequence[Image.Image],
    *,
    samplers: SamplerRegistry,
    control: JobControl,
    on_step: Callable[[StepProgress], None],
    preview_every: int = 0,
    extra_networks: Any = None,
    mask: Image.Image | None = None,
    inpainting_mask_weight: float = DEFAULT_MASK_WEIGHT,
    controlnets: Any = None,
) -> EngineRun:
    """Make ``params.batch_size * params.n_iter`` images from ``init_images``; see the module docstring.

    With ``mask`` (same size as the init images; white = repaint) this is inpainting: only the masked
    part changes, the rest of each output is the init image's own pixels (:mod:`sdweb.images.mask`).

    ``params`` must be resolved as for :func:`sdweb.engine.generate.run_txt2img`. ``init_images`` are
    PIL images of any size and mode: one for every image of a batch, or ``batch_size`` of them.
    ``extra_networks`` (LoRA, embeddings) is handed to the txt2img loop as it is.
    ``inpainting_mask_weight`` (A1111's setting "Inpainting conditioning mask strength", 0..1) matters
    only for inpainting checkpoints (:mod:`sdweb.engine.image_conditioning`).
    """
    with inference_context(model.pipe):
        return _Img2Img(model, params, init_images, samplers, control, on_step, preview_every,
                        extra_networks=extra_networks, mask=mask,
                        inpainting_mask_weight=inpainting_mask_weight, controlnets=controlnets).run()


def blend_before_denoising(denoise: Callable[..., torch.Tensor], init: torch.Tensor,
                           mask: torch.Tensor) -> Callable[..., torch.Tensor]:
    """Inpainting as A1111 does it for its timestep samplers (DDIM, PLMS, UniPC), around ``denoise``.

    The UNet sees the init latents, clean, outside ``mask`` (1 = repaint; in the samplers' DDPM scale,
    so ``init * sqrt(sigma^2 + 1)`` in the sampling contract's), and the noise it predicts there is
    applied to the sampler's own latents: the x0 returned is ``x0(blended) + (x - blended)``, the x0 of
    ``x`` with the blended input's noise prediction.
    """

    def blended(x: torch.Tensor, sigma: Any, **kwargs: Any) -> torch.Tensor:
        scale = (float(sigma) ** 2 + 1.0) ** 0.5
        x_in = init * scale * (1.0 - mask) + x * mask
        return denoise(x_in, sigma, **kwargs) + (x - x_in)

    return blended


def timestep_sampler_start(plan: FunctionSamplerPlan, init: torch.Tensor, noise: torch.Tensor,
                           sigma: float) -> torch.Tensor:
    """``init + noise * sigma`` as A1111's DDIM / PLMS / UniPC make it from fp16 alphas_cumprod ("Downcast
    alphas_cumprod"): ``init * sqrt(a) + noise * sqrt(1 - a)`` at the start's timestep, both roots taken
    in fp16, handed on in the sampling-function contract's scale (times ``sqrt(sigma^2 + 1)``, which the
    sampler divides out again). With float32 alphas the two are the same to float32 rounding.
    """
    table = plan.alphas_cumprod()
    alpha = table[int(plan.model_sigmas().sigma_to_t(sigma, quantize=True))].to(init.device)
    noised = init * torch.sqrt(alpha) + noise * torch.sqrt(1 - alpha)
    return noised * (sigma * sigma + 1.0) ** 0.5


class _Img2Img(_Txt2Img):
    params: Img2ImgParams

    def __init__(self, model: LoadedModelLike, params: Img2ImgParams, init_images: Sequence[Image.Image],
                 samplers: SamplerRegistry, control: JobControl, on_step: Callable[[StepProgress], None],
                 preview_every: int, *, extra_networks: Any = None,
                 init_latents: torch.Tensor | None = None, mask: Image.Image | None = None,
                 inpainting_mask_weight: float = DEFAULT_MASK_WEIGHT, controlnets: Any = None,
                 hires_pass: bool | None = None, output_type: Literal["pil", "latent"] = "pil",
                 first_pass_prompt_steps: int | None = None) -> None:
        if not isinstance(params, Img2ImgParams):
            raise TypeError("run_img2img needs Img2ImgParams (denoising_strength, resize_mode)")
        if not 0.0 <= inpainting_mask_weight <= 1.0:
            raise ValueError(f"inpainting_mask_weight must be between 0 and 1, got {inpainting_mask_weight}")
        # Passed on only when given, so the loop's own default (none) stays its business.
        options = {"extra_networks": extra_networks} if extra_networks is not None else {}
        super().__init__(model, params, samplers, control, on_step, preview_every, output_type, **options,
                         controlnets=controlnets, hires_pass=hires_pass,
                         first_pass_prompt_steps=first_pass_prompt_steps)
        self.mask_weight = float(inpainting_mask_weight)
        self.init_images = list(init_images)
        #: Steps this job runs and reports; set with the sampler in check_inputs (an estimate until then).
        self.denoise_steps = params.denoising_steps
        #: A1111's count (its sampling functions) or diffusers' (its schedulers); set in check_inputs.
        self.a1111_steps = (params.sampler_path or "A1111") != "diffusers"
        #: Given by hires fix's latent upscalers: the starting latents, no VAE encoding.
        self._init_latents: torch.Tensor | None = init_latents
        #: Inpainting: one plan per init image, and the latent mask (1 = repaint), made with the latents.
        self.mask = mask
        self.plans: list[InpaintPlan] = []
        self.latent_mask: torch.Tensor | None = None

    def control_init_picture(self) -> Any:
        # Inpainting: the picture the VAE encodes (the "only masked" crop, fitted); else the unit's own.
        return self.plans[0].init if self.plans else None

    def control_init_mask(self) -> Any:
        return self.plans[0].mask if self.plans else None

    def control_fraction(self) -> float:
        # As the extension: the fraction of the steps this img2img run makes, not of the full schedule.
        return (self.step_index - self.prompt_offset) / max(1, self.denoise_steps)

    def sampling_steps(self) -> int:
        return self.denoise_steps

    @property
    def prompt_offset(self) -> int:
        """The step number prompt editing (``[a:b:N]``) gives the run's first step.

        A1111's samplers: 0, as A1111 counts its denoiser's calls from 0 in every img2img run (against
        a prompt schedule of ``steps``). diffusers' schedulers: where the run starts in the ``steps``
        schedule.
        """
        if self.a1111_steps:
            return 0
        return max(0, self.params.steps - self.denoise_steps)

    # -- 1. inputs ---------------------------------------------------------------------------
    def check_inputs(self) -> None:
        super().check_inputs()
        params = self.params
        plan = self.sampler_plan()
        self.a1111_steps = uses_a1111_steps(params, plan)
        self.denoise_steps = img2img_run_steps(params, plan)
        schedule_steps = params.a1111_img2img_steps[0]
        if self.a1111_steps and schedule_steps > params.steps and isinstance(plan, FunctionSamplerPlan):
            try:  # img2img_fix_steps: a schedule longer than steps (DDIM stops at 1000)
                plan.sigmas(schedule_steps)
            except ValueError as exc:
                raise ValueError(f"denoising_strength: {params.sampler_name} cannot run {params.steps} "
                                 f"steps at strength {params.denoising_strength} (a schedule of "
                                 f"{schedule_steps} steps: {exc})") from exc
        batch_size = self.params.batch_size
        count = len(self.init_images) if self._init_latents is None else int(self._init_latents.shape[0])
        if count == 0:
            raise ValueError("img2img needs an init image")
        if count not in (1, batch_size):
            raise ValueError(f"{count} init images for a batch of {batch_size}: give one image, or one per "
                             "image of the batch")
        if self.mask is not None and not self.plans:
            # Pillow only; a mask that does not fit its image fails here, before any model work.
            self.plans = [self.plan_inpainting(image, self.mask) for image in self.init_images]

    # -- 4. init images -> latents -----------------------------------------------------------
    def init_latents(self) -> torch.Tensor:
        """``(batch_size, C, H/8, W/8)`` float32 latents of the init images (encoded once per job)."""
        if self._init_latents is None:
            sources = self.init_images
            if self.mask is not None:
                if not self.plans:
                    self.plans = [self.plan_inpainting(image, self.mask) for image in self.init_images]
                sources = [plan.init for plan in self.plans]
            encoded = [self.encode_image(image) for image in sources]
            latents = torch.cat(encoded)
            if latents.shape[0] == 1 and self.params.batch_size > 1:
                latents = latents.repeat(self.params.batch_size, 1, 1, 1)
            self._init_latents = latents
            if self.plans:
                self.latent_mask = self.make_latent_mask(latents)
        return self._init_latents

    def plan_inpainting(self, image: Image.Image, mask: Image.Image) -> InpaintPlan:
        params = self.params
        return prepare_inpaint(image, mask, width=params.width, height=params.height,
                               resize_mode=params.resize_mode, mask_blur=params.mask_blur,
                               mask_blur_y=params.mask_blur_y,
                               invert=params.inpainting_mask_invert, fill=params.inpainting_fill,
                               only_masked=params.inpaint_full_res, padding=params.inpaint_full_res_padding)

    def make_latent_mask(self, latents: torch.Tensor) -> torch.Tensor:
        """``(B, 1, h, w)`` float32: 1 where the model repaints, 0 where the init latents stay.

        A1111's: the blurred mask downscaled (bicubic) to the latent size, then rounded.
        """
        size = (int(latents.shape[-1]), int(latents.shape[-2]))
        rows = []
        for index in range(latents.shape[0]):
            small = self.plans[index % len(self.plans)].mask.resize(size, Image.Resampling.BICUBIC)
            rows.append(torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0).round())
        return torch.stack(rows)[:, None].to(self.device)

    def img2img_image_conditioning(self, init: torch.Tensor) -> torch.Tensor:
        """An inpainting UNet's extra input, ``(batch_size, 5, h, w)``: mask and masked-image latents."""
        params = self.params
        batch_size = int(init.shape[0])
        latent_size = (int(init.shape[-2]), int(init.shape[-1]))
        if self.plans:
            # With a mask: the prepared (filled) init image and the blurred mask, as the loop sees them.
            pixels = torch.cat([image_to_pixels(plan.init) for plan in self.plans])
            masks = torch.cat([mask_to_tensor(plan.mask) for plan in self.plans])
            conditioning = masked_image_conditioning(self.vae, pixels, masks, latent_size=latent_size,
                                                     mask_weight=self.mask_weight, device=self.device)
        elif self.mask_weight >= 1.0:
            # No mask, full strength: the whole picture is masked, so the source does not matter.
            return full_mask_conditioning(self.vae, batch_size=batch_size, height=params.height,
                                          width=params.width, device=self.device,
                                          scale_factor=int(getattr(self.pipe, "vae_scale_factor", 8)))
        else:
            pixels = self.source_pixels(init)
            conditioning = masked_image_conditioning(self.vae, pixels, torch.ones(1, 1, *pixels.shape[-2:]),
                                                     latent_size=latent_size, mask_weight=self.mask_weight,
                                                     device=self.device)
        if conditioning.shape[0] == 1 and batch_size > 1:
            conditioning = conditioning.repeat(batch_size, 1, 1, 1)
        return conditioning

    def source_pixels(self, init: torch.Tensor) -> torch.Tensor:
        """The init pictures at ``width x height`` in [-1, 1], for a conditioning image without a mask."""
        params = self.params
        if self.init_images and params.resize_mode != 3:
            fitted = [resize_image(flatten_alpha(image), params.resize_mode, params.width, params.height)
                      for image in self.init_images]
            return torch.cat([image_to_pixels(image) for image in fitted])
        # Latent upscale (resize mode 3, hires fix's latent upscalers): the pictures the latents show.
        scaled = init / self.vae.config.scaling_factor
        shift = getattr(self.vae.config, "shift_factor", None)
        if shift:
            scaled = scaled + shift
        decoded = [vae_decode(self.vae, scaled[i:i + 1]).float() for i in range(scaled.shape[0])]
        return torch.cat(decoded).clamp(-1.0, 1.0)

    def keep_unmasked(self, latents: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
        """Inpainting: outside the mask the latents are the init image's (noised as the step needs)."""
        if self.latent_mask is None:
            return latents
        return init * (1.0 - self.latent_mask) + latents * self.latent_mask

    def encode_image(self, image: Image.Image) -> torch.Tensor:
        params = self.params
        scale = int(getattr(self.pipe, "vae_scale_factor", 8))
        rgb = flatten_alpha(image)
        if params.resize_mode == 3:
            size = latent_upscale_source_size(rgb, scale)
            if max(size) > MAX_LATENT_UPSCALE_SOURCE_SIDE:
                raise ValueError(f"the init image is {rgb.width}x{rgb.height}; resize mode 3 "
                                 f"(latent upscale) encodes it at that size, at most "
                                 f"{MAX_LATENT_UPSCALE_SOURCE_SIDE} a side: "
                                 "use resize mode 0, 1 or 2 for larger images")
            fitted = rgb if rgb.size == size else rgb.resize(size, Image.Resampling.LANCZOS)
        elif rgb.size == (params.width, params.height) and self.plans:
            fitted = rgb  # fitted (and filled) by the inpainting plan
        else:
            fitted = resize_image(rgb, params.resize_mode, params.width, params.height)
        latents = encode_pixels(self.vae, image_to_pixels(fitted), self.device)
        target = (params.height // scale, params.width // scale)
        if tuple(latents.shape[-2:]) != target:
            latents = torch.nn.functional.interpolate(latents, size=target, mode="bilinear")
        return latents

    # -- 4.-7. one batch ---------------------------------------------------------------------
    def sample_batch(self, seeds: list[int], subseeds: list[int], batch_index: int) -> torch.Tensor:
        params = self.params
        init = self.init_latents()
        if self.conditioning_channels and self.image_conditioning is None:
            self.image_conditioning = self.img2img_image_conditioning(init)
        # 4. Seeds -> noise, exactly as txt2img draws it.
        resize = (params.seed_resize_from_w, params.seed_resize_from_h)
        noise = create_batch_noise(
            seeds=seeds, subseeds=subseeds, subseed_strength=params.subseed_strength,
            seed_resize_from=resize if min(resize) > 0 else None,
            width=params.width, height=params.height, rng=params.rng or "CPU", device=self.device,
            eta_noise_seed_delta=int(params.eta_noise_seed_delta or 0),
            channels=int(init.shape[1]), scale_factor=int(getattr(self.pipe, "vae_scale_factor", 8)),
        )
        if self.latent_mask is not None and params.inpainting_fill in (2, 3):
            # "latent noise" / "latent nothing": the masked area starts from the noise, or from zeros.
            fill = noise.latents if params.inpainting_fill == 2 else torch.zeros_like(init)
            init = self.keep_unmasked(fill, init)
        if self.denoise_steps == 0:
            self.check_control()
            return init.clone()  # nothing to denoise (strength 0 where no step is made)
        # 5. A fresh sampler for this batch.
        plan = self.sampler_plan()
        # 6.-7. Denoising from part-way down the schedule.
        if isinstance(plan, FunctionSamplerPlan):
            return self.run_function_sampler_from(plan, init, noise, batch_index)
        return self.run_scheduler_from(plan, init, noise, batch_index)

    def run_scheduler_from(self, plan: SchedulerPlan, init: torch.Tensor, noise: BatchNoise,
                           batch_index: int) -> torch.Tensor:
        scheduler = plan.scheduler
        # 6. The full schedule, then its last denoise_steps steps (diffusers' get_timesteps).
        plan.set_timesteps(self.params.steps, self.device)
        order = max(1, int(getattr(scheduler, "order", 1)))
        start = (self.params.steps - self.denoise_steps) * order
        timesteps = scheduler.timesteps[start:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)
        if hasattr(scheduler, "noise_sampler_seed"):
            scheduler.noise_sampler_seed = list(noise.seeds)
        step_kwargs = self.step_kwargs(scheduler, noise.generators)
        latents = scheduler.add_noise(init, noise.latents, timesteps[:1].repeat(init.shape[0]))
        reported = 0
        # 7. Denoising loop; prompt editing counts the steps of the full schedule (prompt_offset).
        for i, t in enumerate(timesteps):
            self.check_control()
            model_input = scheduler.scale_model_input(latents, t)
            self.step_index = self.prompt_offset + reported
            model_output = self.predict(model_input, t)
            step = scheduler.step(model_output, t, latents, **step_kwargs, return_dict=True)
            latents = step.prev_sample
            if self.latent_mask is not None:
                # The kept part follows the init image, noised to the level the next step expects
                # (diffusers' inpainting with a plain UNet).
                upcoming = timesteps[i + 1:i + 2]
                kept = scheduler.add_noise(init, noise.latents, upcoming) if len(upcoming) else init
                latents = self.keep_unmasked(latents, kept)
            done = min(self.denoise_steps, -(-(i + 1) // order))
            if done != reported:
                reported = done
                x0 = getattr(step, "pred_original_sample", None)
                self.report(done, batch_index, x0 if x0 is not None else latents)
        return latents

    def run_function_sampler_from(self, plan: FunctionSamplerPlan, init: torch.Tensor, noise: BatchNoise,
                                  batch_index: int) -> torch.Tensor:
        sample_fn = plan.sampler.sampling_function()
        assert sample_fn is not None
        accepted = inspect.signature(sample_fn).parameters
        timestep_sampler = plan.a1111 and bool(plan.sampler.options.get("timesteps"))
        # 6. The sigmas to sample and the level the init latents are noised to.
        extra = self.function_sampler_extras(plan, sample_fn, noise, self.denoise_steps)
        if self.a1111_steps:
            sigmas, start_sigma, full = self.a1111_sigmas(plan)
            if "noise_range" in accepted and "seeds" in extra:
                # A1111's Brownian trees span the whole schedule, not the part sampled.
                positive = full[full > 0]
                extra["noise_range"] = (float(positive.min()), float(full.max()))
        else:
            # diffusers' convention: the last denoise_steps + 1 sigmas of the steps schedule.
            steps = self.params.steps
            sigmas = plan.sigmas(steps, sdxl=self.is_sdxl)[steps - self.denoise_steps:]
            start_sigma = float(sigmas[0])
        offset = self.prompt_offset
        self.step_index = self.prompt_step = offset
        denoiser = self.function_denoiser(plan)

        if timestep_sampler and self.latent_mask is not None:
            denoiser = blend_before_denoising(denoiser, init, self.latent_mask)

        def denoise(x: torch.Tensor, sigma: Any, **kwargs: Any) -> torch.Tensor:
            self.check_control()
            self.cfg_sigma = None if timestep_sampler else float(sigma)
            denoised = denoiser(x, sigma, **kwargs)
            self.prompt_step += 1  # A1111's denoiser counts its calls (prompt editing's timeline)
            if timestep_sampler:
                return denoised
            # Inpainting: the prediction outside the mask is the init image itself (A1111's way).
            return self.keep_unmasked(denoised, init)

        def callback(i: int, x: torch.Tensor, x0: torch.Tensor) -> None:
            self.step_index = offset + i + 1
            self.report(min(i + 1, self.denoise_steps), batch_index, x0)
            self.check_control()

        if "sigma_range" in extra and len(sigmas) > 1:
            # DPM fast / adaptive integrate over the part of the schedule left (A1111: down to its
            # next-to-last sigma, the last being 0)
            positive = sigmas[sigmas > 0]
            low = float(sigmas[-2]) if self.a1111_steps else float(positive.min())
            extra["sigma_range"] = (low, float(sigmas[0]))
        if "from_image" in accepted:
            extra["from_image"] = True  # the start is init latents noised to sigmas[0], not pure noise
        start = init + noise.latents * start_sigma
        if timestep_sampler and self.a1111_steps and plan.downcast_alphas:
            start = timestep_sampler_start(plan, init, noise.latents, start_sigma)
        extra_noise = float(self.params.img2img_extra_noise or 0.0)
        if extra_noise > 0 and self.a1111_steps:
            # A1111's "Extra noise": the same noise once more (DDIM / PLMS / UniPC add it times sqrt(a)
            # to their alpha-scaled start, which is this in the sigma scale they are handed here)
            start = start + noise.latents * extra_noise
        # 7. Denoising loop (inside the sampling function).
        latents = sample_fn(denoise, start, sigmas, generator=noise.generators, callback=callback, **extra)
        if timestep_sampler:  # A1111 puts the init latents back outside the mask once they are done
            latents = self.keep_unmasked(latents, init)
        return latents

    def a1111_sigmas(self, plan: FunctionSamplerPlan) -> tuple[torch.Tensor, float, torch.Tensor]:
        """``(sigmas to sample, sigma of the start, the whole schedule)`` as A1111's ``sample_img2img``.

        k-diffusion samplers: the last ``t_enc + 2`` sigmas of the schedule, starting at the first of
        them. DDIM / PLMS / UniPC: timestep ``t_enc`` of their timesteps (counted from the smallest), the
        level the start is noised to, then the ``t_enc`` below it that they sample on
        (``from_image``: ``sdweb.engine.samplers.kdiffusion``).
        """
        schedule_steps, t_enc = self.params.a1111_img2img_steps
        full = plan.sigmas(schedule_steps, sdxl=self.is_sdxl)
        if plan.a1111 and plan.sampler.options.get("timesteps"):
            levels = len(full) - 1  # the timesteps, largest first, then the final 0
            tail = full[levels - 1 - t_enc:]
        else:
            tail = full[schedule_steps - t_enc - 1:]
        return tail, float(tail[0]), full

    # -- 8. decode (and paste inpainted images back) ------------------------------------------
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        images = super().decode(latents)
        if not self.plans:
            return images
        return [paste_back(image, self.plans[index % len(self.plans)]) for index, image in enumerate(images)]

    # -- progress ----------------------------------------------------------------------------
    def report(self, step: int, batch_index: int, latents: torch.Tensor) -> None:
        # As the txt2img loop, counting the steps this job runs.
        self.reached = latents
        preview = None
        if self.preview_every and step % self.preview_every == 0 and step < self.denoise_steps:
            preview = live_preview(latents, sdxl=self.is_sdxl, vae=self.vae)  # the job's method
        self.on_step(StepProgress(step=step, total_steps=self.denoise_steps, batch_index=batch_index,
                                  batch_count=self.params.n_iter, preview=preview))

"""The txt2img denoising loop: one request in, images (and the facts for their infotext) out.

This module owns the loop of the data path (DESIGN.md steps 4-6): read the prompt grammar and encode
every text once, then for each of the ``n_iter`` batches draw the seeds' noise, build a fresh sampler,
run the UNet step by step with classifier-free guidance, report progress (with a cheap preview every N
steps), honour interrupt and skip, and decode the finished latents to PIL images.

A1111's prompt grammar, the conditioning of each model call and the guided prediction are
:mod:`sdweb.engine.guidance`'s (a mixin of the loop); emphasis and long prompts are the encoder's
(``sdweb.engine.encode``). Extra-network tags (``<lora:...>``) are taken out of the text and their LoRAs
applied for the job, embeddings used by name (``sdweb.engine.extra_networks``); without libraries a tag
is an error rather than text fed to CLIP.

It drives the pipeline's components directly (``unet``, ``vae``, text encoders) rather than calling the
pipeline, because function samplers, per-step interrupt/skip and previews need the loop; the scheduler
path does exactly what diffusers' ``StableDiffusionPipeline.__call__`` does (same noise, same order of
operations), so at fp32 the images equal diffusers' own (tests/engine/test_generate.py proves it).
Differences on purpose: latents stay float32 between steps whatever the model's dtype (the UNet gets
them cast), and each image is decoded on its own (memory, and batch-size independence).

Nothing shared is mutated: each batch gets its own scheduler from ``from_config``. Tiling switches the
conv layers to circular padding for the duration of the job and restores them (the model is held
exclusively by the job through ``ModelCache.use``).

Performance: no per-step host syncs (sigmas and timesteps are read on the CPU, control flags are
Python events), previews are made only every ``preview_every`` steps, everything runs under
``torch.inference_mode`` (``no_grad`` under ``--lowvram``: ``sdweb.engine.accelerator.inference_context``).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, Protocol

import numpy as np
import torch
from PIL import Image

from sdweb.engine.accelerator import execution_device, inference_context, offload_module, vae_decode
from sdweb.engine.encode import (
    is_sdxl_pipeline,
)
from sdweb.engine.extra_networks.job import ExtraNetworks, JobNetworks, job_extra_networks
from sdweb.engine.guidance import PromptGuidance, prompt_schedule_steps
from sdweb.engine.image_conditioning import (
    DEFAULT_MASK_WEIGHT,
    conditioning_channels,
    full_mask_conditioning,
    latent_channels,
)
from sdweb.engine.previews import live_preview
from sdweb.engine.samplers.functions import DiffusersDenoiser
from sdweb.engine.samplers.kdiffusion import DiscreteDenoiser
from sdweb.engine.samplers.registry import FunctionSamplerPlan, SamplerRegistry, SchedulerPlan
from sdweb.engine.samplers.schedules import ScheduleTuning
from sdweb.engine.seeds import BatchNoise, create_batch_noise
from sdweb.params import (
    A1111_COMPAT_INFOTEXT,
    SCHEDULE_SETTINGS,
    SIGMA_DEFAULTS,
    UNIPC_SETTINGS,
    EngineRun,
    GeneratedImage,
    GenerationParams,
    JobControl,
    StepProgress,
    sigma_value,
)

logger = logging.getLogger(__name__)
#: The infotext key of A1111's "Old prompt editing timelines" (use_old_scheduling).
OLD_TIMELINES_KEY = A1111_COMPAT_INFOTEXT["use_old_scheduling"]

#: A1111's "Approx cheap" latent -> RGB factors (rows: latent channels, columns: R, G, B).
SD_PREVIEW_FACTORS = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)
SDXL_PREVIEW_FACTORS = (
    (0.3448, 0.4168, 0.4395),
    (-0.1953, -0.0290, 0.0250),
    (0.1074, 0.0886, -0.0163),
    (-0.3730, -0.2499, -0.2088),
)


class LoadedModelLike(Protocol):
    """What the loop needs of a loaded model (``sdweb.engine.models.loader.LoadedModel``)."""

    pipe: Any
    device: Any
    dtype: Any
    info: Any
    vae_name: str | None
    vae_hash: str | None

    @property
    def family(self) -> str: ...


class _StopBatch(Exception):
    """Raised inside the loop when interrupt or skip was asked for."""


def run_txt2img(
    model: LoadedModelLike,
    params: GenerationParams,
    *,
    samplers: SamplerRegistry,
    control: JobControl,
    on_step: Callable[[StepProgress], None],
    preview_every: int = 0,
    output_type: Literal["pil", "latent"] = "pil",
    extra_networks: ExtraNetworks | None = None,
    controlnets: Any = None,
    hires_pass: bool | None = None,
) -> EngineRun:
    """Make ``params.batch_size * params.n_iter`` images; see the module docstring.

    ``params`` must be resolved: concrete seed and subseed (not -1), ``clip_skip`` and ``rng`` set.
    Images come back in seed order (``seed + i``); an interrupted run returns the images of the batches
    finished before it, with ``interrupted=True``. A skipped batch is left out and the run goes on.
    ``output_type="latent"`` skips the VAE: each ``GeneratedImage.image`` is then the image's final
    ``(1, C, h, w)`` float32 latents (as diffusers' ``output_type="latent"``).
    ``controlnets``: the job's ControlNet units (:class:`sdweb.engine.control.controlnet.ControlNetJob`);
    ``hires_pass``: False in hires fix's first pass (units' ``hr_option``), None outside hires fix.
    """
    with inference_context(model.pipe):  # inference mode; no_grad under --lowvram
        return _Txt2Img(model, params, samplers, control, on_step, preview_every, output_type,
                        extra_networks=extra_networks, controlnets=controlnets, hires_pass=hires_pass).run()


def schedule_tuning(params: GenerationParams) -> ScheduleTuning:
    """A1111's schedule settings of a resolved request (None: A1111's defaults)."""
    values = {name: getattr(params, name) for name in SCHEDULE_SETTINGS}
    return ScheduleTuning(
        sigma_min=float(values["sigma_min"] or 0.0), sigma_max=float(values["sigma_max"] or 0.0),
        rho=float(values["rho"] or 0.0),
        beta_alpha=float(values["beta_dist_alpha"] or SCHEDULE_SETTINGS["beta_dist_alpha"][1]),
        beta_beta=float(values["beta_dist_beta"] or SCHEDULE_SETTINGS["beta_dist_beta"][1]),
        always_discard_penultimate=bool(params.always_discard_next_to_last_sigma))


class _Txt2Img(PromptGuidance):
    def __init__(self, model: LoadedModelLike, params: GenerationParams, samplers: SamplerRegistry,
                 control: JobControl, on_step: Callable[[StepProgress], None], preview_every: int,
                 output_type: Literal["pil", "latent"] = "pil", *,
                 extra_networks: ExtraNetworks | None = None, controlnets: Any = None,
                 hires_pass: bool | None = None, first_pass_prompt_steps: int | None = None) -> None:
        if output_type not in ("pil", "latent"):
            raise ValueError(f"output_type must be 'pil' or 'latent', got {output_type!r}")
        self.output_type = output_type
        self.model = model
        self.params = params
        self.samplers = samplers
        self.control = control
        self.on_step = on_step
        self.preview_every = max(0, int(preview_every))
        self.pipe = model.pipe
        self.unet = model.pipe.unet
        self.vae = model.pipe.vae
        self.device = execution_device(model.pipe, default=model.device)  # the offload hooks' device
        self.is_sdxl = is_sdxl_pipeline(model.pipe)
        # LoRA tags and embeddings (sdweb.engine.extra_networks); set for the job by run().
        self.extra_networks = extra_networks
        self.networks: JobNetworks | None = None
        #: Inpainting UNets (sdweb.engine.image_conditioning): the mask and masked-image latents put
        #: beside the latents at every UNet call, ``(batch_size, 5, h, w)``; None for plain UNets.
        self.image_conditioning: torch.Tensor | None = None
        self.conditioning_channels = 0
        #: A1111's "Inpainting conditioning mask strength"; txt2img only writes it in the infotext.
        self.mask_weight = DEFAULT_MASK_WEIGHT
        #: The latents (the denoised prediction where the sampler gives one) of the last reported step.
        self.reached: torch.Tensor | None = None
        #: ControlNet units (sdweb.engine.control.controlnet): the job's, and this pass's fitted stack.
        self.controlnets = controlnets
        self.hires_pass = hires_pass
        self.control_stack: Any = None
        self.ip_stack: Any = None
        #: Hires fix's second pass: the first pass's prompt-editing timeline (A1111's ``firstpass_steps``),
        #: which ``[a:b:N]`` counts on from; None outside it.
        self.first_pass_prompt_steps = first_pass_prompt_steps
        self.old_timelines_acted = False  # set by encode_prompts
        #: The prompt-editing timeline: its length, and whether it counts model calls (A1111's samplers)
        #: or steps (diffusers' schedulers); set with the sampler in check_inputs.
        self.prompt_steps = params.steps
        self.counts_model_calls = False
        #: Where the run is on that timeline (model calls made, or steps).
        self.prompt_step = 0
        #: Model calls per step on that timeline (2 for A1111's second-order samplers), and the noise level
        #: of the model call being made, for A1111's CFG skipping (None: compare the UNet's timestep, as
        #: A1111's DDIM / PLMS / UniPC do).
        self.calls_per_step = 1
        self.cfg_sigma: float | None = None

    def run(self) -> EngineRun:
        # 1. Check inputs (before any model work, so a bad request costs nothing).
        self.check_inputs()
        if self.controlnets is not None:
            width, height = self.pass_size()
            self.control_stack = self.controlnets.for_pass(width, height, device=self.device,
                                                           dtype=self.unet.dtype, hires=self.hires_pass,
                                                           init_picture=self.control_init_picture(),
                                                           init_mask=self.control_init_mask())
            ip_stack = self.controlnets.ip_stack(hires=self.hires_pass)
            if ip_stack is not None:
                # IP-Adapter attention for this pass only; the UNet's own processors come back after.
                with ip_stack.installed(self.unet) as self.ip_stack:
                    try:
                        return self._run_batches()
                    finally:
                        self.ip_stack = None
        return self._run_batches()

    def _run_batches(self) -> EngineRun:
        params = self.params
        images: list[GeneratedImage] = []
        interrupted = False
        with (circular_padding(self.unet, self.vae, enabled=params.tiling),
              job_extra_networks(self.pipe, params.prompt, self.extra_networks) as self.networks):
            # 2. Encode the prompts, once for the whole job.
            self.encode_prompts()
            for batch_index in range(params.n_iter):
                if self.control.interrupted:
                    interrupted = True
                    break
                self.control.clear_skip()  # a skip asked for between batches is not for the next one
                first = params.seed + batch_index * params.batch_size
                seeds = [first + i for i in range(params.batch_size)]
                subseeds = [params.subseed + batch_index * params.batch_size + i
                            for i in range(params.batch_size)]
                self.reached = None
                try:
                    latents = self.sample_batch(seeds, subseeds, batch_index)
                except _StopBatch:
                    if self.control.interrupted:
                        interrupted = True
                        # As A1111: the batch being made is decoded from the latents it had reached.
                        reached = self.reached_images(seeds, subseeds)
                        images.extend(reached)
                        self.control.images_done(self.engine_run(reached, interrupted=True))
                        break
                    logger.info("batch %d/%d skipped", batch_index + 1, params.n_iter)
                    self.control.clear_skip()
                    continue
                # 8. Decode.
                outputs = self.decode(latents) if self.output_type == "pil" else list(latents.split(1))
                batch = [GeneratedImage(image=pixels, seed=seeds[i], subseed=subseeds[i],
                                        prompt=params.prompt, negative_prompt=params.negative_prompt,
                                        extra=self.image_extra())
                         for i, pixels in enumerate(outputs)]
                images.extend(batch)
                # 9. Hand the batch on now (the service saves it before the next batch starts).
                self.control.images_done(self.engine_run(batch))
        return self.engine_run(images, interrupted=interrupted)

    def engine_run(self, images: list[GeneratedImage], *, interrupted: bool = False) -> EngineRun:
        """``images`` with the model facts their infotext needs."""
        info = getattr(self.model, "info", None)
        return EngineRun(
            images=images,
            model_name=getattr(info, "model_name", None),
            model_hash=getattr(info, "shorthash", None),
            vae_name=getattr(self.model, "vae_name", None),
            vae_hash=getattr(self.model, "vae_hash", None),
            clip_skip=int(self.params.clip_skip or 1),
            interrupted=interrupted,
        )

    def reached_images(self, seeds: list[int], subseeds: list[int]) -> list[GeneratedImage]:
        """The images of an interrupted batch, from its last reported (denoised) latents; none before
        its first step.
        """
        if self.reached is None:
            return []
        latents = self.reached.float()
        outputs = self.decode(latents) if self.output_type == "pil" else list(latents.split(1))
        return [GeneratedImage(image=pixels, seed=seeds[i], subseed=subseeds[i], prompt=self.params.prompt,
                               negative_prompt=self.params.negative_prompt, extra=self.image_extra())
                for i, pixels in enumerate(outputs)]

    def image_extra(self) -> dict[str, Any]:
        """The infotext pairs each image of the job adds (LoRA hashes; inpainting models' mask weight)."""
        extra = dict(self.networks.infotext()) if self.networks else {}
        if self.conditioning_channels:
            # A1111 writes it whenever an inpainting model's image conditioning was used.
            extra["Conditional mask weight"] = self.mask_weight
        if self.controlnets is not None:
            extra.update(self.controlnets.infotext())
        extra.update(getattr(self, "emphasis_extra", {}))
        if self.params.eta_noise_seed_delta and not self.ensd_acted():
            extra["ENSD"] = None  # A1111 writes it only for samplers whose noise it changes
        if self.params.use_old_scheduling:  # written only where the old timelines changed the schedules
            extra[OLD_TIMELINES_KEY] = True if self.old_timelines_acted else None
        return extra

    def ensd_acted(self) -> bool:
        """A1111's rule for writing ENSD: the sampler draws ancestral noise and eta is not 0."""
        try:
            spec = self.samplers.get(self.params.sampler_name)
        except ValueError:
            return False
        default_eta = 0.0 if spec.options.get("default_eta_is_0") else 1.0
        eta = default_eta if self.params.eta is None else self.params.eta
        return bool(spec.options.get("uses_ensd")) and eta != 0

    def pass_size(self) -> tuple[int, int]:
        """The pixel size this pass's latents decode to (ControlNet maps are fitted to it)."""
        return self.params.width, self.params.height

    def control_init_picture(self) -> Any:
        """What the latents of this pass show, for ControlNet units without a picture (img2img's)."""
        return None

    def control_init_mask(self) -> Any:
        """The inpainting mask of this pass (L, 255 = repaint), for inpaint ControlNet units; None."""
        return None

    def control_fraction(self) -> float:
        """How far the step being computed is through this pass's steps (ControlNet guidance windows)."""
        return self.step_index / max(1, self.params.steps)

    def sampler_plan(self) -> FunctionSamplerPlan | SchedulerPlan:
        """A fresh sampler plan for this job: its sampler, schedule type, sampler path and A1111's
        "Downcast alphas_cumprod" (``use_downcasted_alpha_bar``, honoured by A1111's samplers only) and
        "Noise schedule for sampling" (``sd_noise_schedule``).
        """
        params = self.params
        return self.samplers.build(params.sampler_name, params.scheduler, self.pipe.scheduler.config,
                                   path=params.sampler_path or "A1111",
                                   downcast_alphas=bool(params.use_downcasted_alpha_bar),
                                   tuning=schedule_tuning(params),
                                   zero_terminal_snr=params.sd_noise_schedule == "Zero Terminal SNR")

    # -- 1. inputs ---------------------------------------------------------------------------
    def check_inputs(self) -> None:
        params = self.params
        if params.seed < 0 or params.subseed < 0:
            raise ValueError("seed and subseed must be concrete (resolve -1 before calling the engine)")
        if params.rng not in ("CPU", "GPU", "NV"):
            raise ValueError(f"rng must be resolved to 'CPU', 'GPU' or 'NV', got {params.rng!r}")
        if params.clip_skip is None:
            raise ValueError("clip_skip must be resolved (the setting CLIP_stop_at_last_layers)")
        # 0 for plain UNets, 5 for inpainting ones; other layouts (depth, pix2pix) are refused here.
        self.conditioning_channels = conditioning_channels(self.pipe)
        # Builds a throw-away plan: unknown names and impossible schedules fail here, before encoding.
        plan = self.sampler_plan()
        self.prompt_steps = prompt_schedule_steps(plan, params.steps)
        self.calls_per_step = prompt_schedule_steps(plan, 1)
        self.counts_model_calls = isinstance(plan, FunctionSamplerPlan)
        if isinstance(plan, FunctionSamplerPlan) and plan.zero_terminal_snr and plan.downcast_alphas:
            # fp16 cannot hold 1 / 4.9e-8: the largest sigma is infinite, and A1111 stops on NaNs.
            raise ValueError("sd_noise_schedule: 'Zero Terminal SNR' cannot be used with "
                             "use_downcasted_alpha_bar ('Downcast alphas_cumprod'): in fp16 its largest "
                             "sigma is infinite (A1111 makes NaNs); turn one of them off")
        try:  # a step count the sampler cannot make (DDIM above the 1000 trained steps)
            if isinstance(plan, SchedulerPlan):
                plan.set_timesteps(params.steps, "cpu")
            elif plan.a1111 and plan.sampler.options.get("timesteps"):
                plan.sigmas(params.steps)
        except ValueError as exc:
            raise ValueError(f"steps: {params.sampler_name} cannot sample {params.steps} steps "
                             f"({exc})") from exc

    @property
    def prompt_offset(self) -> int:
        """The step number the run's first step has on the prompt-editing timeline (0 in txt2img)."""
        return 0

    def sampling_steps(self) -> int:
        """The steps this pass samples (A1111's ``launch_sampling`` count)."""
        return self.params.steps

    # -- 4.-7. one batch ---------------------------------------------------------------------
    def sample_batch(self, seeds: list[int], subseeds: list[int], batch_index: int) -> torch.Tensor:
        params = self.params
        # 4. Seeds -> initial noise and per-image generators.
        resize = (params.seed_resize_from_w, params.seed_resize_from_h)
        noise = create_batch_noise(
            seeds=seeds, subseeds=subseeds, subseed_strength=params.subseed_strength,
            seed_resize_from=resize if min(resize) > 0 else None,
            width=params.width, height=params.height, rng=params.rng or "CPU", device=self.device,
            eta_noise_seed_delta=int(params.eta_noise_seed_delta or 0),
            channels=latent_channels(self.pipe),
            scale_factor=int(getattr(self.pipe, "vae_scale_factor", 8)),
        )
        if self.conditioning_channels and self.image_conditioning is None:
            self.image_conditioning = self.txt2img_image_conditioning()
        # 5. A fresh sampler for this batch.
        plan = self.sampler_plan()
        # 6.-7. Denoising loop.
        if isinstance(plan, FunctionSamplerPlan):
            return self.run_function_sampler(plan, noise, batch_index)
        return self.run_scheduler(plan, noise, batch_index)

    def txt2img_image_conditioning(self) -> torch.Tensor:
        """An inpainting UNet's extra input for txt2img (A1111's): all masked, the masked image grey."""
        params = self.params
        return full_mask_conditioning(self.vae, batch_size=params.batch_size, height=params.height,
                                      width=params.width, device=self.device,
                                      scale_factor=int(getattr(self.pipe, "vae_scale_factor", 8)))

    def run_scheduler(self, plan: SchedulerPlan, noise: BatchNoise, batch_index: int) -> torch.Tensor:
        scheduler = plan.scheduler
        # 6. Timesteps and step arguments.
        plan.set_timesteps(self.params.steps, self.device)
        timesteps = scheduler.timesteps
        if hasattr(scheduler, "noise_sampler_seed"):
            # Brownian-tree samplers (DPM++ SDE): one tree per image, seeded like the image.
            scheduler.noise_sampler_seed = list(noise.seeds)
        step_kwargs = self.step_kwargs(scheduler, noise.generators)
        latents = noise.latents * scheduler.init_noise_sigma
        order = max(1, int(getattr(scheduler, "order", 1)))
        reported = 0
        # 7. Denoising loop.
        for i, t in enumerate(timesteps):
            self.check_control()
            model_input = scheduler.scale_model_input(latents, t)
            self.step_index = reported
            model_output = self.predict(model_input, t)
            step = scheduler.step(model_output, t, latents, **step_kwargs, return_dict=True)
            latents = step.prev_sample
            done = min(self.params.steps, -(-(i + 1) // order))
            if done != reported:
                reported = done
                x0 = getattr(step, "pred_original_sample", None)
                self.report(done, batch_index, x0 if x0 is not None else latents)
        return latents

    def step_kwargs(self, scheduler: Any, generators: list[torch.Generator]) -> dict[str, Any]:
        accepted = set(inspect.signature(scheduler.step).parameters)
        kwargs: dict[str, Any] = {}
        if "generator" in accepted:
            # Ancestral / SDE noise: image i keeps drawing from its own generator (diffusers' list form).
            kwargs["generator"] = generators
        if "eta" in accepted:
            kwargs["eta"] = 0.0 if self.params.eta is None else float(self.params.eta)
        for name in SIGMA_DEFAULTS:  # A1111's sampler parameters, where diffusers' step takes them (Euler)
            if name in accepted:
                kwargs[name] = sigma_value(self.params, name)
        return kwargs

    def run_function_sampler(self, plan: FunctionSamplerPlan, noise: BatchNoise,
                             batch_index: int) -> torch.Tensor:
        sample_fn = plan.sampler.sampling_function()
        assert sample_fn is not None
        # 6. Sigmas, the denoiser, the callback.
        sigmas = plan.sigmas(self.params.steps, sdxl=self.is_sdxl)
        self.step_index = self.prompt_step = 0
        denoiser = self.function_denoiser(plan)
        timestep_sampler = plan.a1111 and bool(plan.sampler.options.get("timesteps"))

        def denoise(x: torch.Tensor, sigma: Any, **kwargs: Any) -> torch.Tensor:
            self.check_control()
            self.cfg_sigma = None if timestep_sampler else float(sigma)
            denoised = denoiser(x, sigma, **kwargs)  # kwargs: an explicit ``timestep`` (UniPC)
            self.prompt_step += 1  # A1111's denoiser counts its calls (prompt editing's timeline)
            return denoised

        def callback(i: int, x: torch.Tensor, x0: torch.Tensor) -> None:
            self.step_index = i + 1
            self.report(min(i + 1, self.params.steps), batch_index, x0)
            self.check_control()

        extra = self.function_sampler_extras(plan, sample_fn, noise, self.params.steps)
        # 7. Denoising loop (inside the sampling function).
        start = float(sigmas[0])
        if self.params.sgm_noise_multiplier and plan.a1111 and not plan.sampler.options.get("timesteps"):
            # A1111's "SGM noise multiplier" (its k-diffusion samplers in txt2img), in float32 as A1111's
            start = float(torch.sqrt(1.0 + sigmas[0].float() ** 2.0))
        return sample_fn(denoise, noise.latents * start, sigmas,
                         generator=noise.generators, callback=callback, **extra)

    def function_denoiser(self, plan: FunctionSamplerPlan) -> Callable[..., torch.Tensor]:
        """A1111's model wrapper for its own samplers (quantized timesteps), sdweb's for plugin ones."""
        if plan.a1111:
            prediction = str(dict(plan.base_config).get("prediction_type", "epsilon"))
            return DiscreteDenoiser(self.predict, plan.model_sigmas(), prediction_type=prediction,
                                    device=self.device)
        return DiffusersDenoiser(self.predict, base_config=plan.base_config, device=self.device)

    def function_sampler_extras(self, plan: FunctionSamplerPlan, sample_fn: Callable[..., Any],
                                noise: BatchNoise, steps: int) -> dict[str, Any]:
        """The optional keywords of the sampling-function contract that this function accepts."""
        accepted = inspect.signature(sample_fn).parameters
        extra: dict[str, Any] = {}
        if self.params.eta is not None and "eta" in accepted:
            extra["eta"] = float(self.params.eta)
        if "seeds" in accepted:
            # Brownian trees seeded with the images' seeds, as A1111's create_noise_sampler
            extra["seeds"] = list(noise.seeds)
        if "sigma_range" in accepted and plan.a1111:
            model = plan.model_sigmas()
            extra["sigma_range"] = (model.sigma_min, model.sigma_max)
        if "steps" in accepted:
            extra["steps"] = int(steps)
        if "alphas_cumprod" in accepted and plan.a1111:  # DDIM, PLMS, UniPC read the model's table
            extra["alphas_cumprod"] = plan.alphas_cumprod()
        if plan.a1111:
            # A1111's sampler parameters (s_churn, s_tmin, s_tmax, s_noise), to the functions that take them.
            for name in SIGMA_DEFAULTS:
                if name in accepted:
                    extra[name] = sigma_value(self.params, name)
        if plan.a1111 and plan.sampler.options.get("uni_pc"):
            # A1111's UniPC settings, by their option names (uni_pc_order -> order ...).
            for key in UNIPC_SETTINGS:
                name = key.removeprefix("uni_pc_")
                value = getattr(self.params, key, None)
                if value is not None and name in accepted:
                    extra[name] = value
        return extra

    # -- progress and control ----------------------------------------------------------------
    def check_control(self) -> None:
        if self.control.stop_requested:
            raise _StopBatch

    def report(self, step: int, batch_index: int, latents: torch.Tensor) -> None:
        self.reached = latents
        preview = None
        if self.preview_every and step % self.preview_every == 0 and step < self.params.steps:
            preview = live_preview(latents, sdxl=self.is_sdxl, vae=self.vae)  # the job's method
        self.on_step(StepProgress(step=step, total_steps=self.params.steps, batch_index=batch_index,
                                  batch_count=self.params.n_iter, preview=preview))

    # -- 8. decode ---------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        config = self.vae.config
        scaled = latents / config.scaling_factor
        shift = getattr(config, "shift_factor", None)
        if shift:
            scaled = scaled + shift
        images = []
        for index in range(scaled.shape[0]):
            started = time.perf_counter()
            decoded = vae_decode(self.vae, scaled[index:index + 1])  # NaN-checked, fp32 retry
            images.append(to_pil(decoded[0]))
            logger.debug("decoded image %d in %.2fs", index, time.perf_counter() - started)
        offload_module(self.vae)  # --medvram: the next batch's UNet runs alone on the device
        return images


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def to_pil(decoded: torch.Tensor) -> Image.Image:
    """A decoded ``(3, H, W)`` image in [-1, 1] as an 8-bit RGB PIL image (diffusers' rounding)."""
    pixels = (decoded.float() / 2 + 0.5).clamp(0, 1)
    array = (pixels.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)


def preview_image(latents: torch.Tensor, *, sdxl: bool) -> Image.Image:
    """A1111's "Approx cheap" preview: a fixed linear map of the 4 latent channels to RGB, side by side.

    One pixel per latent (1/8 of the image size), no VAE: microseconds, fine every step.
    """
    factors = torch.tensor(SDXL_PREVIEW_FACTORS if sdxl else SD_PREVIEW_FACTORS, dtype=torch.float32)
    sample = latents[:, : factors.shape[0]].float().cpu()
    rgb = torch.einsum("bchw,cr->brhw", sample, factors)
    rgb = ((rgb + 1.0) / 2.0).clamp(0, 1)
    strip = torch.cat(list(rgb), dim=2)  # batch side by side
    array = (strip.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)


@contextmanager
def circular_padding(*modules: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Seamless tiling: give every padded conv layer circular padding for the block, then restore it."""
    if not enabled:
        yield
        return
    changed: list[tuple[torch.nn.Conv2d, str]] = []
    try:
        for module in modules:
            for layer in module.modules():
                if isinstance(layer, torch.nn.Conv2d) and any(p > 0 for p in _padding(layer)):
                    changed.append((layer, layer.padding_mode))
                    layer.padding_mode = "circular"
        yield
    finally:
        for layer, mode in changed:
            layer.padding_mode = mode


def _padding(layer: torch.nn.Conv2d) -> tuple[int, ...]:
    padding = layer.padding
    if isinstance(padding, str):
        return (1,) if padding == "same" else (0,)
    return tuple(int(p) for p in padding)

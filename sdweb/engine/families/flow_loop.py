"""The flow-matching denoising loop (SD 3.x, Flux): txt2img, img2img and inpainting.

The same job shape as the UNet loop (:mod:`sdweb.engine.generate`): A1111's prompt grammar (AND parts
stacked in one transformer batch and combined with their weights, prompt editing / alternation switching
the conditioning between steps), seeds and variation seeds (:mod:`sdweb.engine.seeds`, 16-channel noise),
``n_iter`` batches, interrupt (keep the finished batches) and skip (drop the batch), progress with a
live preview every N steps (the job's method: TAESD3 / TAEF1, the VAE, else a cheap latent map), and one VAE
decode per image. What differs is the model:

* the sampler is a flow scheduler (:mod:`sdweb.engine.families.flow_samplers`), shifted for the family;
* the model predicts a velocity; classifier-free guidance is the usual ``uncond + scale * (cond - uncond)``
  (SD 3.x, and Flux when CFG scale > 1), Flux dev also takes the distilled guidance as an input;
* the family (:class:`FlowFamily`) encodes the texts and makes the transformer call.

img2img starts ``int(steps * strength)`` steps from the end of the full schedule, from
``sigma * noise + (1 - sigma) * init`` (the flow-matching forward process: diffusers' ``scale_noise``);
inpainting resets the unmasked latents to the init image noised to the next step's sigma after every step
and pastes the decoded image back through the blurred mask (:mod:`sdweb.images.mask`), as the UNet loop.

Latents stay float32 between steps; the transformer gets them cast. Everything runs under
``torch.inference_mode``; no per-step host syncs beyond reading the scheduler's CPU timesteps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import PurePath
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from sdweb.engine.accelerator import (
    execution_device,
    inference_context,
    offload_module,
    vae_decode,
    vae_encode,
)
from sdweb.engine.encode import ORIGINAL, emphasis_infotext, schedule_texts
from sdweb.engine.families.base import FamilyJob
from sdweb.engine.families.flow_encode import FlowCond, FlowTextEncoder
from sdweb.engine.families.flow_samplers import FlowPlan, build_flow_plan
from sdweb.engine.guidance import combine_guided
from sdweb.engine.previews import live_preview
from sdweb.engine.seeds import create_batch_noise
from sdweb.params import (
    A1111_COMPAT_INFOTEXT,
    SCHEDULE_SETTINGS,
    SIGMA_INFOTEXT,
    EngineRun,
    GeneratedImage,
    GenerationParams,
    Img2ImgParams,
    StepProgress,
)
from sdweb.prompts.parser import (
    get_learned_conditioning_prompt_schedules,
    prompt_for_step,
    split_composable_prompt,
    strip_extra_networks,
)

logger = logging.getLogger(__name__)
#: Infotext keys of A1111's UNet-sampler settings that the flow-matching loop does not apply: its
#: compatibility settings other than the prompt-editing timelines, the schedule settings, Extra noise and
#: the k-diffusion sampler parameters.
FLOW_UNUSED_KEYS: tuple[str, ...] = (
    *(key for name, key in A1111_COMPAT_INFOTEXT.items() if name != "use_old_scheduling"),
    *(key for key, _default in SCHEDULE_SETTINGS.values()),
    *SIGMA_INFOTEXT.values(),
)


class _StopBatch(Exception):
    """Raised inside the loop when interrupt or skip was asked for."""


@dataclass
class FlowGuidance:
    """One step's conditioning: rows [negative, AND part 1..K] (only the parts without CFG)."""

    hidden: torch.Tensor  # (rows * B, L, D)
    pooled: torch.Tensor  # (rows * B, P)
    do_cfg: bool
    scale: float
    weights: tuple[float, ...]
    rows: int


class FlowFamily:
    """What the loop needs from SD 3.x or Flux; subclasses fill in the model-specific parts."""

    name: str = "flow"
    config_family: str = ""
    #: 16 rows (latent channels) of R, G, B weights for the cheap preview, and a bias.
    preview_factors: tuple[tuple[float, float, float], ...] = ()
    preview_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def max_sequence_length(self, pipe: Any) -> int:
        raise NotImplementedError

    def size_multiple(self, pipe: Any) -> int:
        """Image sizes must be multiples of this (VAE factor x patch size)."""
        return int(getattr(pipe, "vae_scale_factor", 8)) * 2

    def image_tokens(self, pipe: Any, latent_height: int, latent_width: int) -> int:
        return (latent_height // 2) * (latent_width // 2)

    def uses_distilled_guidance(self, pipe: Any) -> bool:
        return False

    def velocity(
        self,
        pipe: Any,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        guidance: FlowGuidance,
        params: GenerationParams,
    ) -> torch.Tensor:
        """The transformer's output for ``latents`` ``(rows * B, C, h, w)`` at ``timestep`` (0..1000)."""
        raise NotImplementedError


def run_flow_txt2img(
    model: Any,
    params: GenerationParams,
    job: FamilyJob,
    family: FlowFamily,
    *,
    output_type: Literal["pil", "latent"] = "pil",
) -> EngineRun:
    with inference_context(model.pipe):  # inference mode; no_grad under --lowvram
        return FlowTxt2Img(model, params, job, family, output_type=output_type).run()


def run_flow_img2img(
    model: Any,
    params: Img2ImgParams,
    init_images: Sequence[Image.Image],
    job: FamilyJob,
    family: FlowFamily,
    *,
    mask: Image.Image | None = None,
    init_latents: torch.Tensor | None = None,
) -> EngineRun:
    with inference_context(model.pipe):
        return FlowImg2Img(
            model, params, job, family, init_images=init_images, mask=mask, init_latents=init_latents
        ).run()


class FlowTxt2Img:
    def __init__(
        self,
        model: Any,
        params: GenerationParams,
        job: FamilyJob,
        family: FlowFamily,
        *,
        output_type: Literal["pil", "latent"] = "pil",
    ) -> None:
        self.model = model
        self.params = params
        self.job = job
        self.family = family
        self.output_type = output_type
        self.pipe = model.pipe
        self.transformer = model.pipe.transformer
        self.vae = model.pipe.vae
        self.device = execution_device(model.pipe, default=model.device)  # the offload hooks' device
        self.networks: Any = None
        self.scale = int(getattr(self.pipe, "vae_scale_factor", 8))
        self.step_index = 0
        #: A1111's (Forge's) CFG skipping: this pass's model call, how many it makes, and the call's sigma.
        self.cfg_call, self.cfg_calls, self.cfg_sigma = 0, 1, 1.0

    # -- the job -------------------------------------------------------------------------------
    def run(self) -> EngineRun:
        from sdweb.engine.extra_networks.job import job_extra_networks

        params = self.params
        # 1. Check inputs before any model work.
        self.check_inputs()
        images: list[GeneratedImage] = []
        interrupted = False
        control = self.job.control
        with job_extra_networks(self.pipe, params.prompt, self.job.extra_networks) as self.networks:
            # 2. Encode every text of the job once.
            self.encode_prompts()
            for batch_index in range(params.n_iter):
                if control.interrupted:
                    interrupted = True
                    break
                control.clear_skip()
                first = params.seed + batch_index * params.batch_size
                seeds = [first + i for i in range(params.batch_size)]
                subseeds = [
                    params.subseed + batch_index * params.batch_size + i for i in range(params.batch_size)
                ]
                try:
                    latents = self.sample_batch(seeds, subseeds, batch_index)
                except _StopBatch:
                    if control.interrupted:
                        interrupted = True
                        break
                    logger.info("batch %d/%d skipped", batch_index + 1, params.n_iter)
                    control.clear_skip()
                    continue
                # 8. Decode.
                outputs = self.decode(latents) if self.output_type == "pil" else list(latents.split(1))
                batch = [
                    GeneratedImage(
                        image=pixels,
                        seed=seeds[i],
                        subseed=subseeds[i],
                        prompt=params.prompt,
                        negative_prompt=params.negative_prompt,
                        extra=self.image_extra(),
                    )
                    for i, pixels in enumerate(outputs)
                ]
                images.extend(batch)
                # 9. Hand the batch on now (the service saves it before the next batch starts).
                control.images_done(self.engine_run(batch))
        return self.engine_run(images, interrupted=interrupted)

    def engine_run(self, images: list[GeneratedImage], *, interrupted: bool = False) -> EngineRun:
        """``images`` with the model facts their infotext needs."""
        params = self.params
        info = getattr(self.model, "info", None)
        return EngineRun(
            images=images,
            model_name=getattr(info, "model_name", None),
            model_hash=getattr(info, "shorthash", None),
            vae_name=getattr(self.model, "vae_name", None),
            vae_hash=getattr(self.model, "vae_hash", None),
            clip_skip=int(params.clip_skip or 1),
            interrupted=interrupted,
        )

    def image_extra(self) -> dict[str, Any]:
        extra = dict(self.networks.infotext()) if self.networks is not None else {}
        if self.family.uses_distilled_guidance(self.pipe):
            extra["Distilled CFG Scale"] = float(self.params.distilled_cfg_scale)
        extra.update(getattr(self, "emphasis_extra", {}))
        # Flow models have no alphas_cumprod to rescale: A1111 / Forge write no "Noise Schedule" for them;
        # nor the other settings of the UNet samplers these flow samplers do not use (they would claim an
        # effect the picture did not get).
        extra["Noise Schedule"] = None
        for key in FLOW_UNUSED_KEYS:
            extra[key] = None
        if self.params.use_old_scheduling:
            extra[A1111_COMPAT_INFOTEXT["use_old_scheduling"]] = True if self.old_timelines_acted else None
        # Forge's keys for the text encoder / VAE files: "Module 1: ae, Module 2: clip_l, ..." (file stems).
        names = tuple(getattr(self.model, "module_names", ()) or ())
        if names:
            for index, name in enumerate(names, start=1):
                extra[f"Module {index}"] = PurePath(name).stem
        return extra

    # -- 1. inputs -----------------------------------------------------------------------------
    def check_inputs(self) -> None:
        params = self.params
        if params.seed < 0 or params.subseed < 0:
            raise ValueError("seed and subseed must be concrete (resolve -1 before calling the engine)")
        if params.rng not in ("CPU", "GPU", "NV"):
            raise ValueError(f"rng must be resolved to 'CPU', 'GPU' or 'NV', got {params.rng!r}")
        multiple = self.family.size_multiple(self.pipe)
        for name in ("width", "height"):
            value = int(getattr(params, name))
            if value % multiple:
                raise ValueError(
                    f"{name}: {self.family.name} models need sizes in multiples of {multiple} "
                    f"(got {value}; nearest: {max(multiple, round(value / multiple) * multiple)})"
                )
        if params.tiling:
            raise ValueError("tiling: seamless tiling is not supported for SD 3.x / Flux models")
        # A throw-away plan: an unknown or unsuitable sampler fails here, before any model work.
        self.plan_for(params.width, params.height)

    def plan_for(self, width: int, height: int) -> FlowPlan:
        tokens = self.family.image_tokens(self.pipe, height // self.scale, width // self.scale)
        return build_flow_plan(
            self.params.sampler_name, self.params.scheduler, self.pipe.scheduler.config, image_tokens=tokens
        )

    # -- 2. prompts ----------------------------------------------------------------------------
    def encode_prompts(self) -> None:
        params = self.params
        prompt, _calls = strip_extra_networks(params.prompt)
        parts = split_composable_prompt(prompt)
        texts = [text for text, _weight in parts] + [params.negative_prompt]
        old_timelines = bool(params.use_old_scheduling)
        schedules = get_learned_conditioning_prompt_schedules(texts, params.steps,
                                                              use_old_scheduling=old_timelines)
        # As the UNet loop: "Old prompt editing timelines" is written only where they changed a schedule.
        self.old_timelines_acted = old_timelines and (
            schedules != get_learned_conditioning_prompt_schedules(texts, params.steps))
        self.part_schedules = [
            (schedule, weight) for schedule, (_text, weight) in zip(schedules, parts, strict=False)
        ]
        self.negative_schedule = schedules[-1]
        texts = list(dict.fromkeys(text for schedule in schedules for _end, text in schedule))
        encoder = FlowTextEncoder(
            # the embeddings view: textual inversion on the CLIP encoders, as Forge does (T5 reads the text)
            self.networks.text_pipe if self.networks is not None else self.pipe,
            self.family.config_family,
            device=self.device,
            dtype=self.transformer_dtype,
            max_sequence_length=self.family.max_sequence_length(self.pipe),
            clip_skip=int(params.clip_skip or 1),
            emphasis=params.emphasis or ORIGINAL,
        )
        self.emphasis_extra = emphasis_infotext(params.emphasis, texts)
        # The texts of each schedule as A1111 / Forge encode them: a schedule of several texts is one batch.
        plan = schedule_texts([[text for _end, text in schedule] for schedule in schedules])
        started = time.perf_counter()
        encoded = encoder.encode_texts(plan.texts, groups=plan.groups)
        self.part_encoded: list[dict[str, FlowCond]] = [
            {text: encoded[index] for text, index in lookup.items()} for lookup in plan.lookups[:-1]]
        self.negative_encoded = {text: encoded[index] for text, index in plan.lookups[-1].items()}
        logger.debug("encoded %d text(s) in %.2f s", len(texts), time.perf_counter() - started)
        self._guidance_cache: dict[tuple[tuple[str, ...], str], FlowGuidance] = {}

    def guidance(self) -> FlowGuidance:
        step = self.step_index
        key = (
            tuple(prompt_for_step(schedule, step) for schedule, _w in self.part_schedules),
            prompt_for_step(self.negative_schedule, step),
        )
        found = self._guidance_cache.get(key)
        if found is None:
            found = self._guidance_cache[key] = self.prepare_guidance(*key)
        return found

    def prepare_guidance(self, positive: tuple[str, ...], negative: str) -> FlowGuidance:
        params = self.params
        batch = params.batch_size
        weights = tuple(weight for _schedule, weight in self.part_schedules)
        do_cfg = params.cfg_scale != 1.0 or len(positive) > 1  # below 1 too, as A1111 (cfg 0: the negative)
        rows = [self.part_encoded[part][text] for part, text in enumerate(positive)]
        if do_cfg:
            rows.insert(0, self.negative_encoded[negative])
        hidden = torch.cat([row.hidden.repeat(batch, 1, 1) for row in rows])
        pooled = torch.cat([row.pooled.repeat(batch, 1) for row in rows])
        return FlowGuidance(
            hidden=hidden,
            pooled=pooled,
            do_cfg=do_cfg,
            scale=float(params.cfg_scale),
            weights=weights,
            rows=len(rows),
        )

    def skips_uncond(self) -> bool:
        """Whether this call runs without the negative prompt: A1111's "Skip Early CFG" (the first
        ``skip_early_cond`` of the pass's calls) and "NGMS" (below sigma ``s_min_uncond``, every other call
        or every one with ``s_min_uncond_all``), as Forge applies them to these models.
        """
        params = self.params
        early, ngms = float(params.skip_early_cond or 0.0), float(params.s_min_uncond or 0.0)
        if early and self.cfg_call / max(1, self.cfg_calls) <= early:
            return True
        return bool((self.cfg_call % 2 or params.s_min_uncond_all) and ngms > 0 and self.cfg_sigma < ngms)

    def predict(self, latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """The guided velocity for ``latents`` at ``timestep``, float32."""
        guidance = self.guidance()
        skipped = guidance.do_cfg and self.skips_uncond()
        if skipped:  # the prompts' rows only, combined at scale 1 with the first in the negative's place
            batch = latents.shape[0]
            guidance = replace(guidance, hidden=guidance.hidden[batch:], pooled=guidance.pooled[batch:],
                               do_cfg=False, rows=guidance.rows - 1, scale=1.0)
        stacked = torch.cat([latents] * guidance.rows) if guidance.rows > 1 else latents
        output = self.family.velocity(
            self.pipe, stacked.to(self.transformer_dtype), timestep, guidance, self.params
        ).float()
        return combine_guided(output, rows=guidance.rows, weights=guidance.weights, scale=guidance.scale,
                              do_cfg=guidance.do_cfg, uncond_skipped=skipped)

    @property
    def transformer_dtype(self) -> torch.dtype:
        dtype = self.transformer.dtype
        # fp8-stored or GGUF-quantized weights compute in the runtime dtype (the loaded model's dtype).
        if dtype.is_floating_point and dtype.itemsize > 1:
            return dtype
        runtime = getattr(self.model, "dtype", None)
        return runtime if isinstance(runtime, torch.dtype) else torch.bfloat16

    # -- 4.-7. one batch -----------------------------------------------------------------------
    def noise(self, seeds: list[int], subseeds: list[int], width: int, height: int) -> torch.Tensor:
        params = self.params
        resize = (params.seed_resize_from_w, params.seed_resize_from_h)
        return create_batch_noise(
            seeds=seeds,
            subseeds=subseeds,
            subseed_strength=params.subseed_strength,
            seed_resize_from=resize if min(resize) > 0 else None,
            width=width,
            height=height,
            rng=params.rng or "CPU",
            device=self.device,
            channels=int(self.transformer.config.in_channels)
            if self.family.config_family == "sd3"
            else int(self.transformer.config.in_channels) // 4,
            scale_factor=self.scale,
        ).latents

    def sample_batch(self, seeds: list[int], subseeds: list[int], batch_index: int) -> torch.Tensor:
        params = self.params
        noise = self.noise(seeds, subseeds, params.width, params.height)
        plan = self.plan_for(params.width, params.height)
        plan.set_timesteps(params.steps, self.device)
        return self.denoise(
            plan, noise, noise, plan.scheduler.timesteps, batch_index, offset=0, total=params.steps
        )

    def denoise(
        self,
        plan: FlowPlan,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        batch_index: int,
        *,
        offset: int,
        total: int,
    ) -> torch.Tensor:
        scheduler = plan.scheduler
        order = max(1, int(getattr(scheduler, "order", 1)))
        scale_input = getattr(scheduler, "scale_model_input", None)
        reported = 0
        times = [float(t) for t in timesteps.cpu()]
        for i, t in enumerate(timesteps):
            self.check_control()
            self.step_index = offset + reported
            model_input = scale_input(latents, t) if scale_input is not None else latents
            self.cfg_call, self.cfg_calls, self.cfg_sigma = i, len(times), plan.sigma_at(times[i])
            velocity = self.predict(model_input, t)
            sigma = plan.sigma_at(times[i])
            x0 = latents - sigma * velocity
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0].float()
            latents = self.after_step(latents, noise, plan, times[i + 1] if i + 1 < len(times) else None)
            done = min(total, -(-(i + 1) // order))
            if done != reported:
                reported = done
                self.report(done, total, batch_index, x0)
        return latents

    def after_step(
        self, latents: torch.Tensor, noise: torch.Tensor, plan: FlowPlan, next_timestep: float | None
    ) -> torch.Tensor:
        return latents

    # -- progress and control ------------------------------------------------------------------
    def check_control(self) -> None:
        if self.job.control.stop_requested:
            raise _StopBatch

    def report(self, step: int, total: int, batch_index: int, x0: torch.Tensor) -> None:
        preview = None
        every = self.job.preview_every
        if every and step % every == 0 and step < total:
            family = self.family
            # The job's method (TAESD3 / TAEF1 from models/VAE-approx, the VAE...), else the cheap one.
            preview = live_preview(x0, vae=self.vae, space=family.name, cheap=lambda: flow_preview_image(
                x0, family.preview_factors, family.preview_bias))
        self.job.on_step(
            StepProgress(
                step=step,
                total_steps=total,
                batch_index=batch_index,
                batch_count=self.params.n_iter,
                preview=preview,
            )
        )

    # -- 8. decode -----------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        from sdweb.engine.generate import to_pil

        config = self.vae.config
        scaled = latents / config.scaling_factor + float(getattr(config, "shift_factor", 0.0) or 0.0)
        images = []
        for index in range(scaled.shape[0]):
            decoded = vae_decode(
                self.vae, scaled[index : index + 1].to(self.device)
            )  # NaN-checked, fp32 retry
            images.append(to_pil(decoded[0]))
        offload_module(self.vae)  # --medvram: the next batch's transformer runs alone on the device
        return images

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] ``(B, 3, H, W)`` -> model-space latents (the distribution's mean)."""
        config = self.vae.config
        mean = vae_encode(self.vae, pixels, self.device)  # NaN-checked, fp32 retry
        shift = float(getattr(config, "shift_factor", 0.0) or 0.0)
        return ((mean - shift) * config.scaling_factor).to(self.device)


class FlowImg2Img(FlowTxt2Img):
    """img2img and inpainting on a flow model; see the module docstring."""

    params: Img2ImgParams

    def __init__(
        self,
        model: Any,
        params: Img2ImgParams,
        job: FamilyJob,
        family: FlowFamily,
        *,
        init_images: Sequence[Image.Image],
        mask: Image.Image | None = None,
        init_latents: torch.Tensor | None = None,
    ) -> None:
        if not isinstance(params, Img2ImgParams):
            raise TypeError("img2img needs Img2ImgParams (denoising_strength, resize_mode)")
        super().__init__(model, params, job, family)
        self.init_images = list(init_images)
        self.mask = mask
        self.plans: list[Any] = []
        self._init: torch.Tensor | None = init_latents
        self.latent_mask: torch.Tensor | None = None
        self.denoise_steps = params.diffusers_img2img_steps

    def check_inputs(self) -> None:
        super().check_inputs()
        count = len(self.init_images) if self._init is None else int(self._init.shape[0])
        if count == 0:
            raise ValueError("img2img needs an init image")
        if count not in (1, self.params.batch_size):
            raise ValueError(
                f"{count} init images for a batch of {self.params.batch_size}: give one image, "
                "or one per image of the batch"
            )
        if self.params.resize_mode == 3 and self._init is None and self.mask is None:
            from sdweb.engine.img2img import MAX_LATENT_UPSCALE_SOURCE_SIDE
            from sdweb.images.resize import latent_upscale_source_size

            for image in self.init_images:
                if max(latent_upscale_source_size(image, self.scale)) > MAX_LATENT_UPSCALE_SOURCE_SIDE:
                    raise ValueError(
                        f"the init image is {image.width}x{image.height}; resize mode 3 (latent upscale) "
                        f"encodes it at that size, at most {MAX_LATENT_UPSCALE_SOURCE_SIDE} a side: use "
                        "resize mode 0, 1 or 2 for larger images"
                    )
        if self.mask is not None and not self.plans:
            from sdweb.images.mask import prepare_inpaint

            params = self.params
            self.plans = [
                prepare_inpaint(
                    image,
                    self.mask,
                    width=params.width,
                    height=params.height,
                    resize_mode=params.resize_mode,
                    mask_blur=params.mask_blur,
                    invert=params.inpainting_mask_invert,
                    fill=params.inpainting_fill,
                    only_masked=params.inpaint_full_res,
                    padding=params.inpaint_full_res_padding,
                )
                for image in self.init_images
            ]

    def init_latents(self) -> torch.Tensor:
        if self._init is None:
            from sdweb.engine.image_conditioning import image_to_pixels
            from sdweb.images.resize import flatten_alpha, resize_image

            params = self.params
            if self.plans:
                sources = [plan.init for plan in self.plans]
            elif params.resize_mode == 3:
                sources = [self._latent_upscale_source(image) for image in self.init_images]
            else:
                sources = [
                    resize_image(flatten_alpha(image), params.resize_mode, params.width, params.height)
                    for image in self.init_images
                ]
            target = (params.height // self.scale, params.width // self.scale)
            encoded = [self.encode_pixels(image_to_pixels(image)) for image in sources]
            # Resize mode 3 ("Just resize (latent upscale)"): encoded at the image's own size, then the
            # latents are resized to the job's (bilinear, as the SD path does).
            latents = torch.cat(
                [
                    item
                    if tuple(item.shape[-2:]) == target
                    else torch.nn.functional.interpolate(item, size=target, mode="bilinear")
                    for item in encoded
                ]
            )
            if latents.shape[0] == 1 and params.batch_size > 1:
                latents = latents.repeat(params.batch_size, 1, 1, 1)
            self._init = latents
            if self.plans:
                size = (int(latents.shape[-1]), int(latents.shape[-2]))
                rows = [
                    torch.from_numpy(
                        np.asarray(
                            self.plans[i % len(self.plans)].mask.resize(size, Image.Resampling.BICUBIC),
                            dtype=np.float32,
                        )
                        / 255.0
                    ).round()
                    for i in range(latents.shape[0])
                ]
                self.latent_mask = torch.stack(rows)[:, None].to(self.device)
        return self._init

    def _latent_upscale_source(self, image: Image.Image) -> Image.Image:
        from sdweb.images.resize import flatten_alpha, latent_upscale_source_size

        rgb = flatten_alpha(image)
        size = latent_upscale_source_size(rgb, self.scale)
        return rgb if rgb.size == size else rgb.resize(size, Image.Resampling.LANCZOS)

    def sample_batch(self, seeds: list[int], subseeds: list[int], batch_index: int) -> torch.Tensor:
        params = self.params
        init = self.init_latents()
        noise = self.noise(seeds, subseeds, params.width, params.height)
        if self.latent_mask is not None and params.inpainting_fill in (2, 3):
            fill = noise if params.inpainting_fill == 2 else torch.zeros_like(init)
            init = init * (1.0 - self.latent_mask) + fill * self.latent_mask
        self._batch_init = init
        if self.denoise_steps == 0:
            self.check_control()
            return init.clone()
        plan = self.plan_for(params.width, params.height)
        plan.set_timesteps(params.steps, self.device)
        scheduler = plan.scheduler
        order = max(1, int(getattr(scheduler, "order", 1)))
        start = (params.steps - self.denoise_steps) * order
        timesteps = scheduler.timesteps[start:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)
        sigma = plan.sigma_at(timesteps[0])
        latents = sigma * noise + (1.0 - sigma) * init
        return self.denoise(
            plan,
            latents,
            noise,
            timesteps,
            batch_index,
            offset=params.steps - self.denoise_steps,
            total=self.denoise_steps,
        )

    def after_step(
        self, latents: torch.Tensor, noise: torch.Tensor, plan: FlowPlan, next_timestep: float | None
    ) -> torch.Tensor:
        if self.latent_mask is None:
            return latents
        init = self._batch_init
        sigma = plan.sigma_at(next_timestep) if next_timestep is not None else 0.0
        kept = sigma * noise + (1.0 - sigma) * init
        return kept * (1.0 - self.latent_mask) + latents * self.latent_mask

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        images = super().decode(latents)
        if not self.plans:
            return images
        from sdweb.images.mask import paste_back

        return [paste_back(image, self.plans[i % len(self.plans)]) for i, image in enumerate(images)]


def flow_preview_image(
    latents: torch.Tensor, factors: Sequence[Sequence[float]], bias: Sequence[float]
) -> Image.Image:
    """A cheap preview of 16-channel latents: a fixed linear map to RGB, one pixel per latent."""
    matrix = torch.tensor(factors, dtype=torch.float32)
    sample = latents[:, : matrix.shape[0]].float().cpu()
    rgb = (
        torch.einsum("bchw,cr->brhw", sample, matrix)
        + torch.tensor(bias, dtype=torch.float32)[None, :, None, None]
    )
    rgb = ((rgb + 1.0) / 2.0).clamp(0, 1)
    strip = torch.cat(list(rgb), dim=2)
    array = (strip.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)

"""The request and progress value objects that flow UI/API -> service -> engine.

Part of the kernel: pure Python plus pydantic. One typed, frozen, validated :class:`GenerationParams`
travels between layers; nothing passes positional argument lists. Bad input is refused with a message
naming the field and the allowed range; nothing is silently corrected.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

#: Largest prompt accepted (characters). A1111 has none; a bound keeps a 1 MB paste from tying up a worker.
MAX_PROMPT_CHARS = 20_000
#: Largest seed value A1111 draws for "random" (-1).
MAX_SEED = 4_294_967_294
#: Largest seed a request may carry: torch's generators take 64-bit seeds (A1111 passes them through).
MAX_SEED_VALUE = 2**64 - 1
#: Largest image side. A1111 has no bound; memory is what limits a size (the API's pixel budget).
MAX_SIDE = 16_384
#: Most sampling steps. A1111 has no bound (its sliders stop at 150); this one only stops typos
#: (steps: 1e6) from holding the GPU for days.
MAX_STEPS = 10_000

#: Where the noise comes from (A1111's ``randn_source``): torch's CPU generator, the model device's
#: generator, or "NV": A1111's CPU reproduction of CUDA's ``torch.randn`` (the same noise on any device).
RngSource = Literal["CPU", "GPU", "NV"]
#: Which implementation runs A1111's k-diffusion samplers: A1111's algorithms exactly, or diffusers'
#: schedulers of the same names (images made before sdweb matched A1111).
SamplerPath = Literal["A1111", "diffusers"]
#: A1111's UniPC settings (uni_pc_variant, uni_pc_skip_type).
UniPCVariant = Literal["bh1", "bh2", "vary_coeff"]
UniPCSkipType = Literal["time_uniform", "time_quadratic", "logSNR"]
#: A1111's UniPC settings (request fields and options of these names) and A1111's defaults for them.
UNIPC_DEFAULTS: Mapping[str, Any] = MappingProxyType({
    "uni_pc_variant": "bh1", "uni_pc_skip_type": "time_uniform", "uni_pc_order": 3,
    "uni_pc_lower_order_final": True})
UNIPC_SETTINGS: tuple[str, ...] = tuple(UNIPC_DEFAULTS)
#: A1111's on/off settings that change the picture (request fields and options of these names, all off by
#: default) and the infotext key A1111 writes for each when it is on: its compatibility settings, and two
#: sampler settings ("Discard penultimate sigma" for every sampler, the SGM noise multiplier).
A1111_COMPAT_INFOTEXT: Mapping[str, str] = MappingProxyType({
    "use_old_scheduling": "Old prompt editing timelines",
    "use_downcasted_alpha_bar": "Downcast alphas_cumprod",
    "pad_cond_uncond": "Pad conds",
    "pad_cond_uncond_v0": "Pad conds v0",
    "always_discard_next_to_last_sigma": "Discard penultimate sigma",
    "sgm_noise_multiplier": "SGM noise multiplier",
})
#: A1111's numeric sampler settings: option / request field -> (infotext key, A1111's default). The
#: schedule's (Settings > Sampler parameters; 0 for the sigmas and rho means "the model's / the schedule
#: type's own") and img2img's "Extra noise" (added to the noised init latents, hires fix's second pass too).
SCHEDULE_SETTINGS: Mapping[str, tuple[str, float]] = MappingProxyType({
    "sigma_min": ("Schedule min sigma", 0.0),
    "sigma_max": ("Schedule max sigma", 0.0),
    "rho": ("Schedule rho", 0.0),
    "beta_dist_alpha": ("Beta schedule alpha", 0.6),
    "beta_dist_beta": ("Beta schedule beta", 0.6),
    "img2img_extra_noise": ("Extra noise", 0.0),
})
#: A1111's sampler parameters (request fields and options of these names), their defaults (``s_tmax`` 0
#: means infinity) and the infotext key A1111 writes for each when the sampler takes it and the value is
#: not the default.
SIGMA_DEFAULTS: Mapping[str, float] = MappingProxyType({"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0,
                                                        "s_noise": 1.0})
SIGMA_INFOTEXT: Mapping[str, str] = MappingProxyType({"s_churn": "Sigma churn", "s_tmin": "Sigma tmin",
                                                      "s_tmax": "Sigma tmax", "s_noise": "Sigma noise"})
#: Which of them each of A1111's k-diffusion samplers takes (its ``sampler_extra_params``).
SIGMA_SAMPLERS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    **dict.fromkeys(("Euler", "Heun", "DPM2"), ("s_churn", "s_tmin", "s_tmax", "s_noise")),
    **dict.fromkeys(("DPM fast", "DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun",
                     "DPM++ 3M SDE"), ("s_noise",)),
})
#: A1111's CFG skipping (request fields and options of these names, off by default) and their infotext
#: keys: "Negative Guidance minimum sigma" (``s_min_uncond``; every other model call below that sigma
#: runs without the negative prompt, every call with ``s_min_uncond_all``) and "Ignore negative prompt
#: during early sampling" (``skip_early_cond``: the first fraction of the model calls).
CFG_SKIP_INFOTEXT: Mapping[str, str] = MappingProxyType({"s_min_uncond": "NGMS",
                                                         "s_min_uncond_all": "NGMS all steps",
                                                         "skip_early_cond": "Skip Early CFG"})
#: The numbers among them (request field -> infotext key).
CFG_SKIP_NUMBERS: Mapping[str, str] = MappingProxyType({"s_min_uncond": "NGMS",
                                                        "skip_early_cond": "Skip Early CFG"})


def sigma_value(params: Any, name: str) -> float:
    """The effective value of sampler parameter ``name`` (its default when unset; ``s_tmax`` 0 is inf)."""
    value = getattr(params, name, None)
    value = SIGMA_DEFAULTS[name] if value is None else float(value)
    return math.inf if name == "s_tmax" and value == 0 else value


def sampler_sigma_values(params: Any, sampler_name: str) -> dict[str, float]:
    """The sampler parameters ``sampler_name`` takes whose values are not its defaults, A1111's way."""
    values: dict[str, float] = {}
    for name in SIGMA_SAMPLERS.get(sampler_name, ()):
        value = sigma_value(params, name)
        if value != (math.inf if name == "s_tmax" else SIGMA_DEFAULTS[name]):
            values[name] = value
    return values
#: A1111's "Emphasis" modes (option ``emphasis``, A1111's default "Original"): how ``(word:1.2)`` weights
#: act on the text encoders' hidden states. "None": the prompt is not parsed for weights at all (brackets,
#: escapes and BREAK are plain text); "Ignore": parsed, weights dropped; "Original": scaled by weight, each
#: chunk's mean restored; "No norm": scaled, mean not restored. Infotext "Emphasis" when not "Original".
EmphasisMode = Literal["None", "Ignore", "Original", "No norm"]
EMPHASIS_MODES: tuple[str, ...] = ("None", "Ignore", "Original", "No norm")
EMPHASIS_DEFAULT = "Original"
#: A1111's "Noise schedule for sampling" (option ``sd_noise_schedule``; infotext "Noise Schedule" when
#: not "Default"): "Zero Terminal SNR" rescales the model's alphas_cumprod so the last one is (almost) 0.
NoiseSchedule = Literal["Default", "Zero Terminal SNR"]
NOISE_SCHEDULES: tuple[str, ...] = ("Default", "Zero Terminal SNR")


#: The sd-webui-controlnet extension's control modes, resize modes and hires-fix options (its spellings).
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
CONTROL_RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
CONTROL_HR_OPTIONS = ("Both", "Low res only", "High res only")
ControlMode = Literal["Balanced", "My prompt is more important", "ControlNet is more important"]
ControlResizeMode = Literal["Just Resize", "Crop and Resize", "Resize and Fill"]
ControlHrOption = Literal["Both", "Low res only", "High res only"]


class ControlNetUnit(BaseModel):
    """One ControlNet unit of a request (the sd-webui-controlnet extension's fields and defaults).

    ``image`` and ``mask`` are the encoded image files (PNG/JPEG bytes) as sent; they are left out of
    ``model_dump`` (history, API echoes): a job keeps them, a stored request does not. No image on an
    img2img request means the init image. ``model`` is a title ``name [hash]``, a name, or "None".
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    module: str = Field("none", max_length=200)
    model: str = Field("None", max_length=1000)
    weight: float = Field(1.0, ge=0.0, le=2.0)
    image: bytes | None = Field(None, exclude=True, repr=False)
    mask: bytes | None = Field(None, exclude=True, repr=False)
    resize_mode: ControlResizeMode = "Crop and Resize"
    low_vram: bool = False
    #: Preprocessor resolution; -1: the preprocessor's default.
    processor_res: int = Field(-1, ge=-1, le=MAX_SIDE)
    #: Preprocessor thresholds (canny low/high...); -1: the preprocessor's default.
    threshold_a: float = Field(-1.0, allow_inf_nan=False)
    threshold_b: float = Field(-1.0, allow_inf_nan=False)
    guidance_start: float = Field(0.0, ge=0.0, le=1.0)
    guidance_end: float = Field(1.0, ge=0.0, le=1.0)
    pixel_perfect: bool = False
    control_mode: ControlMode = "Balanced"
    hr_option: ControlHrOption = "Both"

    @field_validator("guidance_end")
    @classmethod
    def _end_after_start(cls, value: float, info: Any) -> float:
        start = info.data.get("guidance_start", 0.0)
        if value < start:
            raise ValueError(f"guidance_end ({value}) is before guidance_start ({start})")
        return value


class GenerationParams(BaseModel):
    """One txt2img request, A1111 field names, validated bounds. Frozen: use ``model_copy(update=...)``."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    styles: tuple[str, ...] = ()
    steps: int = Field(20, ge=1, le=MAX_STEPS)
    #: Any finite value, as A1111 (below 1 the unconditional prediction weighs more; 0 is it alone).
    cfg_scale: float = Field(7.0, allow_inf_nan=False)
    #: Flux dev's guidance input (Forge's "Distilled CFG Scale"); other models ignore it.
    distilled_cfg_scale: float = Field(3.5, ge=0.0, le=30.0)
    sampler_name: str = Field("Euler a", min_length=1, max_length=100)
    scheduler: str = Field("Automatic", min_length=1, max_length=100)
    seed: int = Field(-1, ge=-1, le=MAX_SEED_VALUE)
    subseed: int = Field(-1, ge=-1, le=MAX_SEED_VALUE)
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0)
    seed_resize_from_w: int = Field(-1, ge=-1, le=MAX_SIDE)
    seed_resize_from_h: int = Field(-1, ge=-1, le=MAX_SIDE)
    width: int = Field(512, ge=8, le=MAX_SIDE)
    height: int = Field(512, ge=8, le=MAX_SIDE)
    batch_size: int = Field(1, ge=1, le=64)
    n_iter: int = Field(1, ge=1, le=100)
    #: None means "use the setting CLIP_stop_at_last_layers".
    clip_skip: int | None = Field(None, ge=1, le=12)
    #: None means "use the sampler's / setting's default"; above 1 is allowed, as A1111.
    eta: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    #: Checkpoint title, name or hash; None means the currently selected model.
    checkpoint: str | None = Field(None, max_length=1000)
    #: VAE name, "Automatic" or "None"; None means the setting.
    vae: str | None = Field(None, max_length=1000)
    #: SD 3.x / Flux text encoders and VAE from models/text_encoder and models/VAE (Forge's
    #: ``forge_additional_modules``: names or paths); None means the setting, () picks them automatically.
    additional_modules: tuple[str, ...] | None = Field(None, max_length=8)
    #: None means the setting ``randn_source``.
    rng: RngSource | None = None
    #: A1111's ENSD ("Eta noise seed delta"): the noise drawn during sampling comes from seed + delta.
    #: None means the setting ``eta_noise_seed_delta``.
    eta_noise_seed_delta: int | None = Field(None, ge=0, le=MAX_SEED_VALUE)
    #: None means the setting ``sampler_path``.
    sampler_path: SamplerPath | None = None
    #: A1111's UniPC settings (its option names); None means the setting of that name.
    uni_pc_variant: UniPCVariant | None = None
    uni_pc_skip_type: UniPCSkipType | None = None
    uni_pc_order: int | None = Field(None, ge=1, le=50)
    uni_pc_lower_order_final: bool | None = None
    #: A1111's "With img2img, do exactly the amount of steps the slider specifies" (``img2img_fix_steps``):
    #: img2img runs ``steps`` steps, the last ones of a ``steps / denoising_strength`` schedule, instead of
    #: the last ``denoising_strength`` of a ``steps`` schedule. A1111's samplers only; img2img only (hires
    #: fix's second pass always runs its steps exactly, as A1111's). None means the setting.
    img2img_fix_steps: bool | None = None
    #: A1111's compatibility settings (:data:`A1111_COMPAT_INFOTEXT`); None means the setting of that name.
    #: ``use_old_scheduling``: "Use old prompt editing timelines" (``[a:b:N]``: N below 1 a fraction, else a
    #: step; the hires pass reuses the first pass's timeline). ``use_downcasted_alpha_bar``: the model's
    #: ``alphas_cumprod`` rounded to fp16 before the sigmas are made (A1111 before 1.7; A1111's samplers
    #: only: ``sampler_path`` "diffusers" and plugin samplers keep float32 tables). ``pad_cond_uncond``:
    #: the shorter of prompt and negative prompt padded with empty-prompt chunks so both run in one batch
    #: (off: each with its own length, as A1111). ``pad_cond_uncond_v0``: the negative prompt padded with
    #: its last vector, or cut, to the prompt's length (A1111 before 1.6).
    use_old_scheduling: bool | None = None
    use_downcasted_alpha_bar: bool | None = None
    pad_cond_uncond: bool | None = None
    pad_cond_uncond_v0: bool | None = None
    #: A1111's "Always discard next-to-last sigma" and "SGM noise multiplier" (txt2img's starting noise
    #: scaled by ``sqrt(1 + sigma_max^2)``, not ``sigma_max``); None means the setting.
    always_discard_next_to_last_sigma: bool | None = None
    sgm_noise_multiplier: bool | None = None
    #: A1111's schedule settings (:data:`SCHEDULE_SETTINGS`); None means the setting of that name.
    sigma_min: float | None = Field(None, ge=0.0, le=1000.0, allow_inf_nan=False)
    sigma_max: float | None = Field(None, ge=0.0, le=1000.0, allow_inf_nan=False)
    rho: float | None = Field(None, ge=0.0, le=100.0, allow_inf_nan=False)
    beta_dist_alpha: float | None = Field(None, gt=0.0, le=100.0, allow_inf_nan=False)
    beta_dist_beta: float | None = Field(None, gt=0.0, le=100.0, allow_inf_nan=False)
    #: A1111's "Extra noise multiplier for img2img and hires fix": ``noise * this`` more on the noised init
    #: latents (A1111's samplers); None means the setting.
    img2img_extra_noise: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False)
    #: A1111's sampler parameters (:data:`SIGMA_DEFAULTS`; Karras et al.'s churn, its sigma range, and the
    #: scale of the noise drawn during sampling), for the samplers that take them (:data:`SIGMA_SAMPLERS`);
    #: None means the setting of that name.
    s_churn: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    s_tmin: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    s_tmax: float | None = Field(None, ge=0.0)
    s_noise: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    #: A1111's CFG skipping (:data:`CFG_SKIP_INFOTEXT`); None means the setting of that name.
    s_min_uncond: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    s_min_uncond_all: bool | None = None
    skip_early_cond: float | None = Field(None, ge=0.0, le=1.0)
    #: A1111's "Emphasis mode" (:data:`EMPHASIS_MODES`); None means the setting ``emphasis``.
    emphasis: EmphasisMode | None = None
    #: A1111's "Noise schedule for sampling" (:data:`NOISE_SCHEDULES`; A1111's samplers only: DDIM, PLMS,
    #: UniPC and the k-diffusion ones); None means the setting ``sd_noise_schedule``.
    sd_noise_schedule: NoiseSchedule | None = None
    tiling: bool = False
    # Hires fix (txt2img): a second, img2img pass at a larger size. Off by default; A1111's names.
    enable_hr: bool = False
    #: Upscale factor of the second pass (used when hr_resize_x and hr_resize_y are both 0).
    hr_scale: float = Field(2.0, ge=1.0, le=16.0)
    #: Second-pass size; one of them 0 keeps the aspect ratio, both set crops to fit (A1111).
    hr_resize_x: int = Field(0, ge=0, le=MAX_SIDE)
    hr_resize_y: int = Field(0, ge=0, le=MAX_SIDE)
    #: Restore the faces in the finished images (A1111's "Restore faces"; the restorer is a setting).
    restore_faces: bool = False
    #: "Latent" (and its variants: resize the latents) or a pixel upscaler ("Lanczos", "Nearest", "None").
    hr_upscaler: str = Field("Latent", min_length=1, max_length=100)
    #: Sampling steps of the second pass before the denoising strength applies; 0 = ``steps``.
    hr_second_pass_steps: int = Field(0, ge=0, le=MAX_STEPS)
    #: How much the second pass (hires fix) changes the upscaled image; img2img's strength.
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0)
    # Second-pass overrides (A1111's names); "" means "the same as the first pass".
    hr_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    hr_negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    hr_sampler_name: str = Field("", max_length=100)
    hr_scheduler: str = Field("", max_length=100)
    #: ControlNet units (the sd-webui-controlnet extension's ``alwayson_scripts.controlnet.args``).
    controlnet_units: tuple[ControlNetUnit, ...] = Field((), max_length=16)

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8 (got {value}; nearest: {round(value / 8) * 8})")
        return value

    @field_validator("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value

    @property
    def total_images(self) -> int:
        return self.batch_size * self.n_iter

    def with_seeds(self, seed: int, subseed: int) -> GenerationParams:
        return self.model_copy(update={"seed": seed, "subseed": subseed})

    def hires_second_pass_fields(self) -> dict[str, str]:
        """The prompt, negative prompt, sampler and schedule type of hires fix's second pass.

        Its own (``hr_*``) where set, else the first pass's.
        """
        return {
            "prompt": self.hr_prompt or self.prompt,
            "negative_prompt": self.hr_negative_prompt or self.negative_prompt,
            "sampler_name": self.hr_sampler_name or self.sampler_name,
            "scheduler": self.hr_scheduler or self.scheduler,
        }


class Img2ImgParams(GenerationParams):
    """One img2img request: a txt2img request plus how the init images are used (A1111 field names).

    The init images themselves travel beside the request (``submit_img2img(params, images)``), not
    in it: a frozen, JSON-serialisable request is what history stores and extensions receive.
    ``width``/``height`` are the output size the init images are fitted to.
    """

    # ``denoising_strength`` is GenerationParams': 0 keeps the init image (up to the VAE round trip),
    # 1 ignores it.

    #: 0 just resize, 1 crop and resize, 2 resize and fill, 3 just resize (latent upscale).
    resize_mode: int = Field(0, ge=0, le=3)
    # Inpainting (used when a mask comes with the init images); A1111's names and defaults.
    #: Gaussian blur radius of the mask's edge, pixels.
    mask_blur: int = Field(4, ge=0, le=64)
    #: A vertical blur other than ``mask_blur`` (which is then the horizontal one), as A1111's
    #: ``mask_blur_x`` / ``mask_blur_y``; None: the same both ways.
    mask_blur_y: int | None = Field(None, ge=0, le=64)
    #: What the masked area starts from: 0 fill, 1 original, 2 latent noise, 3 latent nothing.
    inpainting_fill: int = Field(0, ge=0, le=3)
    #: True: "Only masked" (the area around the mask at full resolution); False: "Whole picture".
    inpaint_full_res: bool = True
    #: "Only masked" padding around the mask, pixels.
    inpaint_full_res_padding: int = Field(0, ge=0, le=256)
    #: Repaint the black part of the mask instead of the white one.
    inpainting_mask_invert: bool = False

    @property
    def a1111_img2img_steps(self) -> tuple[int, int]:
        """A1111's ``(schedule steps, t_enc)`` (``setup_img2img_steps``) for its samplers.

        The sampler runs on the last ``t_enc + 2`` sigmas of a ``schedule steps`` schedule: ``t_enc + 1``
        steps (A1111's timestep samplers DDIM / PLMS: ``t_enc - 1`` model calls from timestep ``t_enc``
        down, A1111 counting ``t_enc + 1`` all the same). By default the schedule is ``steps`` long and
        ``t_enc = int(min(strength, 0.999) * steps)``; with :attr:`img2img_fix_steps` it is
        ``int(steps / min(strength, 0.999))`` long and ``t_enc = steps - 1``. Strength 0: by default
        ``t_enc = 0``, one step from the smallest sigma (A1111's k-diffusion samplers make it; the engine
        keeps the init image for the samplers that would not, :func:`sdweb.engine.img2img.img2img_run_steps`);
        with :attr:`img2img_fix_steps` (and in hires fix) a schedule of 0 steps: ``(0, -1)``, nothing runs.
        """
        strength = self.denoising_strength
        if strength <= 0:
            return (0, -1) if self.img2img_fix_steps else (self.steps, 0)
        if self.img2img_fix_steps:
            return int(self.steps / min(strength, 0.999)), self.steps - 1
        return self.steps, int(min(strength, 0.999) * self.steps)

    @property
    def diffusers_img2img_steps(self) -> int:
        """The diffusers count (``get_timesteps``): the last ``int(steps * strength)`` of ``steps``."""
        return min(int(self.steps * self.denoising_strength), self.steps)

    @property
    def denoising_steps(self) -> int:
        """Sampling steps the job runs and reports: A1111's ``t_enc + 1`` (:attr:`a1111_img2img_steps`),
        or diffusers' count on the diffusers path (``sampler_path``; its schedulers keep diffusers' slice).

        The engine decides by the sampler it builds (A1111's sampling functions or a diffusers scheduler),
        so for the few samplers the diffusers path still runs as functions this is an estimate until the
        job reports its first step.
        """
        if self.sampler_path == "diffusers":
            return self.diffusers_img2img_steps
        return self.a1111_img2img_steps[1] + 1


def format_validation_error(error: ValidationError) -> str:
    """One line per problem, each naming the field: ``steps: Input should be less than or equal to 150``."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item.get("loc", ())) or "request"
        message = str(item.get("msg", "invalid value")).removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return "; ".join(lines)


# ---------------------------------------------------------------------------------------------
# Running jobs: control and progress
# ---------------------------------------------------------------------------------------------


class JobControl:
    """Interrupt / skip flags for one running job, safe to set from any thread at any moment.

    * interrupt: stop now; images finished so far are kept, saved and returned.
    * skip: drop the image being made and go on with the rest of the batch.
    * finished images: the engine hands each batch to :meth:`images_done` as soon as it is decoded, so
      the service can save it (and its history row) at once: a crash then loses at most the batch in
      progress. Passes nested inside a job (hires fix's two passes) run under :meth:`hold` and the
      outer loop hands on its own, final images.
    """

    def __init__(self) -> None:
        self._interrupt = threading.Event()
        self._skip = threading.Event()
        self._on_images: Any = None
        self._held = 0

    def on_images(self, sink: Any) -> None:
        """Call ``sink(run)`` with each finished batch (an :class:`EngineRun` of its images); None: stop."""
        self._on_images = sink

    def images_done(self, run: EngineRun) -> None:
        """The engine's report of finished, decoded images (in output order); ignored under :meth:`hold`."""
        if self._on_images is not None and not self._held and run.images:
            self._on_images(run)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Inside, :meth:`images_done` reports nothing (an inner pass's images are not the job's)."""
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1

    def interrupt(self) -> None:
        self._interrupt.set()

    def skip(self) -> None:
        self._skip.set()

    @property
    def interrupted(self) -> bool:
        return self._interrupt.is_set()

    @property
    def skipped(self) -> bool:
        return self._skip.is_set()

    def clear_skip(self) -> None:
        self._skip.clear()

    @property
    def stop_requested(self) -> bool:
        return self._interrupt.is_set() or self._skip.is_set()


@dataclass(frozen=True)
class StepProgress:
    """What the engine reports after each denoising step."""

    step: int  # 1-based, steps done in the current image batch
    total_steps: int
    batch_index: int  # 0-based index of the n_iter batch being made
    batch_count: int
    #: Preview image (PIL.Image) of the current batch, when one was made at this step.
    preview: Any = None


JobState = Literal["queued", "running", "done", "interrupted", "failed"]


@dataclass
class JobProgress:
    """A job's progress as the UI and ``/sdapi/v1/progress`` show it (A1111's fields)."""

    job_id: str
    state: JobState = "queued"
    queue_position: int = 0
    job_no: int = 0
    job_count: int = 1
    sampling_step: int = 0
    sampling_steps: int = 0
    started_at: float | None = None
    preview: Any = None  # PIL.Image or None
    textinfo: str = ""
    error: str | None = None
    interrupted: bool = False
    skipped: bool = False

    @property
    def fraction(self) -> float:
        """0..1 over the whole job (all batches), as A1111's ``progress``."""
        if self.state in ("done", "interrupted"):
            return 1.0
        if self.sampling_steps <= 0 or self.job_count <= 0:
            return 0.0
        done = self.job_no * self.sampling_steps + self.sampling_step
        return min(1.0, done / (self.job_count * self.sampling_steps))

    @property
    def eta_seconds(self) -> float | None:
        fraction = self.fraction
        if self.started_at is None or fraction <= 0.0 or fraction >= 1.0:
            return None
        elapsed = time.monotonic() - self.started_at
        return elapsed / fraction - elapsed


@dataclass
class GenerationResult:
    """What a finished (or interrupted) job produced. Images are PIL images, in output order."""

    params: GenerationParams  # with concrete seeds
    images: list[Any] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    negative_prompts: list[str] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    grid_path: str | None = None
    model_name: str | None = None
    model_hash: str | None = None
    vae_name: str | None = None
    vae_hash: str | None = None
    extra_generation_params: dict[str, Any] = field(default_factory=dict)
    clip_skip: int = 1
    interrupted: bool = False
    job_timestamp: str = ""
    history_id: int | None = None
    #: Things the person should know that did not stop the job ("face restoration was skipped: ...").
    warnings: list[str] = field(default_factory=list)


@dataclass
class GeneratedImage:
    """One image as the engine hands it to the service (before saving)."""

    image: Any  # PIL.Image.Image
    seed: int
    subseed: int
    prompt: str
    negative_prompt: str
    #: infotext pairs this image adds (``{"Lora hashes": "name: 0123456789ab"}``).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class EngineRun:
    """What ``Engine.txt2img`` returns: the images made so far and the facts the infotext needs."""

    images: list[GeneratedImage]
    model_name: str | None = None  # checkpoint name without extension ("v1-5-pruned-emaonly")
    model_hash: str | None = None  # short sha256 (10 hex)
    vae_name: str | None = None
    vae_hash: str | None = None
    clip_skip: int = 1
    interrupted: bool = False

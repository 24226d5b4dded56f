"""A1111 parity of img2img and hires fix's second pass: the same step counts and the same latents.

A1111 (modules/sd_samplers_common.py ``setup_img2img_steps``, sd_samplers_kdiffusion.py and
sd_samplers_timesteps.py ``sample_img2img``, restated here from their behaviour):

* by default the schedule has ``steps`` steps and ``t_enc = int(min(strength, 0.999) * steps)``; with
  ``img2img_fix_steps``, or whenever the caller hands the sampler its steps (hires fix's second pass:
  ``hr_second_pass_steps or steps``), the schedule has ``int(steps / min(strength, 0.999))`` steps and
  ``t_enc = steps - 1``;
* k-diffusion samplers run on ``sigmas[schedule - t_enc - 1:]`` from ``init + noise * sigma_sched[0]``
  (DPM fast / adaptive between ``sigma_sched[-2]`` and ``sigma_sched[0]`` in ``len - 1`` steps; Brownian
  trees over the whole schedule); the job reports ``t_enc + 1`` steps;
* DDIM / PLMS noise the init to timestep ``t_enc`` of their timesteps (``sqrt(a) * x + sqrt(1 - a) *
  noise``) and run on the ``t_enc`` below it.

The oracle is k-diffusion itself (``kdiffusion_oracle``) on the tiny SD UNet, as in
``test_kdiffusion_parity.py``; the DDIM / PLMS loops are that file's restatement of A1111's.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from sdweb.engine.accelerator import inference_context
from sdweb.engine.encode import PromptEncoder
from sdweb.engine.generate import run_txt2img, to_pil
from sdweb.engine.hires import run_hires_txt2img
from sdweb.engine.img2img import _Img2Img
from sdweb.params import Img2ImgParams, JobControl, StepProgress
from tests.engine.conftest import tiny_params
from tests.engine.kdiffusion_oracle import load
from tests.engine.test_kdiffusion_parity import (
    A1111_DEFAULT_SCHEDULE,
    DISCARD,
    KDIFFUSION_SAMPLERS,
    _a1111_generators,
    _draw,
    _UNetLDM,
    a1111_cfg_denoiser,
    a1111_plms_eps,
    a1111_schedule,
    run_with_image_noise,
)

SEEDS = [1234, 1235]


def a1111_setup_img2img_steps(steps: int, strength: float, *, fix_steps: bool = False,
                              requested: int | None = None) -> tuple[int, int]:
    """A1111's ``(steps, t_enc)`` for an img2img sampling (``requested``: the steps a caller hands on)."""
    if fix_steps or requested is not None:
        wanted = requested or steps
        return (int(wanted / min(strength, 0.999)) if strength > 0 else 0), wanted - 1
    return steps, int(min(strength, 0.999) * steps)


def _params(**changes: Any) -> Img2ImgParams:
    values = tiny_params(batch_size=2, cfg_scale=6.0, steps=6).model_dump()
    values.update(changes)
    return Img2ImgParams(**values)


def _init_latents(model: Any, side: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    size = side // int(model.pipe.vae_scale_factor)
    return torch.randn((2, 4, size, size), generator=generator) * 0.8


def _conds(model: Any, params: Img2ImgParams) -> tuple[torch.Tensor, torch.Tensor]:
    encoder = PromptEncoder(model.pipe, device="cpu", dtype=torch.float32)
    cond, uncond = (item.hidden for item in encoder.encode_texts([params.prompt, params.negative_prompt],
                                                                  clip_skip=1))
    return cond, uncond


def run_sdweb(model: Any, samplers: Any, params: Img2ImgParams, init: torch.Tensor) -> tuple[
        torch.Tensor, list[StepProgress]]:
    steps: list[StepProgress] = []
    with inference_context(model.pipe):
        run = _Img2Img(model, params, [], samplers, JobControl(), steps.append, 0, init_latents=init.clone(),
                       output_type="latent").run()
    return torch.cat([item.image for item in run.images]), steps


def run_oracle_kdiffusion(model: Any, params: Img2ImgParams, init: torch.Tensor, *,
                          requested: int | None = None, extra_noise: float = 0.0) -> tuple[torch.Tensor, int]:
    """A1111's KDiffusionSampler.sample_img2img on the same UNet: ``(latents, t_enc + 1)``."""
    sampling, external = load()
    cond, uncond = _conds(model, params)
    inner = external.CompVisDenoiser(_UNetLDM(model.pipe.unet), quantize=True)
    name = params.sampler_name
    steps, t_enc = a1111_setup_img2img_steps(params.steps, params.denoising_strength,
                                             fix_steps=bool(params.img2img_fix_steps), requested=requested)
    label = params.scheduler
    if label == "Automatic":
        label = A1111_DEFAULT_SCHEDULE.get(name, "Uniform")
    n = steps + 1 if name in DISCARD else steps
    sigmas = a1111_schedule(label, n, inner, sampling)
    if name in DISCARD:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    sigma_sched = sigmas[steps - t_enc - 1:]
    seeds = list(SEEDS)
    generators = _a1111_generators(seeds, "CPU")
    noise = _draw(generators, tuple(init.shape[1:]))
    xi = init + noise * sigma_sched[0]
    if extra_noise > 0:  # A1111's "Extra noise": the same noise once more
        xi = xi + noise * extra_noise

    function_name, kwargs = KDIFFUSION_SAMPLERS[name]
    extra = dict(kwargs)
    if function_name in ("sample_dpm_fast", "sample_dpm_adaptive"):
        extra.update(sigma_min=sigma_sched[-2], sigma_max=sigma_sched[0])
        if function_name == "sample_dpm_fast":
            extra["n"] = len(sigma_sched) - 1
    else:
        extra["sigmas"] = sigma_sched
    if "SDE" in name:  # A1111's create_noise_sampler: the whole schedule's range
        extra["noise_sampler"] = sampling.BrownianTreeNoiseSampler(init, sigmas[sigmas > 0].min(),
                                                                   sigmas.max(), seed=seeds)
    out = run_with_image_noise(sampling, generators, function_name,
                               a1111_cfg_denoiser(inner, cond, uncond, params.cfg_scale), xi, **extra)
    return out, t_enc + 1


def a1111_timesteps(steps: int) -> torch.Tensor:
    return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)


def run_oracle_timesteps(model: Any, params: Img2ImgParams, init: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A1111's CompVisSampler.sample_img2img + its ddim / plms (sd_samplers_timesteps_impl), restated."""
    cond, uncond = _conds(model, params)
    unet = _UNetLDM(model.pipe.unet, bool(params.use_downcasted_alpha_bar))  # fp16 alphas_cumprod when on
    alphas_cumprod = unet.alphas_cumprod
    steps, t_enc = a1111_setup_img2img_steps(params.steps, params.denoising_strength,
                                             fix_steps=bool(params.img2img_fix_steps))
    timesteps_all = a1111_timesteps(steps)
    timesteps = timesteps_all[:t_enc]
    a_start = alphas_cumprod[timesteps_all[t_enc]]
    generators = _a1111_generators(list(SEEDS), "CPU")
    noise = _draw(generators, tuple(init.shape[1:]))
    x = init * torch.sqrt(a_start) + noise * torch.sqrt(1 - a_start)
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    sqrt_one_minus = torch.sqrt(1 - alphas)

    def eps(x_t: torch.Tensor, t: float) -> torch.Tensor:
        both = unet.apply_model(torch.cat([x_t, x_t]), torch.tensor([t] * 4),
                                cond=torch.cat([cond.repeat(2, 1, 1), uncond.repeat(2, 1, 1)]))
        e_cond, e_uncond = both.chunk(2)
        return e_uncond + (e_cond - e_uncond) * params.cfg_scale

    def update(e: torch.Tensor, index: int, x_t: torch.Tensor) -> torch.Tensor:
        a_t, a_prev = alphas[index].item(), alphas_prev[index].item()
        pred_x0 = (x_t - sqrt_one_minus[index].item() * e) / math.sqrt(a_t)
        return math.sqrt(a_prev) * pred_x0 + math.sqrt(1.0 - a_prev) * e

    old_eps: list[torch.Tensor] = []
    with torch.no_grad():
        for i in range(len(timesteps) - 1):
            index = len(timesteps) - 1 - i
            e_t = eps(x, timesteps[index].item())
            if params.sampler_name == "DDIM":  # eta 0
                x = update(e_t, index, x)
                continue

            def heun_start(e_t: torch.Tensor = e_t, index: int = index, x: torch.Tensor = x) -> torch.Tensor:
                return eps(update(e_t, index, x), timesteps[max(index - 1, 0)].item())

            x = update(a1111_plms_eps(e_t, old_eps, heun_start), index, x)
    return x, t_enc + 1


def _close(ours: torch.Tensor, expected: torch.Tensor) -> None:
    # 1e-4 relative to the size of the latents (the random tiny UNet drives them far from 1)
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(ours / scale, expected.to(ours.dtype) / scale, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("name", "schedule", "strength", "fix_steps"), [
    ("Euler a", "Automatic", 0.3, False),
    ("Euler a", "Automatic", 0.75, False),
    ("DPM++ 2M", "Karras", 1.0, False),
    ("DPM++ 2M", "Karras", 0.5, True),
    ("DPM2 a", "Automatic", 0.6, False),
    ("DPM++ SDE", "Karras", 0.45, False),
    ("DPM fast", "Automatic", 0.7, False),
    # strength 0: A1111 makes one step from the smallest sigma (t_enc = 0)
    ("Euler", "Automatic", 0.0, False),
    ("DPM++ 2M", "Karras", 0.0, False),
    pytest.param("DPM++ 2M SDE", "Exponential", 0.4, True, marks=pytest.mark.slow),
    pytest.param("Heun", "Automatic", 0.55, False, marks=pytest.mark.slow),
])
def test_img2img_equals_a1111s_k_diffusion_img2img(sd1_model: Any, samplers: Any, name: str, schedule: str,
                                                    strength: float, fix_steps: bool) -> None:
    params = _params(sampler_name=name, scheduler=schedule, denoising_strength=strength,
                     img2img_fix_steps=fix_steps, sampler_path="A1111")
    init = _init_latents(sd1_model)
    expected, a1111_steps = run_oracle_kdiffusion(sd1_model, params, init)
    ours, reported = run_sdweb(sd1_model, samplers, params, init)
    _close(ours, expected)
    # the job reports A1111's count (its state.sampling_steps = t_enc + 1), each batch from 1 up
    assert {item.total_steps for item in reported} == {a1111_steps}
    assert params.denoising_steps == a1111_steps
    if name not in ("Heun", "DPM fast", "DPM++ SDE"):  # one report per step (these report per model call)
        assert [item.step for item in reported] == list(range(1, a1111_steps + 1))


@pytest.mark.parametrize(("steps", "strength", "fix_steps", "expected"), [
    (20, 0.75, False, (20, 15)), (20, 1.0, False, (20, 19)), (20, 0.3, False, (20, 6)),
    (10, 0.05, False, (10, 0)), (20, 0.5, True, (40, 19)), (20, 0.3, True, (66, 19)),
    (20, 1.0, True, (20, 19)), (20, 0.0, False, (20, 0)),
])
def test_step_counts_are_a1111s(steps: int, strength: float, fix_steps: bool,
                                expected: tuple[int, int]) -> None:
    params = Img2ImgParams(steps=steps, denoising_strength=strength, img2img_fix_steps=fix_steps)
    assert params.a1111_img2img_steps == expected == a1111_setup_img2img_steps(steps, strength,
                                                                                 fix_steps=fix_steps)
    assert params.denoising_steps == expected[1] + 1
    assert params.model_copy(update={"sampler_path": "diffusers"}).denoising_steps == int(steps * strength)


@pytest.mark.parametrize(("name", "strength", "fix_steps", "downcast"), [
    ("DDIM", 0.5, False, False), ("DDIM", 0.8, True, False), ("PLMS", 0.7, False, False),
    ("PLMS", 1.0, False, False),
    # "Downcast alphas_cumprod": A1111 noises the init latents with fp16 sqrt(alpha), sqrt(1 - alpha)
    ("DDIM", 0.5, False, True), ("PLMS", 0.7, False, True)])
def test_ddim_and_plms_img2img_equal_a1111s(sd1_model: Any, samplers: Any, name: str, strength: float,
                                             fix_steps: bool, downcast: bool) -> None:
    params = _params(sampler_name=name, denoising_strength=strength, img2img_fix_steps=fix_steps,
                     sampler_path="A1111", steps=7, use_downcasted_alpha_bar=downcast)
    init = _init_latents(sd1_model)
    expected, a1111_steps = run_oracle_timesteps(sd1_model, params, init)
    ours, reported = run_sdweb(sd1_model, samplers, params, init)
    _close(ours, expected)
    # A1111 counts t_enc + 1 steps for them too, and makes t_enc - 1 model steps
    assert {item.total_steps for item in reported} == {a1111_steps}
    assert [item.step for item in reported] == list(range(1, a1111_steps - 1))


def test_hires_second_pass_equals_a1111s(sd1_model: Any, samplers: Any) -> None:
    """txt2img at 64, "Latent" upscale to 96, then A1111's second pass: exactly hr_second_pass_steps steps
    on a steps / strength schedule, whatever img2img_fix_steps says."""
    params = tiny_params(enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", steps=4, hr_second_pass_steps=3,
                         denoising_strength=0.4, sampler_name="Euler a", batch_size=2, cfg_scale=6.0,
                         img2img_fix_steps=False, sampler_path="A1111")
    reported: list[StepProgress] = []
    run = run_hires_txt2img(sd1_model, params, samplers=samplers, control=JobControl(),
                            on_step=reported.append)
    # the first pass (the txt2img loop, itself pinned to A1111's), upscaled as A1111's "Latent"
    first = run_txt2img(sd1_model, params.model_copy(update={"enable_hr": False}), samplers=samplers,
                        control=JobControl(), on_step=lambda _: None, output_type="latent")
    latents = torch.cat([item.image for item in first.images])
    side = 96 // int(sd1_model.pipe.vae_scale_factor)
    upscaled = torch.nn.functional.interpolate(latents, size=(side, side), mode="bilinear")
    second = _params(**{**params.model_dump(), "enable_hr": False, "width": 96, "height": 96, "steps": 3})
    expected, a1111_steps = run_oracle_kdiffusion(sd1_model, second, upscaled, requested=3)
    assert a1111_steps == 3
    vae = sd1_model.pipe.vae
    with torch.no_grad():
        pictures = [to_pil(vae.decode(expected[i:i + 1] / vae.config.scaling_factor, return_dict=False)[0][0])
                    for i in range(2)]
    for ours, theirs in zip(run.images, pictures, strict=True):
        assert np.abs(np.asarray(ours.image, np.int16) - np.asarray(theirs, np.int16)).max() <= 1
    # progress: 4 first-pass steps, then the 3 of the second pass, out of 7
    assert [(item.step, item.total_steps) for item in reported] == [(i, 7) for i in range(1, 8)]


def test_prompt_editing_counts_img2img_steps_from_0_as_a1111(sd1_model: Any, samplers: Any) -> None:
    """A1111's denoiser counts its calls from 0 in every img2img run, against a schedule of ``steps``:
    at 10 steps and strength 0.5 the run makes 6 steps, 0..5, so ``[a cat:a dog:5]`` never reaches the
    dog, and ``[a cat:a dog:2]`` does from the run's fourth step."""
    init = _init_latents(sd1_model)

    def run(prompt: str) -> torch.Tensor:
        params = _params(prompt=prompt, steps=10, denoising_strength=0.5, sampler_name="Euler",
                         sampler_path="A1111")
        return run_sdweb(sd1_model, samplers, params, init)[0]

    cat = run("a cat")
    assert torch.equal(run("[a cat:a dog:5]"), cat)
    late = run("[a cat:a dog:2]")
    assert not torch.allclose(late, cat, atol=1e-4)
    assert not torch.allclose(late, run("a dog"), atol=1e-4)


@pytest.mark.parametrize("name", ["DDIM", "DPM adaptive", "Euler"])
def test_strength_0_keeps_the_init_where_a1111_makes_no_step(sd1_model: Any, samplers: Any,
                                                             name: str) -> None:
    """DDIM (no timestep to sample on), DPM adaptive (an empty range) and any sampler with
    img2img_fix_steps (a schedule of 0 steps) leave the init latents as they are."""
    params = _params(sampler_name=name, denoising_strength=0.0, sampler_path="A1111",
                     img2img_fix_steps=name == "Euler")
    init = _init_latents(sd1_model)
    ours, reported = run_sdweb(sd1_model, samplers, params, init)
    assert torch.equal(ours, init) and reported == []


def test_extra_noise_adds_a1111s_noise_to_the_start(sd1_model: Any, samplers: Any) -> None:
    """A1111's "Extra noise multiplier for img2img and hires fix": ``xi += noise * multiplier``."""
    params = _params(sampler_name="Euler a", denoising_strength=0.5, sampler_path="A1111",
                     img2img_extra_noise=0.3)
    init = _init_latents(sd1_model)
    expected, _steps = run_oracle_kdiffusion(sd1_model, params, init, extra_noise=0.3)
    ours, _reported = run_sdweb(sd1_model, samplers, params, init)
    _close(ours, expected)
    plain, _reported = run_sdweb(sd1_model, samplers, params.model_copy(update={"img2img_extra_noise": 0.0}),
                                 init)
    assert not torch.allclose(plain, ours, atol=1e-4)

"""A1111's schedule settings: rho, min/max sigma, Beta's shape, "Always discard next-to-last sigma" and the
SGM noise multiplier, checked against k-diffusion itself (the functions A1111 calls with them:
modules/sd_samplers_kdiffusion.py ``get_sigmas`` and ``sample``, restated from their behaviour).
"""

from __future__ import annotations

from typing import Any

import torch

from sdweb.engine.encode import PromptEncoder
from sdweb.engine.generate import run_txt2img
from sdweb.params import JobControl
from tests.engine.conftest import tiny_params
from tests.engine.kdiffusion_oracle import load
from tests.engine.test_kdiffusion_parity import _a1111_generators, _draw, _UNetLDM, a1111_cfg_denoiser


def _plan(samplers: Any, sd1_model: Any, name: str, schedule: str, **settings: Any) -> Any:
    from sdweb.engine.generate import schedule_tuning

    params = tiny_params(sampler_name=name, scheduler=schedule, **settings)
    return samplers.build(name, schedule, sd1_model.pipe.scheduler.config, tuning=schedule_tuning(params))


def test_karras_takes_rho_and_the_sigma_range_and_discard_applies_to_any_sampler(sd1_model: Any,
                                                                                samplers: Any) -> None:
    sampling, external = load()
    inner = external.CompVisDenoiser(_UNetLDM(sd1_model.pipe.unet), quantize=True)
    ours = _plan(samplers, sd1_model, "Euler", "Karras", rho=5.0, sigma_min=0.1, sigma_max=10.0).sigmas(6)
    torch.testing.assert_close(ours, sampling.get_sigmas_karras(6, 0.1, 10.0, rho=5.0), atol=1e-6, rtol=0)
    # 0 = the model's range and the schedule type's own rho (7): A1111's defaults
    default = _plan(samplers, sd1_model, "Euler", "Karras").sigmas(6)
    expected = sampling.get_sigmas_karras(6, float(inner.sigmas[0]), float(inner.sigmas[-1]), rho=7.0)
    torch.testing.assert_close(default, expected, atol=1e-5, rtol=0)
    # "Always discard next-to-last sigma": one step more, the penultimate sigma dropped (Euler too)
    discarded = _plan(samplers, sd1_model, "Euler", "Karras",
                      always_discard_next_to_last_sigma=True).sigmas(6)
    longer = sampling.get_sigmas_karras(7, float(inner.sigmas[0]), float(inner.sigmas[-1]), rho=7.0)
    torch.testing.assert_close(discarded, torch.cat([longer[:-2], longer[-1:]]), atol=1e-5, rtol=0)
    # Beta's shape
    beta = _plan(samplers, sd1_model, "Euler", "Beta").sigmas(6)
    reshaped = _plan(samplers, sd1_model, "Euler", "Beta", beta_dist_alpha=0.3).sigmas(6)
    assert not torch.allclose(beta, reshaped)


def test_sgm_noise_multiplier_starts_txt2img_at_a1111s_level(sd1_model: Any, samplers: Any) -> None:
    params = tiny_params(sampler_name="Euler", steps=3, batch_size=2, cfg_scale=6.0, sampler_path="A1111",
                         sgm_noise_multiplier=True)
    run = run_txt2img(sd1_model, params, samplers=samplers, control=JobControl(), on_step=lambda _: None,
                      output_type="latent")
    ours = torch.cat([image.image for image in run.images])

    sampling, external = load()
    inner = external.CompVisDenoiser(_UNetLDM(sd1_model.pipe.unet), quantize=True)
    cond, uncond = (item.hidden for item in PromptEncoder(sd1_model.pipe, device="cpu", dtype=torch.float32)
                    .encode_texts([params.prompt, params.negative_prompt], clip_skip=1))
    sigmas = inner.get_sigmas(params.steps)
    generators = _a1111_generators([params.seed, params.seed + 1], "CPU")
    x = _draw(generators, tuple(ours.shape[1:])) * torch.sqrt(1.0 + sigmas[0] ** 2.0)
    with torch.no_grad():
        expected = sampling.sample_euler(a1111_cfg_denoiser(inner, cond, uncond, params.cfg_scale), x, sigmas,
                                         disable=True)
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(ours / scale, expected / scale, atol=1e-5, rtol=0)
    plain = run_txt2img(sd1_model, params.model_copy(update={"sgm_noise_multiplier": False}),
                        samplers=samplers, control=JobControl(), on_step=lambda _: None, output_type="latent")
    assert not torch.allclose(torch.cat([image.image for image in plain.images]), ours, atol=1e-4)

"""A1111's CFG skipping: which model calls run without the negative prompt.

"Ignore negative prompt during early sampling" (``skip_early_cond``, infotext "Skip Early CFG") and
"Negative Guidance minimum sigma" (``s_min_uncond``, "NGMS"; ``s_min_uncond_all``, "NGMS all steps"): A1111's
CFGDenoiser leaves the negative prompt out of a call and combines at scale 1 with the prompt's output in its
place. The rule is restated below from A1111 1.10's sd_samplers_cfg_denoiser (read as facts); the tiny SD
UNet's calls are counted by their batch rows.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from sdweb.engine.generate import run_txt2img
from sdweb.engine.samplers.registry import FunctionSamplerPlan, SamplerRegistry
from sdweb.params import JobControl
from tests.engine.conftest import tiny_params


def a1111_skips(step: int, total_steps: int, level: float, *, skip_early_cond: float, s_min_uncond: float,
                s_min_uncond_all: bool) -> bool:
    """A1111's CFGDenoiser: ``step`` counts its calls from 0; ``total_steps`` is the pass's steps, twice
    that for second-order samplers; ``level`` the sigma (the timestep for DDIM / PLMS / UniPC)."""
    if skip_early_cond != 0.0 and step / total_steps <= skip_early_cond:
        return True
    return bool((step % 2 or s_min_uncond_all) and s_min_uncond > 0 and level < s_min_uncond)


def call_sigmas(sigmas: torch.Tensor, name: str) -> list[float]:
    """The sigma of each model call: one a step, and Heun's second at the next level (not to 0)."""
    levels = [float(value) for value in sigmas]
    calls: list[float] = []
    for i in range(len(levels) - 1):
        calls.append(levels[i])
        if name == "Heun" and levels[i + 1] > 0:
            calls.append(levels[i + 1])
    return calls


def run(model: Any, samplers: SamplerRegistry, **changes: Any) -> tuple[torch.Tensor, list[int], list[float]]:
    """The final latents, the batch rows of each UNet call and the timestep it was given."""
    params = tiny_params(**changes)
    rows: list[int] = []
    timesteps: list[float] = []

    def count(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        rows.append(int(sample.shape[0]))
        timesteps.append(float(torch.as_tensor(timestep).flatten()[0]))

    handle = model.pipe.unet.register_forward_pre_hook(count, with_kwargs=True)
    try:
        result = run_txt2img(model, params, samplers=samplers, control=JobControl(), on_step=lambda _: None,
                             output_type="latent")
    finally:
        handle.remove()
    return torch.cat([image.image for image in result.images]), rows, timesteps


def expected_rows(samplers: SamplerRegistry, model: Any, name: str, steps: int, batch: int,
                  timesteps: list[float], **settings: Any) -> list[int]:
    plan = samplers.build(name, "Automatic", model.pipe.scheduler.config)
    assert isinstance(plan, FunctionSamplerPlan)
    second_order = bool(plan.sampler.options.get("second_order"))
    if plan.sampler.options.get("timesteps"):
        levels = timesteps  # A1111's timestep samplers compare the UNet's timestep
    else:
        levels = call_sigmas(plan.sigmas(steps), name)
    assert len(levels) == len(timesteps)
    total = steps * (2 if second_order else 1)
    return [batch if a1111_skips(i, total, level, **settings) else 2 * batch
            for i, level in enumerate(levels)]


SETTINGS = dict(skip_early_cond=0.0, s_min_uncond=0.0, s_min_uncond_all=False)


@pytest.mark.parametrize(("name", "steps", "settings"), [
    ("Euler", 6, {"s_min_uncond": 3.0}),  # every other call below sigma 3
    ("Euler a", 6, {"s_min_uncond": 3.0, "s_min_uncond_all": True}),  # every call below it
    ("Heun", 4, {"skip_early_cond": 0.3}),  # 8 calls expected: the first three (0/8 .. 2/8 <= 0.3)
    ("Heun", 4, {"skip_early_cond": 0.2, "s_min_uncond": 1.0}),
    ("DDIM", 5, {"s_min_uncond": 500.0}),  # DDIM compares the timestep, as A1111's
])
def test_the_calls_a1111_skips_run_without_the_negative_prompt(sd1_model: Any, samplers: SamplerRegistry,
                                                              name: str, steps: int,
                                                              settings: dict[str, Any]) -> None:
    settings = {**SETTINGS, **settings}
    skipped, rows, timesteps = run(sd1_model, samplers, sampler_name=name, steps=steps, batch_size=2,
                                   **settings)
    assert rows == expected_rows(samplers, sd1_model, name, steps, 2, timesteps, **settings)
    assert 2 in rows and 4 in rows, "some calls skip the negative prompt, others do not"
    plain, plain_rows, _ = run(sd1_model, samplers, sampler_name=name, steps=steps, batch_size=2)
    assert set(plain_rows) == {4}
    assert float((plain - skipped).abs().max()) > 1e-4, "skipping changes the image"


def test_skipping_every_call_is_guidance_scale_one(sd1_model: Any, samplers: SamplerRegistry) -> None:
    """A skipped call combines at scale 1 with the prompt's output for the negative one: all skipped is
    the image of CFG scale 1 (no negative prompt at all)."""
    skipped, rows, _ = run(sd1_model, samplers, steps=3, cfg_scale=7.0, skip_early_cond=1.0)
    assert rows == [1, 1, 1]
    unguided, unguided_rows, _ = run(sd1_model, samplers, steps=3, cfg_scale=1.0)
    assert unguided_rows == [1, 1, 1]
    torch.testing.assert_close(skipped, unguided, atol=1e-5, rtol=0)


def test_skipping_with_prompt_and_negative_of_different_lengths(sd1_model: Any,
                                                                samplers: SamplerRegistry) -> None:
    """A prompt over 75 tokens beside a short negative: A1111 runs them with their own lengths; a skipped
    call runs the prompt's rows alone (its own keys), AND parts combined at scale 1."""
    long_prompt = "a photo of a red cat sitting on a wooden chair, " * 12 + "AND a dog :0.5"
    settings = {**SETTINGS, "s_min_uncond": 3.0}
    skipped, rows, timesteps = run(sd1_model, samplers, prompt=long_prompt, steps=6, batch_size=2,
                                   **settings)
    full = [6 if n == 4 else 4 for n in expected_rows(samplers, sd1_model, "Euler", 6, 2, timesteps,
                                                       **settings)]
    assert rows == full  # 2 AND parts + negative per image, 2 images; skipped: the parts only
    assert torch.isfinite(skipped).all()


def test_a_pasted_infotext_remakes_an_image_made_with_them(sd1_model: Any, samplers: SamplerRegistry) -> None:
    """Sigma churn and NGMS written by one image and read back from its infotext make the same image; the
    same infotext without those keys makes another."""
    from sdweb.images.infotext import build_infotext, infotext_to_params, parse_infotext
    from sdweb.params import CFG_SKIP_INFOTEXT, SIGMA_DEFAULTS

    made = dict(sampler_name="Euler", steps=5, s_churn=2.0, s_noise=0.98, s_min_uncond=3.0)
    original, _rows, _ = run(sd1_model, samplers, **made)
    params = tiny_params(**made)
    text = build_infotext(params, seed=params.seed, subseed=params.subseed, model_name="m", model_hash="h",
                          rng="CPU", version="v")
    assert "Sigma churn: 2, Sigma noise: 0.98" in text and "NGMS: 3" in text
    names = ("prompt", "negative_prompt", "sampler_name", "steps", "seed", "cfg_scale", *SIGMA_DEFAULTS,
             *CFG_SKIP_INFOTEXT)

    def remake(infotext: str) -> torch.Tensor:
        back, _extras = infotext_to_params(parse_infotext(infotext))
        latents, _rows, _ = run(sd1_model, samplers, **{name: getattr(back, name) for name in names})
        return latents

    torch.testing.assert_close(remake(text), original, atol=0, rtol=0)
    stripped = ", ".join(pair for pair in text.split(", ") if not pair.startswith(("Sigma", "NGMS")))
    assert float((remake(stripped) - original).abs().max()) > 1e-3


def test_img2img_counts_its_own_calls_and_steps(sd1_model: Any, samplers: SamplerRegistry) -> None:
    """img2img (A1111's sample_img2img): the denoiser counts from 0 and its total is the t_enc + 1 steps
    run (Heun: twice that), not the schedule's; NGMS compares the sigmas of the schedule's tail."""
    import numpy as np
    from PIL import Image

    from sdweb.engine.img2img import run_img2img
    from sdweb.params import Img2ImgParams

    picture = Image.fromarray(np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8))
    for name, settings in (("Euler", {"skip_early_cond": 0.3}), ("Heun", {"skip_early_cond": 0.25}),
                           ("Euler", {"s_min_uncond": 2.0})):
        params = Img2ImgParams(**{**tiny_params(sampler_name=name, steps=8).model_dump(),
                                  "denoising_strength": 0.5, **settings})
        rows: list[int] = []

        def count(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                  rows: list[int] = rows) -> None:
            rows.append(int((args[0] if args else kwargs["sample"]).shape[0]))

        handle = sd1_model.pipe.unet.register_forward_pre_hook(count, with_kwargs=True)
        try:
            run_img2img(sd1_model, params, [picture], samplers=samplers, control=JobControl(),
                        on_step=lambda _: None)
        finally:
            handle.remove()
        run_steps = int(0.5 * 8) + 1  # t_enc + 1
        plan = samplers.build(name, "Automatic", sd1_model.pipe.scheduler.config)
        tail = plan.sigmas(8)[8 - run_steps:]  # the last t_enc + 2 sigmas
        levels = call_sigmas(tail, name)
        total = run_steps * (2 if name == "Heun" else 1)
        expected = [1 if a1111_skips(i, total, level, **{**SETTINGS, **settings}) else 2
                    for i, level in enumerate(levels)]
        assert rows == expected, (name, settings)
        assert 1 in rows and 2 in rows


def test_diffusers_path_euler_takes_the_sampler_parameters_too(sd1_model: Any,
                                                               samplers: SamplerRegistry) -> None:
    """sdweb's diffusers path: its Euler scheduler's step takes s_churn ... (the infotext says so); the
    others' steps take none (nothing written for them)."""
    from sdweb.images.infotext import build_infotext

    plain, _rows, _ = run(sd1_model, samplers, sampler_path="diffusers", steps=4)
    churned, _rows, _ = run(sd1_model, samplers, sampler_path="diffusers", steps=4, s_churn=2.0)
    assert float((plain - churned).abs().max()) > 1e-3
    for name, written in (("Euler", True), ("Heun", False)):
        params = tiny_params(sampler_path="diffusers", sampler_name=name, s_churn=2.0)
        text = build_infotext(params, seed=1, subseed=2, model_name="m", model_hash="h", version="v")
        assert ("Sigma churn: 2" in text) == written

"""Prompt editing (``[a:b:N]``) on A1111's timeline: model calls, not steps.

A1111's CFG denoiser reconstructs the conditioning for ``self.step`` and adds 1 after every call
(modules/sd_samplers_cfg_denoiser.py), against a prompt schedule of ``total_steps``: ``steps``, doubled for
the samplers it marks ``second_order`` (Heun, DPM2, DPM2 a, DPM++ 2S a, DPM++ SDE, Restart;
``SamplerData.total_steps``). Hires fix's second pass counts its own calls from 0 along a timeline that
goes on from the first pass's (``calculate_hr_conds``: the first pass's total, then the second's).

The oracle is k-diffusion itself driving the tiny UNet, as in ``test_kdiffusion_parity.py``, with a
denoiser that switches its conditioning after the call A1111's would.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from sdweb.engine.encode import PromptEncoder
from sdweb.engine.generate import run_txt2img
from sdweb.engine.hires import run_hires_txt2img
from sdweb.params import JobControl
from tests.engine.conftest import tiny_params
from tests.engine.kdiffusion_oracle import load
from tests.engine.test_kdiffusion_parity import (
    A1111_DEFAULT_SCHEDULE,
    DISCARD,
    KDIFFUSION_SAMPLERS,
    _a1111_generators,
    _draw,
    _UNetLDM,
    a1111_schedule,
    run_with_image_noise,
)


def counting_cfg_denoiser(inner: Any, conds: list[torch.Tensor], uncond: torch.Tensor, cfg_scale: float,
                          last_call_of_first: int) -> tuple[Any, list[int]]:
    """A1111's CFGDenoiser with ``[first:second:N]``: ``conds[0]`` up to call ``last_call_of_first``
    (counted from 0), ``conds[1]`` after it. Returns the denoiser and the list of prompts it used."""
    used: list[int] = []

    def cfg_denoiser(x_in: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        which = 0 if len(used) <= last_call_of_first else 1
        used.append(which)
        cond = conds[which]
        both = inner(torch.cat([x_in, x_in]), torch.cat([sigma, sigma]),
                     cond=torch.cat([cond.repeat(2, 1, 1), uncond.repeat(2, 1, 1)]))
        denoised_cond, denoised_uncond = both.chunk(2)
        return denoised_uncond + (denoised_cond - denoised_uncond) * cfg_scale

    return cfg_denoiser, used


@pytest.mark.parametrize(("name", "when", "last_call_of_cat", "calls"), [
    # Heun, 4 steps: 7 calls on a timeline of 8; "3" ends the cat after call 3 (mid step 2), where
    # counting steps would have kept the cat for the whole run.
    ("Heun", "3", 3, 7),
    # A fraction is of the doubled timeline: 0.5 * 8 = 4.
    ("Heun", "0.5", 4, 7),
    # DPM2 discards the penultimate sigma: 4 steps, the last one Euler's, on a timeline of 8.
    ("DPM2", "2", 2, 7),
    # First-order samplers: one call a step, a timeline of steps.
    ("Euler", "2", 2, 4),
])
def test_prompt_editing_switches_after_the_model_call_a1111s_would(
        sd1_model: Any, samplers: Any, name: str, when: str, last_call_of_cat: int, calls: int) -> None:
    params = tiny_params(sampler_name=name, steps=4, batch_size=2, cfg_scale=6.0,
                         prompt=f"[a cat:a dog:{when}]", sampler_path="A1111")
    run = run_txt2img(sd1_model, params, samplers=samplers, control=JobControl(), on_step=lambda _: None,
                      output_type="latent")
    ours = torch.cat([image.image for image in run.images])

    sampling, external = load()
    pipe = sd1_model.pipe
    cat, dog, uncond = (item.hidden for item in PromptEncoder(pipe, device="cpu", dtype=torch.float32)
                        .encode_texts(["a cat", "a dog", params.negative_prompt], clip_skip=1))
    inner = external.CompVisDenoiser(_UNetLDM(pipe.unet), quantize=True)
    n = params.steps + 1 if name in DISCARD else params.steps
    sigmas = a1111_schedule(A1111_DEFAULT_SCHEDULE.get(name, "Uniform"), n, inner, sampling)
    if name in DISCARD:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    generators = _a1111_generators([params.seed, params.seed + 1], "CPU")
    x = _draw(generators, tuple(ours.shape[1:])) * sigmas[0]
    denoiser, used = counting_cfg_denoiser(inner, [cat, dog], uncond, params.cfg_scale, last_call_of_cat)
    function_name, kwargs = KDIFFUSION_SAMPLERS[name]
    expected = run_with_image_noise(sampling, generators, function_name, denoiser, x, sigmas=sigmas, **kwargs)
    assert len(used) == calls and used.count(0) == last_call_of_cat + 1  # the oracle did switch
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(ours / scale, expected / scale, atol=1e-5, rtol=0)


def _hires(sd1_model: Any, samplers: Any, **changes: Any) -> list[np.ndarray]:
    params = tiny_params(enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", steps=4, hr_second_pass_steps=4,
                         denoising_strength=0.6, sampler_name="Euler", cfg_scale=6.0, sampler_path="A1111",
                         **changes)
    run = run_hires_txt2img(sd1_model, params, samplers=samplers, control=JobControl(),
                            on_step=lambda _: None)
    return [np.asarray(item.image, np.int16) for item in run.images]


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_hires_second_pass_goes_on_along_the_first_pass_timeline(sd1_model: Any, samplers: Any) -> None:
    """A1111: a fraction below 1 is over by the second pass (``(0.5 - 1) * steps`` < 1), so the second pass
    draws the dog throughout; an integer past the first pass's 4 steps counts into the second pass."""
    edited = "[a cat:a dog:0.5]"
    assert _same(_hires(sd1_model, samplers, prompt=edited),
                 _hires(sd1_model, samplers, prompt=edited, hr_prompt="a dog"))
    # [a cat:a dog:6]: the first pass is all cat; the second pass switches after its call 6 - 4 = 2, so
    # it is neither all cat nor all dog.
    late = _hires(sd1_model, samplers, prompt="[a cat:a dog:6]")
    assert not _same(late, _hires(sd1_model, samplers, prompt="a cat"))
    assert not _same(late, _hires(sd1_model, samplers, prompt="a cat", hr_prompt="a dog"))
    # ... and equals the run whose second pass has the same switch on its own timeline (1.5: halfway, 2).
    assert _same(late, _hires(sd1_model, samplers, prompt="a cat", hr_prompt="[a cat:a dog:1.5]"))


# -- "Old prompt editing timelines" (use_old_scheduling), from a pasted infotext ----------------------------

_EDITED = "[a cat:a dog:3.0]"  # old timelines: step 3; A1111 1.6+: 3.0 is a fraction, past the end (all cat)


def _latents(model: Any, samplers: Any, params: Any) -> torch.Tensor:
    run = run_txt2img(model, params, samplers=samplers, control=JobControl(), on_step=lambda _: None,
                      output_type="latent")
    return torch.cat([item.image for item in run.images])


def _pasted(text: str) -> Any:
    from sdweb.images.infotext import infotext_to_params, parse_infotext
    from sdweb.images.infotext_versions import version_backcompat

    params, _extras = infotext_to_params(version_backcompat(parse_infotext(text)), gpu_rng="CPU")
    return params.model_copy(update={"subseed": 99})  # what the service resolves -1 to (tiny_params' value)


def test_a_pasted_old_timelines_infotext_makes_the_image_the_setting_makes(sd1_model: Any,
                                                                          samplers: Any) -> None:
    by_hand = tiny_params(prompt=_EDITED, steps=6, seed=77, use_old_scheduling=True)
    line = "Steps: 6, Sampler: Euler, Schedule type: Automatic, CFG scale: 7, Seed: 77, Size: 64x64, RNG: CPU"
    pasted = _pasted(f"{_EDITED}\nNegative prompt: blurry\n{line}, Old prompt editing timelines: True, "
                     "Version: v1.10.1")
    assert pasted.use_old_scheduling is True
    expected = _latents(sd1_model, samplers, by_hand)
    assert torch.equal(_latents(sd1_model, samplers, pasted), expected)
    # An A1111 1.5 picture had the old timelines without writing the key (its Version says so); fp16 alphas
    # too, so that one is compared with the settings it implies.
    old = _pasted(f"{_EDITED}\nNegative prompt: blurry\n{line}, Version: v1.5.1")
    assert (old.use_old_scheduling, old.use_downcasted_alpha_bar) == (True, True)
    old_by_hand = by_hand.model_copy(update={"use_downcasted_alpha_bar": True})
    assert torch.equal(_latents(sd1_model, samplers, old), _latents(sd1_model, samplers, old_by_hand))
    # Without the setting the timelines differ (all cat): another image.
    new = _pasted(f"{_EDITED}\nNegative prompt: blurry\n{line}, Version: v1.10.1")
    assert new.use_old_scheduling is False
    assert not torch.allclose(_latents(sd1_model, samplers, new), expected, atol=1e-4)
    assert torch.equal(_latents(sd1_model, samplers, new),
                       _latents(sd1_model, samplers, tiny_params(prompt="a cat", steps=6, seed=77)))


def test_the_old_timelines_key_is_written_only_where_they_changed_the_schedule(sd1_model: Any,
                                                                              samplers: Any) -> None:
    """As A1111 (get_conds_with_caching): with the setting on, "Old prompt editing timelines: True" goes into
    the infotext only when the old and the new timelines differ for the job's prompts."""
    from sdweb.images.infotext import build_infotext

    def infotext(prompt: str) -> str:
        params = tiny_params(prompt=prompt, steps=6, seed=77, use_old_scheduling=True)
        run = run_txt2img(sd1_model, params, samplers=samplers, control=JobControl(), on_step=lambda _: None,
                          output_type="latent")
        image = run.images[0]
        return build_infotext(params, seed=image.seed, subseed=image.subseed, model_name="m", model_hash="h",
                              rng="CPU", extra=image.extra, version="0.1.0")

    assert "Old prompt editing timelines: True" in infotext(_EDITED)
    assert "Old prompt editing timelines" not in infotext("a cat")  # nothing to schedule
    assert "Old prompt editing timelines" not in infotext("[a cat:a dog:0.5]")  # the same on both timelines
    # hires fix: [a:b:0.5] is the same on both timelines in the first pass, not in the second (the old ones
    # restart the fraction there); A1111 writes the key when either pass's schedules changed.
    for prompt, written in (("[a cat:a dog:0.5]", True), ("a cat", None)):
        params = tiny_params(enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", steps=4,
                             hr_second_pass_steps=4, denoising_strength=0.6, prompt=prompt,
                             use_old_scheduling=True)
        run = run_hires_txt2img(sd1_model, params, samplers=samplers, control=JobControl(),
                                on_step=lambda _: None)
        assert run.images[0].extra.get("Old prompt editing timelines") is written

"""A prompt and a negative prompt of different lengths (chunk counts) give A1111's image.

A1111's CFG denoiser (modules/sd_samplers_cfg_denoiser.py, restated from its behaviour): with its defaults
it runs the UNet on the prompt rows and on the negative rows apart, each with its own length; "Pad conds"
(``pad_cond_uncond``) pads the shorter with the empty prompt's chunk; "Pad conds v0" repeats the negative
prompt's last vector up to the prompt's length, or cuts it. The oracle here is k-diffusion's Euler with
such a denoiser over the tiny UNet (as test_kdiffusion_parity.py).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from sdweb.engine.cond_pairing import key_mask, pair_conds, repeat_last
from sdweb.engine.encode import PromptEncoder
from sdweb.engine.generate import run_txt2img
from sdweb.params import JobControl
from tests.engine.conftest import tiny_params
from tests.engine.kdiffusion_oracle import load
from tests.engine.test_kdiffusion_parity import _a1111_generators, _draw, _UNetLDM, a1111_schedule

LONG = ", ".join(["a red house on a green hill under a blue sky"] * 9)  # over 75 tokens: 2 chunks
SHORT = "blurry"


def test_pairing_follows_a1111s_three_ways() -> None:
    dim = 4
    cond = torch.arange(2 * 154 * dim, dtype=torch.float32).reshape(2, 154, dim)[:1]
    uncond = torch.full((1, 77, dim), -1.0)
    empty = torch.full((1, 77, dim), 7.0)
    apart = pair_conds([cond], uncond, empty_chunk=empty)
    assert apart.key_lengths == (77, 154) and apart.uncond is not None and apart.uncond.shape[1] == 154
    assert torch.equal(apart.uncond[:, :77], uncond)
    padded = pair_conds([cond], uncond, empty_chunk=empty, pad=True)
    assert padded.key_lengths is None and padded.uncond is not None
    assert torch.equal(padded.uncond[:, 77:], empty)
    v0 = pair_conds([cond], uncond, empty_chunk=empty, pad=True, pad_v0=True)
    assert v0.key_lengths is None and v0.uncond is not None and bool((v0.uncond == -1.0).all())
    # v0 cuts a longer negative prompt to the prompt's length
    cut = pair_conds([uncond], cond, empty_chunk=empty, pad_v0=True)
    assert cut.uncond is not None and torch.equal(cut.uncond, cond[:, :77])
    # AND parts of different lengths: the shorter repeats its last vector (no mask for that)
    parts = pair_conds([cond, uncond], None, empty_chunk=empty)
    assert parts.key_lengths is None and torch.equal(parts.conds[1], repeat_last(uncond, 154))
    mask = key_mask((77, 154), length=154, batch_size=2, device="cpu")
    assert mask.shape == (4, 154) and mask[:2].sum() == 2 * 77 and mask[2:].sum() == 2 * 154


def _oracle(sd1_model: Any, params: Any, cond: torch.Tensor, uncond: torch.Tensor,
            shape: tuple[int, ...]) -> torch.Tensor:
    """k-diffusion Euler, A1111's CFG with prompt and negative run apart (each its own length)."""
    sampling, external = load()
    inner = external.CompVisDenoiser(_UNetLDM(sd1_model.pipe.unet), quantize=True)
    sigmas = a1111_schedule("Uniform", params.steps, inner, sampling)
    generators = _a1111_generators([params.seed, params.seed + 1], "CPU")
    x = _draw(generators, shape) * sigmas[0]

    def cfg(x_in: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        n = x_in.shape[0]
        denoised_cond = inner(x_in, sigma, cond=cond.repeat(n, 1, 1))
        denoised_uncond = inner(x_in, sigma, cond=uncond.repeat(n, 1, 1))
        return denoised_uncond + (denoised_cond - denoised_uncond) * params.cfg_scale

    with torch.no_grad():
        return sampling.sample_euler(cfg, x, sigmas, disable=True)


@pytest.mark.parametrize(("prompt", "negative", "mode"), [
    (LONG, SHORT, "apart"),
    (SHORT, LONG, "apart"),
    (LONG, SHORT, "pad"),
    (SHORT, LONG, "pad"),
    (LONG, SHORT, "v0"),
])
def test_prompt_and_negative_of_different_lengths_match_a1111(sd1_model: Any, samplers: Any, prompt: str,
                                                             negative: str, mode: str) -> None:
    params = tiny_params(prompt=prompt, negative_prompt=negative, sampler_name="Euler", steps=3, batch_size=2,
                         cfg_scale=6.0, sampler_path="A1111", pad_cond_uncond=mode == "pad",
                         pad_cond_uncond_v0=mode == "v0")
    run = run_txt2img(sd1_model, params, samplers=samplers, control=JobControl(), on_step=lambda _: None,
                      output_type="latent")
    ours = torch.cat([image.image for image in run.images])

    encoder = PromptEncoder(sd1_model.pipe, device="cpu", dtype=torch.float32)
    cond, uncond, empty = (item.own for item in encoder.encode_texts([prompt, negative, ""], clip_skip=1))
    assert cond.shape[1] != uncond.shape[1]  # the case under test: different chunk counts
    if mode == "pad":
        length = max(cond.shape[1], uncond.shape[1])
        cond, uncond = (torch.cat([item, empty.repeat(1, (length - item.shape[1]) // 77, 1)], dim=1)
                        for item in (cond, uncond))
    elif mode == "v0":
        uncond = torch.cat([uncond, uncond[:, -1:].repeat(1, cond.shape[1] - uncond.shape[1], 1)], dim=1)
    expected = _oracle(sd1_model, params, cond, uncond, tuple(ours.shape[1:]))
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(ours / scale, expected / scale, atol=1e-5, rtol=0)


def test_the_three_ways_give_three_images(sd1_model: Any, samplers: Any) -> None:
    def latents(**changes: Any) -> torch.Tensor:
        params = tiny_params(prompt=LONG, negative_prompt=SHORT, steps=2, cfg_scale=6.0, **changes)
        run = run_txt2img(sd1_model, params, samplers=samplers, control=JobControl(),
                          on_step=lambda _: None, output_type="latent")
        return run.images[0].image

    apart, padded, v0 = latents(), latents(pad_cond_uncond=True), latents(pad_cond_uncond_v0=True)
    assert not torch.allclose(apart, padded, atol=1e-4)
    assert not torch.allclose(apart, v0, atol=1e-4)
    assert not torch.allclose(padded, v0, atol=1e-4)

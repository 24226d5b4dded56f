"""Seamless tiling (``tiling=True``): the image wraps around, left edge continuing the right edge."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from sdweb.engine import generate
from sdweb.engine.generate import run_txt2img
from sdweb.engine.samplers.registry import SamplerRegistry
from sdweb.params import GenerationParams, JobControl
from tests.engine.conftest import TinyModel, tiny_params


def _image(model: TinyModel, samplers: SamplerRegistry, params: GenerationParams) -> np.ndarray:
    run = run_txt2img(model, params, samplers=samplers, control=JobControl(), on_step=lambda _: None)
    return np.asarray(run.images[0].image, dtype=np.float64)


def _rolled_noise(monkeypatch: pytest.MonkeyPatch, shift: int) -> None:
    """Make the loop start from the seed's noise rolled ``shift`` latent rows down and columns right."""
    real = generate.create_batch_noise

    def rolled(**kwargs: Any) -> Any:
        noise = real(**kwargs)
        noise.latents = torch.roll(noise.latents, shifts=(shift, shift), dims=(-2, -1))
        return noise

    monkeypatch.setattr(generate, "create_batch_noise", rolled)


def test_tiled_image_wraps_around_seamlessly(sd1_model: TinyModel, samplers: SamplerRegistry,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A seamless texture is an image on a torus: no column is an edge. With every conv padding
    circularly, rolling the starting noise by some columns rolls the finished image by as many
    pixels, the rows and columns that wrapped round included. Without tiling the edges differ.

    (The tiny random-weight model draws noise-like pixels, so comparing the pixel step across the
    seam with the steps between neighbours would prove nothing on it; this property does.)
    """
    params = tiny_params(steps=3, seed=7)
    scale = int(sd1_model.pipe.vae_scale_factor)
    shift = 2  # latent columns; a multiple of the UNet's total downsampling, so the grid lines up
    plain = _image(sd1_model, samplers, params)
    tiled = _image(sd1_model, samplers, params.model_copy(update={"tiling": True}))
    _rolled_noise(monkeypatch, shift)
    plain_rolled = _image(sd1_model, samplers, params)
    tiled_rolled = _image(sd1_model, samplers, params.model_copy(update={"tiling": True}))

    expected = np.roll(tiled, (shift * scale, shift * scale), axis=(0, 1))
    assert np.abs(tiled_rolled - expected).max() <= 2
    # The same comparison without tiling fails clearly: the borders were edges.
    assert np.abs(plain_rolled - np.roll(plain, (shift * scale, shift * scale), axis=(0, 1))).max() > 20


def test_tiling_is_undone_after_a_failed_job(sd1_model: TinyModel, samplers: SamplerRegistry) -> None:
    control = JobControl()

    def fail(_: Any) -> None:
        raise RuntimeError("boom")

    try:
        run_txt2img(sd1_model, tiny_params(tiling=True), samplers=samplers, control=control, on_step=fail)
    except RuntimeError:
        pass
    layers = [m for part in (sd1_model.pipe.unet, sd1_model.pipe.vae) for m in part.modules()
              if isinstance(m, torch.nn.Conv2d)]
    assert {layer.padding_mode for layer in layers} == {"zeros"}

"""Hires fix's second pass with its own prompt, negative prompt and sampler (A1111's hr_* overrides)."""

from __future__ import annotations

from typing import Any

import numpy as np

from sdweb.engine.hires import run_hires_txt2img
from sdweb.params import JobControl
from tests.engine.conftest import tiny_params


def _pixels(model, samplers, **changes: Any) -> tuple[np.ndarray, Any]:
    values: dict[str, Any] = dict(enable_hr=True, hr_scale=1.5, hr_upscaler="Lanczos", steps=3,
                                  denoising_strength=0.6)
    values.update(changes)
    run = run_hires_txt2img(model, tiny_params(**values), samplers=samplers, control=JobControl(),
                            on_step=lambda _: None)
    (item,) = run.images
    return np.asarray(item.image, np.int16), item


def test_second_pass_uses_its_own_prompt_and_the_image_keeps_the_first(sd1_model, samplers) -> None:
    same, _ = _pixels(sd1_model, samplers, prompt="a red cube")
    also_same, _ = _pixels(sd1_model, samplers, prompt="a red cube", hr_prompt="a red cube")
    other, item = _pixels(sd1_model, samplers, prompt="a red cube", hr_prompt="a green forest at night")
    assert np.abs(same - also_same).max() <= 1  # "" means the first pass's prompt
    assert np.abs(same - other).mean() > 0.5  # the second pass saw another prompt
    assert item.prompt == "a red cube"  # what the infotext records as the prompt


def test_second_pass_uses_its_own_negative_prompt(sd1_model, samplers) -> None:
    same, _ = _pixels(sd1_model, samplers)
    other, item = _pixels(sd1_model, samplers, hr_negative_prompt="bright colours, stripes")
    assert np.abs(same - other).mean() > 0.5
    assert item.negative_prompt == "blurry"


def test_second_pass_uses_its_own_sampler(sd1_model, samplers) -> None:
    same, _ = _pixels(sd1_model, samplers, sampler_name="Euler")
    also_same, _ = _pixels(sd1_model, samplers, sampler_name="Euler", hr_sampler_name="Euler")
    other, _ = _pixels(sd1_model, samplers, sampler_name="Euler", hr_sampler_name="DDIM")
    assert np.abs(same - also_same).max() <= 1
    assert np.abs(same - other).mean() > 0.5

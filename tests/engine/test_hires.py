"""Hires fix: target sizes as A1111 computes them, both passes run, seeds and progress as txt2img's."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sdweb.engine.generate import run_txt2img
from sdweb.engine.hires import hires_size, run_hires_txt2img
from sdweb.params import JobControl, StepProgress
from tests.engine.conftest import tiny_params


def hires_params(**changes: Any):
    values: dict[str, Any] = dict(enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", steps=3,
                                  denoising_strength=0.5)
    values.update(changes)
    return tiny_params(**values)


def _run(model, samplers, params, **kwargs):
    kwargs.setdefault("control", JobControl())
    kwargs.setdefault("on_step", lambda _: None)
    return run_hires_txt2img(model, params, samplers=samplers, **kwargs)


@pytest.mark.parametrize(("changes", "expected"), [
    ({"hr_scale": 2.0}, (128, 128, 128, 128)),
    ({"hr_scale": 1.3}, (80, 80, 80, 80)),  # 83.2 floored to the 8-pixel grid
    ({"hr_resize_x": 96}, (96, 96, 96, 96)),
    ({"hr_resize_y": 120, "width": 128, "height": 64}, (240, 120, 240, 120)),
    ({"hr_resize_x": 128, "hr_resize_y": 96}, (128, 128, 128, 96)),  # cover the box, crop the centre
])
def test_hires_size_is_a1111s(changes, expected) -> None:
    assert hires_size(hires_params(**changes)) == expected


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (nearest)", "Lanczos", "Nearest", "None"])
def test_output_has_the_hires_size(upscaler: str, sd1_model, samplers) -> None:
    run = _run(sd1_model, samplers, hires_params(hr_upscaler=upscaler))
    assert [item.image.size for item in run.images] == [(96, 96)]


def test_second_pass_changes_the_first_and_both_passes_report(sd1_model, samplers) -> None:
    steps: list[StepProgress] = []
    params = hires_params(hr_second_pass_steps=4, batch_size=2, n_iter=2)
    run = _run(sd1_model, samplers, params, on_step=steps.append)
    # 3 first-pass steps, then exactly the 4 second-pass steps (A1111's: the last 4 of a schedule of
    # int(4 / 0.5) = 8), per batch.
    assert [(s.step, s.total_steps, s.batch_index) for s in steps] == [
        *[(i, 7, 0) for i in range(1, 8)], *[(i, 7, 1) for i in range(1, 8)]]
    assert [item.seed for item in run.images] == [1234, 1235, 1236, 1237]
    alone = _run(sd1_model, samplers, hires_params(hr_second_pass_steps=4, seed=1236)).images[0].image
    assert np.abs(np.asarray(run.images[2].image, np.int16) - np.asarray(alone, np.int16)).max() <= 1
    plain = run_txt2img(sd1_model, tiny_params(steps=3), samplers=samplers, control=JobControl(),
                        on_step=lambda _: None).images[0].image
    assert plain.size == (64, 64)


def test_bad_hires_requests_are_refused_before_any_work(sd1_model, samplers) -> None:
    calls: list[StepProgress] = []
    with pytest.raises(ValueError, match="hr_upscaler 'ESRGAN' not found; known: Latent"):
        _run(sd1_model, samplers, hires_params(hr_upscaler="ESRGAN"), on_step=calls.append)
    with pytest.raises(ValueError, match="out of range"):
        _run(sd1_model, samplers, hires_params(width=8192, height=8192, hr_scale=4), on_step=calls.append)
    assert calls == []


def test_diffusers_schedulers_keep_diffusers_second_pass_count(sd1_model, samplers) -> None:
    steps: list[StepProgress] = []
    _run(sd1_model, samplers, hires_params(hr_second_pass_steps=4, sampler_path="diffusers"),
         on_step=steps.append)
    # 3 first-pass steps, then int(4 * 0.5) = 2 (diffusers' get_timesteps)
    assert [(s.step, s.total_steps) for s in steps] == [(i, 5) for i in range(1, 6)]


def test_interrupt_in_the_second_pass_keeps_earlier_batches(sd1_model, samplers) -> None:
    control = JobControl()

    def stop(step: StepProgress) -> None:
        if step.batch_index == 1 and step.step == 4:
            control.interrupt()

    run = _run(sd1_model, samplers, hires_params(n_iter=3, hr_second_pass_steps=4), control=control,
               on_step=stop)
    # The first batch, and (as A1111) the second one as far as its second pass had come.
    assert run.interrupted and len(run.images) == 2


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_interrupt_in_the_first_pass_returns_the_first_pass_images(upscaler: str, sd1_model,
                                                                   samplers) -> None:
    control = JobControl()

    def stop(step: StepProgress) -> None:
        if step.batch_index == 0 and step.step == 2:
            control.interrupt()

    run = _run(sd1_model, samplers, hires_params(hr_upscaler=upscaler, batch_size=2), control=control,
               on_step=stop)
    # As A1111: the images reached so far, decoded at the first pass's size (latent upscale included).
    assert run.interrupted
    assert [item.image.size for item in run.images] == [(64, 64), (64, 64)]
    assert [item.seed for item in run.images] == [1234, 1235]


def test_engine_runs_hires_when_asked(sd1_model, samplers) -> None:
    from tests.engine.test_runtime import _engine

    engine, _cache, _registry = _engine(sd1_model, samplers, sd_vae="Automatic")
    run = engine.txt2img(hires_params(checkpoint="other"), control=JobControl(), on_step=lambda _: None)
    assert run.images[0].image.size == (96, 96)


@pytest.mark.parametrize("hires", [False, True], ids=["plain", "hires"])
def test_each_finished_batch_is_handed_on_once_as_soon_as_decoded(hires: bool, sd1_model, samplers) -> None:
    # The service saves what the engine hands on: the final images of each batch, once, in order
    # (never hires fix's first-pass images), each before the next batch starts.
    control = JobControl()
    handed: list[tuple[list[int], tuple[int, int], int]] = []
    steps: list[StepProgress] = []
    control.on_images(lambda part: handed.append(([i.seed for i in part.images], part.images[0].image.size,
                                                  len(steps))))
    if hires:
        run = _run(sd1_model, samplers, hires_params(batch_size=2, n_iter=2), control=control,
                   on_step=steps.append)
    else:
        run = run_txt2img(sd1_model, tiny_params(steps=3, batch_size=2, n_iter=2), samplers=samplers,
                          control=control, on_step=steps.append)
    size = (96, 96) if hires else (64, 64)
    per_batch = len(steps) // 2
    assert handed == [([1234, 1235], size, per_batch), ([1236, 1237], size, 2 * per_batch)]
    assert [item.seed for item in run.images] == [1234, 1235, 1236, 1237]

"""img2img in the loop: denoising strength 0 keeps the input, 1 ignores it, diffusers' schedule slice on
the diffusers path (A1111's counts: test_kdiffusion_parity.py), sizes, transparency, several init images,
progress and every kind of sampler."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline
from PIL import Image

from sdweb.engine.generate import to_pil
from sdweb.engine.img2img import img2img_steps, run_img2img
from sdweb.engine.samplers.registry import SamplerRegistry
from sdweb.params import Img2ImgParams, JobControl, StepProgress
from tests.engine.conftest import TinyModel, tiny_params


def img_params(**changes: Any) -> Img2ImgParams:
    values = tiny_params().model_dump()
    values.update(steps=4, denoising_strength=0.5)
    values.update(changes)
    return Img2ImgParams(**values)


def _run(model: TinyModel, samplers: SamplerRegistry, params: Img2ImgParams, images: list[Image.Image],
         **kwargs: Any) -> list[Image.Image]:
    kwargs.setdefault("control", JobControl())
    kwargs.setdefault("on_step", lambda _: None)
    run = run_img2img(model, params, images, samplers=samplers, **kwargs)
    return [generated.image for generated in run.images]


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def _gradient(width: int = 64, height: int = 64, flip: bool = False) -> Image.Image:
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    rgb = np.stack([x, y, 255 - x] if not flip else [255 - y, x, y], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


def _round_trip(model: TinyModel, image: Image.Image) -> Image.Image:
    """The image through the tiny VAE and back: what strength 0 may differ from the input by."""
    vae = model.pipe.vae
    pixels = torch.from_numpy(_pixels(image).astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.inference_mode():
        decoded = vae.decode(vae.encode(pixels).latent_dist.mean, return_dict=False)[0]
    return to_pil(decoded[0])


def test_strength_zero_returns_the_input_through_the_vae(sd1_model, samplers) -> None:
    """With img2img_fix_steps A1111 samples a schedule of 0 steps at strength 0: the input comes back
    (through the VAE). Without it, A1111 makes one step from the smallest sigma."""
    first, second = _gradient(), _gradient(flip=True)
    steps: list[StepProgress] = []
    out = _run(sd1_model, samplers, img_params(denoising_strength=0.0, batch_size=2, img2img_fix_steps=True),
               [first, second], on_step=steps.append)
    assert np.abs(_pixels(out[0]) - _pixels(_round_trip(sd1_model, first))).max() <= 1
    assert np.abs(_pixels(out[1]) - _pixels(_round_trip(sd1_model, second))).max() <= 1
    assert steps == []  # no sampling step was run
    _run(sd1_model, samplers, img_params(denoising_strength=0.0, img2img_fix_steps=False), [first],
         on_step=steps.append)
    assert [(step.step, step.total_steps) for step in steps] == [(1, 1)]


def test_strength_one_ignores_the_input(sd1_model, samplers) -> None:
    first, second = _gradient(), _gradient(flip=True)

    def difference(strength: float) -> float:
        params = img_params(denoising_strength=strength, steps=6)
        one = _run(sd1_model, samplers, params, [first])[0]
        other = _run(sd1_model, samplers, params, [second])[0]
        return float(np.abs(_pixels(one) - _pixels(other)).mean())

    full, half = difference(1.0), difference(0.5)
    # At strength 1 the init image is ~7% of the starting latents (sigma_max ~ 14.6): nearly no trace.
    assert full < 0.3 * half, (full, half)
    assert full < 6, full


def test_equals_diffusers_img2img_pipeline_at_fp32(sd1_model, samplers) -> None:
    # The diffusers path keeps diffusers' get_timesteps: int(steps * strength) steps of the steps schedule.
    pipe = sd1_model.pipe
    params = img_params(sampler_name="Euler", steps=5, denoising_strength=0.6, seed=42,
                        sampler_path="diffusers")
    image = _gradient()
    ours = _run(sd1_model, samplers, params, [image])[0]
    # diffusers draws a random sample of the latent distribution; giving it our (mean) latents makes
    # the starting point the same, and then the noise, schedule slice and steps must agree.
    vae = pipe.vae
    pixels = torch.from_numpy(_pixels(image).astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.inference_mode():
        latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    reference = StableDiffusionImg2ImgPipeline(
        **{**pipe.components, "scheduler": EulerDiscreteScheduler.from_config(pipe.scheduler.config),
           "requires_safety_checker": False})
    reference.set_progress_bar_config(disable=True)
    theirs = reference(params.prompt, negative_prompt=params.negative_prompt, image=latents,
                       strength=0.6, num_inference_steps=5, guidance_scale=params.cfg_scale,
                       generator=torch.Generator("cpu").manual_seed(42)).images[0]
    assert np.abs(_pixels(ours) - _pixels(theirs)).max() <= 1


def test_output_has_the_requested_size_whatever_the_input(sd1_model, samplers) -> None:
    odd = Image.new("RGBA", (101, 37), (200, 10, 10, 128))
    for mode in (0, 1, 2, 3):
        out = _run(sd1_model, samplers, img_params(width=64, height=96, resize_mode=mode, steps=2), [odd])
        assert out[0].size == (64, 96), mode


def test_transparent_pixels_count_as_white(sd1_model, samplers) -> None:
    hidden_black = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    params = img_params(denoising_strength=0.0)
    flat = _run(sd1_model, samplers, params, [hidden_black])[0]
    assert np.array_equal(_pixels(flat), _pixels(_run(sd1_model, samplers, params, [white])[0]))


def test_progress_counts_the_steps_run_and_batches_follow_seeds(sd1_model, samplers) -> None:
    steps: list[StepProgress] = []
    params = img_params(steps=10, denoising_strength=0.3, batch_size=2, n_iter=2)
    out = _run(sd1_model, samplers, params, [_gradient()], on_step=steps.append)
    # A1111's count: t_enc = int(0.3 * 10) = 3, and t_enc + 1 steps run (diffusers' path: 3)
    assert img2img_steps(10, 0.3) == 4
    assert img2img_steps(10, 0.3, sampler_path="diffusers") == 3
    assert img2img_steps(10, 0.3, fix_steps=True) == 10
    assert [(s.step, s.total_steps, s.batch_index) for s in steps] == [
        (1, 4, 0), (2, 4, 0), (3, 4, 0), (4, 4, 0), (1, 4, 1), (2, 4, 1), (3, 4, 1), (4, 4, 1)]
    # Image i of the job is the image its seed gives alone.
    alone = _run(sd1_model, samplers, img_params(steps=10, denoising_strength=0.3, seed=params.seed + 3),
                 [_gradient()])[0]
    assert np.abs(_pixels(out[3]) - _pixels(alone)).max() <= 1


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "DPM++ SDE", "Heun", "DDIM", "PLMS", "UniPC",
                                     "DPM2 a", "DPM++ 2S a", "LMS"])
def test_every_kind_of_sampler_starts_part_way(sampler: str, sd1_model, samplers) -> None:
    params = img_params(sampler_name=sampler, steps=4, denoising_strength=0.5)
    first = _run(sd1_model, samplers, params, [_gradient()])[0]
    again = _run(sd1_model, samplers, params, [_gradient()])[0]
    other = _run(sd1_model, samplers, params, [_gradient(flip=True)])[0]
    assert first.size == (64, 64)
    assert np.array_equal(_pixels(first), _pixels(again))  # reproducible
    assert not np.array_equal(_pixels(first), _pixels(other))  # the init image matters


def test_bad_init_image_counts_are_refused(sd1_model, samplers) -> None:
    with pytest.raises(ValueError, match="init image"):
        _run(sd1_model, samplers, img_params(), [])
    with pytest.raises(ValueError, match="3 init images for a batch of 2"):
        _run(sd1_model, samplers, img_params(batch_size=2), [_gradient()] * 3)


def test_interrupt_keeps_finished_batches_and_the_one_reached(sd1_model, samplers) -> None:
    control = JobControl()

    def stop_in_second_batch(step: StepProgress) -> None:
        if step.batch_index == 1:
            control.interrupt()

    run = run_img2img(sd1_model, img_params(n_iter=3), [_gradient()], samplers=samplers, control=control,
                      on_step=stop_in_second_batch)
    # As A1111: the second batch is decoded from the latents its first step reached; the third never ran.
    assert run.interrupted and len(run.images) == 2 and run.images[1].image.size == run.images[0].image.size


def test_engine_runs_img2img_on_the_requested_checkpoint_held_for_the_job(sd1_model, samplers) -> None:
    from tests.engine.test_runtime import _engine

    engine, cache, registry = _engine(sd1_model, samplers, sd_vae="Automatic")
    held: list[bool] = []
    run = engine.img2img(img_params(checkpoint="other"), [_gradient()], control=JobControl(),
                         on_step=lambda _: held.append(cache.in_use))
    assert registry.found == ["other"] and run.model_hash == "feedc0ffee"
    assert held and all(held) and len(run.images) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "DPM++ 2S a"])
def test_cuda_half_precision_img2img_and_hires(sampler: str, samplers) -> None:
    from diffusers import StableDiffusionPipeline

    from sdweb.engine.hires import run_hires_txt2img
    from tests.fixtures.checkpoints import tiny_sd1_components

    pipe = StableDiffusionPipeline(**tiny_sd1_components()).to("cuda", torch.float16)
    model = TinyModel(pipe=pipe, device=torch.device("cuda"), dtype=torch.float16)
    params = img_params(sampler_name=sampler, rng="GPU", tiling=True)
    first = _run(model, samplers, params, [_gradient()])[0]
    assert np.array_equal(_pixels(first), _pixels(_run(model, samplers, params, [_gradient()])[0]))
    assert _pixels(first).std() > 1.0
    for upscaler in ("Latent", "Lanczos"):
        run = run_hires_txt2img(model, tiny_params(sampler_name=sampler, enable_hr=True, hr_scale=1.5,
                                                   hr_upscaler=upscaler, steps=3),
                                samplers=samplers, control=JobControl(), on_step=lambda _: None)
        assert run.images[0].image.size == (96, 96)


def test_sdxl_img2img(sdxl_pipe, samplers) -> None:
    model = TinyModel(pipe=sdxl_pipe, family="sdxl")
    params = img_params(width=64, height=96, resize_mode=1)
    first = _run(model, samplers, params, [_gradient()])[0]
    assert first.size == (64, 96)
    assert np.array_equal(_pixels(first), _pixels(_run(model, samplers, params, [_gradient()])[0]))
    kept = _run(model, samplers, img_params(denoising_strength=0.0, img2img_fix_steps=True), [_gradient()])[0]
    assert np.abs(_pixels(kept) - _pixels(_round_trip(model, _gradient()))).max() <= 1


def test_a_depth_shaped_unet_is_refused_clearly(sd1_model, samplers, monkeypatch) -> None:
    config = dict(sd1_model.pipe.unet.config)
    config["in_channels"] = 5
    monkeypatch.setattr(sd1_model.pipe.unet, "_internal_dict", type(sd1_model.pipe.unet.config)(config))
    calls: list[StepProgress] = []
    with pytest.raises(ValueError, match="takes 5 input channels .* not depth-to-image or instruct-pix2pix"):
        _run(sd1_model, samplers, img_params(), [_gradient()], on_step=calls.append)
    assert calls == []

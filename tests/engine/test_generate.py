"""The txt2img loop: equal to diffusers, reproducible seeds, progress, interrupt and skip, tiling."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from sdweb.engine.generate import preview_image, run_txt2img
from sdweb.engine.samplers.registry import SamplerRegistry
from sdweb.params import GenerationParams, JobControl, StepProgress
from tests.engine.conftest import TinyModel, tiny_params


def _run(model: TinyModel, samplers: SamplerRegistry, params: GenerationParams, **kwargs: Any):
    kwargs.setdefault("control", JobControl())
    kwargs.setdefault("on_step", lambda _: None)
    return run_txt2img(model, params, samplers=samplers, **kwargs)


def _pixels(image: Any) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# -- requirement 5: no hidden error ---------------------------------------------------------------


@pytest.mark.parametrize(("sampler", "scheduler_cls"), [("Euler", EulerDiscreteScheduler),
                                                        ("Euler a", EulerAncestralDiscreteScheduler)])
def test_equals_diffusers_pipeline_at_fp32(sampler: str, scheduler_cls: type, sd1_model, samplers) -> None:
    pipe = sd1_model.pipe
    params = tiny_params(sampler_name=sampler, sampler_path="diffusers",
                         prompt="a photo of an astronaut riding a horse",
                         negative_prompt="", steps=4, seed=42)
    reference_pipe = StableDiffusionPipeline(
        **{**pipe.components, "scheduler": scheduler_cls.from_config(pipe.scheduler.config)})
    reference_pipe.set_progress_bar_config(disable=True)

    def reference(output_type: str) -> Any:
        return reference_pipe(params.prompt, num_inference_steps=4, width=64, height=64,
                              guidance_scale=params.cfg_scale, output_type=output_type,
                              generator=torch.Generator("cpu").manual_seed(42))

    ours = _run(sd1_model, samplers, params, output_type="latent")
    theirs = reference("latent").images
    torch.testing.assert_close(ours.images[0].image, theirs, atol=1e-4, rtol=0)
    ours_png = _run(sd1_model, samplers, params).images[0].image
    assert np.abs(_pixels(ours_png) - _pixels(reference("pil").images[0])).max() <= 1


def test_sdxl_equals_diffusers_pipeline_at_fp32(sdxl_pipe, samplers) -> None:
    model = TinyModel(pipe=sdxl_pipe, family="sdxl")
    params = tiny_params(negative_prompt="", steps=3, seed=7, sampler_path="diffusers")
    scheduler = EulerDiscreteScheduler.from_config(sdxl_pipe.scheduler.config)
    reference_pipe = StableDiffusionXLPipeline(**{**sdxl_pipe.components, "scheduler": scheduler})
    reference_pipe.set_progress_bar_config(disable=True)
    theirs = reference_pipe(params.prompt, num_inference_steps=3, width=64, height=64,
                            guidance_scale=params.cfg_scale, output_type="latent",
                            generator=torch.Generator("cpu").manual_seed(7)).images
    ours = _run(model, samplers, params, output_type="latent")
    torch.testing.assert_close(ours.images[0].image, theirs, atol=1e-4, rtol=0)


def test_v_prediction_model_runs_with_function_and_scheduler_samplers(sd2v_pipe, samplers) -> None:
    model = TinyModel(pipe=sd2v_pipe, family="sd2-v")
    for sampler in ("DPM++ 2S a", "DDIM", "Euler"):
        image = _run(model, samplers, tiny_params(sampler_name=sampler)).images[0].image
        assert _pixels(image).std() > 1.0


def test_pipeline_scheduler_is_never_touched(sd1_model, samplers) -> None:
    scheduler = sd1_model.pipe.scheduler
    config = dict(scheduler.config)
    _run(sd1_model, samplers, tiny_params(sampler_name="DPM++ 2M", scheduler="Karras"))
    assert sd1_model.pipe.scheduler is scheduler
    assert dict(scheduler.config) == config


# -- requirement 4: seeds ---------------------------------------------------------------------------


def test_same_request_twice_is_pixel_identical(sd1_model, samplers) -> None:
    params = tiny_params(sampler_name="Euler a", batch_size=2)
    first = _run(sd1_model, samplers, params)
    second = _run(sd1_model, samplers, params)
    for a, b in zip(first.images, second.images, strict=True):
        assert np.array_equal(_pixels(a.image), _pixels(b.image))


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE"])
def test_image_i_of_a_batch_equals_its_seed_alone(sampler: str, sd1_model, samplers) -> None:
    """Also for samplers that add noise while sampling: each image draws from its own generator."""
    batch = _run(sd1_model, samplers, tiny_params(sampler_name=sampler, batch_size=3, seed=500))
    assert [image.seed for image in batch.images] == [500, 501, 502]
    assert [image.subseed for image in batch.images] == [99, 100, 101]
    alone = _run(sd1_model, samplers, tiny_params(sampler_name=sampler, seed=502))
    assert np.abs(_pixels(batch.images[2].image) - _pixels(alone.images[0].image)).max() <= 1


def test_n_iter_batches_continue_the_seeds(sd1_model, samplers) -> None:
    run = _run(sd1_model, samplers, tiny_params(batch_size=2, n_iter=2, seed=10))
    assert [image.seed for image in run.images] == [10, 11, 12, 13]
    alone = _run(sd1_model, samplers, tiny_params(seed=13))
    assert np.abs(_pixels(run.images[3].image) - _pixels(alone.images[0].image)).max() <= 1


def test_variation_strength_zero_and_one(sd1_model, samplers) -> None:
    plain = _run(sd1_model, samplers, tiny_params(seed=1, subseed=2)).images[0].image
    zero = _run(sd1_model, samplers, tiny_params(seed=1, subseed=2, subseed_strength=0.0)).images[0].image
    full = _run(sd1_model, samplers, tiny_params(seed=1, subseed=2, subseed_strength=1.0)).images[0].image
    subseed_alone = _run(sd1_model, samplers, tiny_params(seed=2)).images[0].image
    half = _run(sd1_model, samplers, tiny_params(seed=1, subseed=2, subseed_strength=0.5)).images[0].image
    assert np.array_equal(_pixels(plain), _pixels(zero))
    assert np.abs(_pixels(full) - _pixels(subseed_alone)).max() <= 1
    assert not np.array_equal(_pixels(half), _pixels(plain))


def test_different_seeds_give_different_images(sd1_model, samplers) -> None:
    a = _run(sd1_model, samplers, tiny_params(seed=1)).images[0].image
    b = _run(sd1_model, samplers, tiny_params(seed=2)).images[0].image
    assert not np.array_equal(_pixels(a), _pixels(b))


# -- requirement 6: progress, previews, interrupt, skip -------------------------------------------


def test_progress_reports_each_step_with_previews(sd1_model, samplers) -> None:
    seen: list[StepProgress] = []
    _run(sd1_model, samplers, tiny_params(steps=4, n_iter=2, batch_size=2), on_step=seen.append,
         preview_every=2)
    assert [(p.batch_index, p.step) for p in seen] == [(b, s) for b in range(2) for s in range(1, 5)]
    assert all(p.total_steps == 4 and p.batch_count == 2 for p in seen)
    previews = [p for p in seen if p.preview is not None]
    assert [p.step for p in previews] == [2, 2]  # every 2 steps, not at the end (the image comes then)
    assert previews[0].preview.size == (2 * 32, 32)  # two latents side by side, one pixel per latent


def test_second_order_samplers_report_user_steps(sd1_model, samplers) -> None:
    seen: list[int] = []
    _run(sd1_model, samplers, tiny_params(sampler_name="Heun", steps=3),
         on_step=lambda p: seen.append(p.step))
    assert seen == [1, 2, 3]


def test_preview_approximates_colours() -> None:
    latents = torch.zeros(1, 4, 8, 8)
    latents[0, 0] = 2.0  # channel 0 is mostly brightness
    image = preview_image(latents, sdxl=False)
    assert image.size == (8, 8)
    assert np.asarray(image).mean() > 170


def _interrupt_from_another_thread(control: JobControl, action: str) -> None:
    worker = threading.Thread(target=getattr(control, action))
    worker.start()
    worker.join()


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2S a"])
def test_interrupt_mid_run_keeps_finished_images_and_the_batch_reached(sampler: str, sd1_model,
                                                                       samplers) -> None:
    control = JobControl()

    def on_step(progress: StepProgress) -> None:
        if progress.batch_index == 1 and progress.step == 1:
            _interrupt_from_another_thread(control, "interrupt")

    params = tiny_params(sampler_name=sampler, n_iter=3, batch_size=2, seed=100, steps=3)
    run = _run(sd1_model, samplers, params, control=control, on_step=on_step)
    assert run.interrupted
    # As A1111: the batch being made when the interrupt came is decoded from the latents it had reached.
    assert [image.seed for image in run.images] == [100, 101, 102, 103]
    full = _run(sd1_model, samplers, params.model_copy(update={"n_iter": 2}))
    finished, partial = np.asarray(full.images[2].image, dtype=float), np.asarray(run.images[2].image,
                                                                                  dtype=float)
    assert run.images[2].image.size == (64, 64) and np.abs(finished - partial).mean() > 0.5  # 1 of 3 steps
    assert np.array_equal(np.asarray(full.images[0].image), np.asarray(run.images[0].image))


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2S a"])
def test_skip_drops_the_current_batch_and_goes_on(sampler: str, sd1_model, samplers) -> None:
    control = JobControl()

    def on_step(progress: StepProgress) -> None:
        if progress.batch_index == 1 and progress.step == 1:
            _interrupt_from_another_thread(control, "skip")

    run = _run(sd1_model, samplers, tiny_params(sampler_name=sampler, n_iter=3, seed=100, steps=3),
               control=control, on_step=on_step)
    assert not run.interrupted
    assert [image.seed for image in run.images] == [100, 102]
    assert not control.skipped


def test_interrupt_before_start_returns_nothing(sd1_model, samplers) -> None:
    control = JobControl()
    control.interrupt()
    run = _run(sd1_model, samplers, tiny_params(n_iter=2), control=control)
    assert run.interrupted and run.images == []


# -- the rest of the request ------------------------------------------------------------------------


def test_result_carries_the_infotext_facts(sd1_model, samplers) -> None:
    sd1_model.vae_name, sd1_model.vae_hash = "vae-ft-mse", "abcdef0123"
    run = _run(sd1_model, samplers, tiny_params(clip_skip=2, prompt="p", negative_prompt="n"))
    assert (run.model_name, run.model_hash, run.vae_name, run.vae_hash, run.clip_skip) == (
        "tiny-sd1", "0123456789", "vae-ft-mse", "abcdef0123", 2)
    assert (run.images[0].prompt, run.images[0].negative_prompt) == ("p", "n")


def test_clip_skip_and_a_long_prompts_tail_change_the_image(sd1_model, samplers) -> None:
    base = "a photo of a cat, " * 20
    plain = _run(sd1_model, samplers, tiny_params(prompt=base + "red")).images[0].image
    other_tail = _run(sd1_model, samplers, tiny_params(prompt=base + "blue")).images[0].image
    skipped = _run(sd1_model, samplers, tiny_params(prompt=base + "red", clip_skip=2)).images[0].image
    assert not np.array_equal(_pixels(plain), _pixels(other_tail))
    assert not np.array_equal(_pixels(plain), _pixels(skipped))


def test_tiling_changes_the_image_and_restores_the_model(sd1_model, samplers) -> None:
    plain = _run(sd1_model, samplers, tiny_params()).images[0].image
    tiled = _run(sd1_model, samplers, tiny_params(tiling=True)).images[0].image
    assert not np.array_equal(_pixels(plain), _pixels(tiled))
    modes = {m.padding_mode for m in sd1_model.pipe.unet.modules() if isinstance(m, torch.nn.Conv2d)}
    assert modes == {"zeros"}
    again = _run(sd1_model, samplers, tiny_params()).images[0].image
    assert np.array_equal(_pixels(plain), _pixels(again))


def test_unresolved_request_is_refused_before_any_work(sd1_model, samplers) -> None:
    with pytest.raises(ValueError, match="seed"):
        _run(sd1_model, samplers, tiny_params(seed=-1))
    with pytest.raises(ValueError, match="not found; known"):
        _run(sd1_model, samplers, tiny_params(sampler_name="nope"))


# -- A1111 prompt grammar in the loop ----------------------------------------------------------------


class _ContextSpy:
    """Records the encoder_hidden_states of every UNet call."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.calls: list[torch.Tensor] = []
        self._unet = unet

    def __enter__(self) -> _ContextSpy:
        def record(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
            self.calls.append(kwargs["encoder_hidden_states"].clone())

        self._handle = self._unet.register_forward_pre_hook(record, with_kwargs=True)
        return self

    def __exit__(self, *_exc: Any) -> None:
        self._handle.remove()


def test_prompt_editing_switches_the_conditioning_at_the_right_step(sd1_model, samplers) -> None:
    unet = sd1_model.pipe.unet
    with _ContextSpy(unet) as edited:
        _run(sd1_model, samplers, tiny_params(prompt="a [cat:dog:2]", steps=4))
    with _ContextSpy(unet) as cat:
        _run(sd1_model, samplers, tiny_params(prompt="a cat", steps=4))
    with _ContextSpy(unet) as dog:
        _run(sd1_model, samplers, tiny_params(prompt="a dog", steps=4))
    used = ["cat" if torch.equal(call, cat.calls[0]) else "dog" if torch.equal(call, dog.calls[0]) else "?"
            for call in edited.calls]
    assert used == ["cat", "cat", "cat", "dog"]  # steps 0-2 "from", then "to" (A1111's counting)


def test_and_stacks_the_parts_and_a_zero_weight_part_changes_nothing(sd1_model, samplers) -> None:
    with _ContextSpy(sd1_model.pipe.unet) as spy:
        both = _run(sd1_model, samplers, tiny_params(prompt="a cat AND a dog", batch_size=2))
    assert spy.calls[0].shape[0] == 3 * 2  # [negative, cat, dog] for each of the 2 images
    single = _run(sd1_model, samplers, tiny_params(prompt="a cat")).images[0].image
    zero = _run(sd1_model, samplers, tiny_params(prompt="a cat AND a dog :0")).images[0].image
    assert np.abs(_pixels(zero) - _pixels(single)).max() <= 1
    assert not np.array_equal(_pixels(both.images[0].image), _pixels(single))


def test_extra_network_tags_are_refused_until_supported(sd1_model, samplers) -> None:
    with pytest.raises(ValueError, match=r"<lora:detail:0\.8>"):
        _run(sd1_model, samplers, tiny_params(prompt="a cat <lora:detail:0.8>"))


@pytest.mark.gpu
def test_cuda_half_precision_and_both_rng_sources(samplers) -> None:
    from tests.fixtures.checkpoints import tiny_sd1_components

    pipe = StableDiffusionPipeline(**tiny_sd1_components()).to("cuda", torch.float16)
    model = TinyModel(pipe=pipe, device=torch.device("cuda"), dtype=torch.float16)
    cpu = _run(model, samplers, tiny_params(sampler_name="Euler a", rng="CPU")).images[0].image
    cpu_again = _run(model, samplers, tiny_params(sampler_name="Euler a", rng="CPU")).images[0].image
    gpu = _run(model, samplers, tiny_params(sampler_name="Euler a", rng="GPU")).images[0].image
    assert np.array_equal(_pixels(cpu), _pixels(cpu_again))
    assert not np.array_equal(_pixels(cpu), _pixels(gpu))  # A1111's GPU noise is another sequence
    assert _pixels(gpu).std() > 1.0


def test_cfg_scale_below_one_weighs_the_negative_prompt_as_a1111(sd1_model, samplers) -> None:
    # A1111's guidance is uncond + (cond - uncond) * scale at any scale: at 0 the image is the negative
    # prompt's alone (the same image as that text prompted at scale 1, where guidance is a no-op).
    at_zero = _run(sd1_model, samplers, tiny_params(prompt="a red cat", negative_prompt="a blue dog",
                                                    cfg_scale=0.0)).images[0].image
    negative_only = _run(sd1_model, samplers, tiny_params(prompt="a blue dog", negative_prompt="",
                                                          cfg_scale=1.0)).images[0].image
    prompt_only = _run(sd1_model, samplers, tiny_params(prompt="a red cat", negative_prompt="",
                                                        cfg_scale=1.0)).images[0].image
    to_negative = np.abs(_pixels(at_zero) - _pixels(negative_only)).mean()
    to_prompt = np.abs(_pixels(at_zero) - _pixels(prompt_only)).mean()  # the tiny model's texts differ little
    assert to_prompt > 0.1 and to_negative < to_prompt / 5, (to_negative, to_prompt)


def test_a_step_count_the_sampler_cannot_make_is_an_error_naming_steps(sd1_model, samplers) -> None:
    # A1111's API has no step limit; DDIM's schedule has only the model's 1000 trained steps.
    seen: list[StepProgress] = []
    with pytest.raises(ValueError, match="steps: DDIM cannot sample 1200 steps"):
        _run(sd1_model, samplers, tiny_params(sampler_name="DDIM", steps=1200), on_step=seen.append)
    assert seen == []  # refused before any work

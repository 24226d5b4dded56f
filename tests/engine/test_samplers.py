"""Sampler registry: A1111 names and aliases, schedule types, plugins, and every sampler really running."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from sdweb.engine.generate import run_txt2img
from sdweb.engine.samplers import builtin
from sdweb.engine.samplers.functions import ancestral_step, schedule_sigmas
from sdweb.engine.samplers.registry import (
    DuplicateSamplerError,
    FunctionSamplerPlan,
    IncompatibleScheduleError,
    SamplerRegistry,
    SchedulerPlan,
    UnknownSamplerError,
    UnknownScheduleError,
)
from sdweb.params import JobControl
from sdweb.plugin_api import SamplerSpec, ScheduleSpec, hookimpl
from tests.engine.conftest import TinyModel, tiny_params

A1111_NAMES = ["DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE",
               "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart",
               "DDIM", "PLMS", "UniPC", "LCM", "DEIS", "DDPM"]
A1111_SCHEDULES = ["Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform",
                   "KL Optimal", "Align Your Steps", "Simple", "Normal", "DDIM", "Beta"]


def _registry_with(*plugins: tuple[str, list[SamplerSpec]]) -> SamplerRegistry:
    return SamplerRegistry.from_plugin_results(
        [("builtin-samplers", builtin.register_samplers()), *plugins],
        [("builtin-samplers", builtin.register_schedules())],
    )


def test_builtin_names_and_schedules_are_a1111s(samplers: SamplerRegistry) -> None:
    assert samplers.names() == A1111_NAMES
    assert samplers.schedule_names() == A1111_SCHEDULES


@pytest.mark.parametrize(("alias", "name"), [("k_euler_a", "Euler a"), ("K_EULER", "Euler"),
                                             ("k_dpmpp_2m", "DPM++ 2M"), ("k_dpmpp_2s_a", "DPM++ 2S a"),
                                             ("euler a", "Euler a"), ("plms", "PLMS")])
def test_aliases_select_the_sampler(samplers: SamplerRegistry, alias: str, name: str) -> None:
    assert samplers.get(alias).name == name


def test_unknown_sampler_error_lists_known_names(samplers: SamplerRegistry) -> None:
    with pytest.raises(UnknownSamplerError) as caught:
        samplers.get("Eular a")
    message = str(caught.value)
    assert message.startswith("sampler 'Eular a' not found; known: ")
    assert "Euler a" in message and "DPM++ 2M" in message
    assert isinstance(caught.value, ValueError)


def test_unknown_schedule_error_lists_known_names(samplers: SamplerRegistry) -> None:
    with pytest.raises(UnknownScheduleError, match="known: Automatic, Uniform, Karras"):
        samplers.build("Euler", "Karas", {})


def test_schedule_the_sampler_cannot_use_is_an_error_naming_what_it_can(
        samplers: SamplerRegistry, sd1_pipe) -> None:
    with pytest.raises(IncompatibleScheduleError) as caught:
        samplers.build("DDIM", "Karras", sd1_pipe.scheduler.config, path="diffusers")
    assert "'DDIM' cannot use schedule type 'Karras'" in str(caught.value)
    assert "supports: Automatic, Uniform" in str(caught.value)


def test_a_duplicate_name_names_both_plugins() -> None:
    clash = SamplerSpec(name="My Euler", scheduler_cls=EulerDiscreteScheduler, aliases=("k_euler",))
    with pytest.raises(DuplicateSamplerError) as caught:
        _registry_with(("my-extension", [clash]))
    assert "'builtin-samplers'" in str(caught.value) and "'my-extension'" in str(caught.value)


def test_automatic_uses_the_samplers_default_schedule(samplers: SamplerRegistry, sd1_pipe) -> None:
    assert samplers.build("DPM++ 2M", "Automatic", sd1_pipe.scheduler.config).schedule.name == "Karras"
    assert samplers.build("Euler a", "Automatic", sd1_pipe.scheduler.config).schedule.name == "Uniform"
    # the diffusers path: the same defaults, through diffusers' flags
    plan = samplers.build("DPM++ 2M", "Automatic", sd1_pipe.scheduler.config, path="diffusers")
    assert isinstance(plan, SchedulerPlan)
    assert plan.schedule.name == "Karras" and plan.scheduler.config.use_karras_sigmas
    uniform = samplers.build("DPM++ 2M", "Uniform", sd1_pipe.scheduler.config, path="diffusers")
    assert not uniform.scheduler.config.use_karras_sigmas
    assert samplers.build("DPM++ 2M SDE", "Automatic", sd1_pipe.scheduler.config,
                          path="diffusers").scheduler.config["algorithm_type"] == "sde-dpmsolver++"


def test_a1111_path_is_the_default_and_the_diffusers_path_is_reachable(samplers, sd1_pipe) -> None:
    exact = samplers.build("Euler a", "Karras", sd1_pipe.scheduler.config)
    assert isinstance(exact, FunctionSamplerPlan) and exact.a1111
    diffusers = samplers.build("Euler a", "Uniform", sd1_pipe.scheduler.config, path="diffusers")
    assert isinstance(diffusers, SchedulerPlan)
    assert type(diffusers.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    # samplers diffusers has no version of run the same on both paths
    assert isinstance(samplers.build("Restart", "Karras", sd1_pipe.scheduler.config, path="diffusers"),
                      FunctionSamplerPlan)
    with pytest.raises(ValueError, match="sampler path must be one of A1111, diffusers"):
        samplers.build("Euler", "Karras", sd1_pipe.scheduler.config, path="comfy")


def test_build_gives_a_fresh_scheduler_and_leaves_the_pipelines_alone(samplers, sd1_pipe) -> None:
    before = dict(sd1_pipe.scheduler.config)
    first = samplers.build("Euler", "Karras", sd1_pipe.scheduler.config, path="diffusers")
    second = samplers.build("Euler", "Karras", sd1_pipe.scheduler.config, path="diffusers")
    assert first.scheduler is not second.scheduler
    assert first.scheduler is not sd1_pipe.scheduler
    assert dict(sd1_pipe.scheduler.config) == before
    # the training betas of the model are kept
    assert first.scheduler.config.beta_schedule == "scaled_linear"


def test_listings_have_the_a1111_api_shape(samplers: SamplerRegistry) -> None:
    described = {item["name"]: item for item in samplers.describe()}
    assert described["Euler a"]["aliases"] == ["k_euler_a", "k_euler_ancestral"]
    assert described["DPM++ 2M"]["options"] == {"scheduler": "karras"}
    schedules = {item["label"]: item for item in samplers.describe_schedules()}
    assert schedules["Karras"] == {"name": "karras", "label": "Karras", "aliases": None,
                                   "default_rho": 7.0, "need_inner_model": False}


def _each_sampler_with_a_schedule() -> list[tuple[str, str]]:
    registry = SamplerRegistry.from_plugin_results([("b", builtin.register_samplers())],
                                                   [("b", builtin.register_schedules())])
    cases = []
    for name in registry.names():
        compatible = registry.compatible_schedules(name)
        cases.append((name, "Karras" if "Karras" in compatible else compatible[-1]))
    return cases


@pytest.mark.parametrize(("sampler", "schedule"), _each_sampler_with_a_schedule())
def test_every_sampler_makes_an_image(sampler: str, schedule: str, samplers, sd1_model) -> None:
    params = tiny_params(sampler_name=sampler, scheduler=schedule, steps=3)
    run = run_txt2img(sd1_model, params, samplers=samplers, control=JobControl(), on_step=lambda _: None)
    pixels = np.asarray(run.images[0].image, dtype=np.float32)
    assert pixels.shape == (64, 64, 3)
    assert np.isfinite(pixels).all()
    assert pixels.std() > 1.0  # not a constant image


@pytest.mark.parametrize("schedule", ["Automatic", "Uniform", "Karras", "Exponential", "Beta"])
def test_function_sampler_sigmas_follow_the_schedule_type(schedule: str, samplers, sd1_pipe) -> None:
    """On the diffusers path a plugin-style function sampler sees the diffusers schedulers' sigmas."""
    plan = samplers.build("DPM++ 2S a", schedule, sd1_pipe.scheduler.config, path="diffusers")
    assert isinstance(plan, FunctionSamplerPlan) and not plan.a1111
    sigmas = plan.sigmas(6)
    assert sigmas.shape == (7,) and sigmas[-1] == 0
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    # the same noise levels a diffusers sampler gets with that schedule type
    euler = samplers.build("Euler", schedule, sd1_pipe.scheduler.config, path="diffusers").scheduler
    euler.set_timesteps(6)
    torch.testing.assert_close(sigmas, euler.sigmas.float())


def test_a_plugin_schedule_with_its_own_sigmas(sd1_pipe) -> None:
    def linear(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
        return torch.linspace(sigma_max, sigma_min, n)

    registry = SamplerRegistry.from_plugin_results(
        [("b", builtin.register_samplers())],
        [("b", builtin.register_schedules()), ("lin", [ScheduleSpec(name="Linear", sigmas_fn=linear)])])
    assert "Linear" in registry.compatible_schedules("Euler")  # takes set_timesteps(sigmas=...)
    assert "Linear" not in registry.compatible_schedules("DDPM")
    plan = registry.build("Euler", "Linear", sd1_pipe.scheduler.config, path="diffusers")
    plan.set_timesteps(4, "cpu")
    assert plan.scheduler.sigmas.shape == (5,)
    function_plan = registry.build("DPM++ 2S a", "Linear", sd1_pipe.scheduler.config)
    assert torch.allclose(function_plan.sigmas(4)[:4], linear(4, *_minmax(sd1_pipe)))


def _minmax(pipe) -> tuple[float, float]:
    acp = DDIMScheduler.from_config(pipe.scheduler.config).alphas_cumprod.double()
    sigmas = ((1 - acp) / acp).sqrt()
    return float(sigmas[0]), float(sigmas[-1])


# An extension author's sampler: Euler in the k-diffusion style, about ten lines.
def _euler_function(denoise, x, sigmas, *, generator, callback):
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(x, sigma)
        x = x + (x - x0) / sigma * (sigma_next - sigma)
        callback(i, x, x0)
    return x


class _EulerPlugin:
    @hookimpl
    def register_samplers(self) -> list[SamplerSpec]:
        return [SamplerSpec(name="Euler (function)", sample_fn=_euler_function, aliases=("my_euler",))]


@pytest.mark.parametrize("pipe_fixture", ["sd1_pipe", "sd2v_pipe"])
def test_a_plugin_function_sampler_equals_the_diffusers_scheduler(pipe_fixture: str, request) -> None:
    """The adapter (c_in, sigma -> timestep, eps/v -> x0) adds no error: same result as diffusers' Euler."""
    sd1_model = TinyModel(pipe=request.getfixturevalue(pipe_fixture))
    registry = _registry_with(("my-extension", _EulerPlugin().register_samplers()))
    steps_seen: list[int] = []
    ours = run_txt2img(sd1_model, tiny_params(sampler_name="my_euler", scheduler="Karras", steps=4),
                       samplers=registry, control=JobControl(), on_step=lambda s: steps_seen.append(s.step),
                       output_type="latent")
    reference = run_txt2img(sd1_model, tiny_params(sampler_name="Euler", scheduler="Karras", steps=4,
                                                   sampler_path="diffusers"),
                            samplers=registry, control=JobControl(), on_step=lambda _: None,
                            output_type="latent")
    assert steps_seen == [1, 2, 3, 4]
    torch.testing.assert_close(ours.images[0].image, reference.images[0].image, atol=1e-4, rtol=1e-4)


def test_ancestral_step_splits_the_noise() -> None:
    down, up = ancestral_step(10.0, 5.0, eta=1.0)
    assert down**2 + up**2 == pytest.approx(25.0)
    assert ancestral_step(10.0, 5.0, eta=0.0) == (5.0, 0.0)
    assert ancestral_step(10.0, 0.0) == (0.0, 0.0)


def test_schedule_sigmas_refuses_bad_plugin_output(sd1_pipe) -> None:
    rising = ScheduleSpec(name="Rising", sigmas_fn=lambda n, lo, hi: torch.linspace(lo, hi, n))
    with pytest.raises(ValueError, match="decreasing"):
        schedule_sigmas(rising, 4, sd1_pipe.scheduler.config)


def test_the_example_extension_sampler_runs_in_the_loop(sd1_model) -> None:
    """The shipped example extension (extensions/example-sampler) keeps working with the contract."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "extensions" / "example-sampler" / "__init__.py"
    spec = importlib.util.spec_from_file_location("sdweb_example_sampler", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    registry = _registry_with(("example-sampler", module.register_samplers()))
    ours = run_txt2img(sd1_model, tiny_params(sampler_name="k_euler_example", scheduler="Karras", steps=3),
                       samplers=registry, control=JobControl(), on_step=lambda _: None, output_type="latent")
    reference = run_txt2img(sd1_model, tiny_params(sampler_name="Euler", scheduler="Karras", steps=3,
                                                   sampler_path="diffusers"),
                            samplers=registry, control=JobControl(), on_step=lambda _: None,
                            output_type="latent")
    torch.testing.assert_close(ours.images[0].image, reference.images[0].image, atol=1e-4, rtol=1e-4)

"""A1111 parity: every k-diffusion sampler x every schedule type gives k-diffusion's latents, step by step.

The oracle is k-diffusion itself (``tests/engine/kdiffusion_oracle.py``) driven the way A1111 1.10 drives
it: ``CompVisDenoiser`` with quantized timesteps, CFG combined on the denoised latents, sigmas from
A1111's schedule functions (k-diffusion's own Karras / Exponential / Polyexponential, and A1111's
sd_schedulers formulas for the others, restated below), the "discard penultimate sigma" rule, ancestral
noise drawn from each image's generator after its initial noise, and one Brownian tree per image seeded
with the image's seed. Restart and LCM are A1111's own samplers on k-diffusion primitives: restated
here from A1111's sd_samplers_extra / sd_samplers_lcm. sdweb's implementation
(``sdweb.engine.samplers.kdiffusion``) shares no code with any of it.

The model is a tiny deterministic "UNet" (a smooth function of the scaled input, the timestep and the
conditioning), so the whole grid runs in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from sdweb.engine.samplers import builtin
from sdweb.engine.samplers.kdiffusion import DiscreteDenoiser
from sdweb.engine.samplers.registry import FunctionSamplerPlan, SamplerRegistry
from tests.engine.kdiffusion_oracle import load

SD_CONFIG = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
             "num_train_timesteps": 1000, "prediction_type": "epsilon"}
SEEDS = [1234, 98765]
SHAPE = (4, 8, 8)
CFG = 5.0
STEPS = 6

KDIFFUSION_SAMPLERS = {
    # A1111 name: (k-diffusion function, extra keyword arguments A1111 passes)
    "DPM++ 2M": ("sample_dpmpp_2m", {}),
    "DPM++ SDE": ("sample_dpmpp_sde", {"eta": 1.0}),
    "DPM++ 2M SDE": ("sample_dpmpp_2m_sde", {"eta": 1.0}),
    "DPM++ 2M SDE Heun": ("sample_dpmpp_2m_sde", {"eta": 1.0, "solver_type": "heun"}),
    "DPM++ 2S a": ("sample_dpmpp_2s_ancestral", {"eta": 1.0}),
    "DPM++ 3M SDE": ("sample_dpmpp_3m_sde", {"eta": 1.0}),
    "Euler a": ("sample_euler_ancestral", {"eta": 1.0}),
    "Euler": ("sample_euler", {}),
    "LMS": ("sample_lms", {}),
    "Heun": ("sample_heun", {}),
    "DPM2": ("sample_dpm_2", {}),
    "DPM2 a": ("sample_dpm_2_ancestral", {"eta": 1.0}),
    "DPM fast": ("sample_dpm_fast", {"eta": 1.0}),
    "DPM adaptive": ("sample_dpm_adaptive", {"eta": 1.0}),
    "Restart": ("restart", {}),
    "LCM": ("lcm", {}),
}
SCHEDULES = ["Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
             "Align Your Steps", "Simple", "Normal", "DDIM", "Beta"]


@pytest.fixture(scope="module")
def registry() -> SamplerRegistry:
    return SamplerRegistry.from_plugin_results([("builtin", builtin.register_samplers())],
                                               [("builtin", builtin.register_schedules())])


def ldm_alphas_cumprod() -> torch.Tensor:
    """What an SD checkpoint's LDM model carries: betas in float64, alphas_cumprod stored float32."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


def fake_unet(x_in: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """A smooth stand-in for the UNet's noise prediction: depends on input, timestep and conditioning."""
    t = torch.as_tensor(t, dtype=torch.float32).reshape(-1, *([1] * (x_in.ndim - 1)))
    # Mostly the scaled input (what a good noise predictor returns at high noise), so x0 stays O(1)
    # as real latents do; the rest is nonlinear in the input, the timestep and the conditioning.
    return 0.9 * x_in + 0.3 * torch.tanh(0.8 * x_in + cond) * (1.0 - t / 2000.0) * torch.cos(t / 300.0)


CONDS = (torch.tensor(0.0), torch.tensor(0.3))  # uncond, cond


# -- the oracle: A1111's side ----------------------------------------------------------------------


class FakeLDM(torch.nn.Module):
    def __init__(self, downcast: bool = False) -> None:
        super().__init__()
        # A1111's "Downcast alphas_cumprod": sd_model.alphas_cumprod = alphas_cumprod_original.half()
        self.alphas_cumprod = ldm_alphas_cumprod().half() if downcast else ldm_alphas_cumprod()

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return fake_unet(x, t, cond)


def a1111_cfg(model_wrap: Any) -> Any:
    """A1111's CFGDenoiser for one prompt: both conditionings denoised, combined on x0."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        uncond = model_wrap(x, sigma, cond=CONDS[0])
        cond = model_wrap(x, sigma, cond=CONDS[1])
        return uncond + (cond - uncond) * CFG

    return denoise


def lcm_wrapper(external: Any, sampling: Any, downcast: bool = False) -> Any:
    """A1111's LCMCompVisDenoiser (sd_samplers_lcm), restated on k-diffusion's DiscreteEpsDDPMDenoiser."""

    class LCMDenoiser(external.DiscreteEpsDDPMDenoiser):
        def __init__(self, model: Any) -> None:
            self.skip_steps = 1000 // 50
            valid = torch.zeros(50, dtype=torch.float32)
            for k in range(50):
                valid[50 - 1 - k] = model.alphas_cumprod[1000 - 1 - k * self.skip_steps]
            super().__init__(model, valid, quantize=None)

        def get_sigmas(self, n: int | None = None) -> torch.Tensor:
            start, end = self.sigma_to_t(self.sigma_max), self.sigma_to_t(self.sigma_min)
            return sampling.append_zero(self.t_to_sigma(torch.linspace(start, end, n)))

        def sigma_to_t(self, sigma: torch.Tensor, quantize: Any = None) -> torch.Tensor:
            dists = sigma.log() - self.log_sigmas[:, None]
            return dists.abs().argmin(dim=0).view(sigma.shape) * self.skip_steps + (self.skip_steps - 1)

        def t_to_sigma(self, timestep: torch.Tensor) -> torch.Tensor:
            t = torch.clamp(((timestep - (self.skip_steps - 1)) / self.skip_steps).float(), min=0,
                            max=(len(self.sigmas) - 1))
            return super().t_to_sigma(t)

        def get_eps(self, *args: Any, **kwargs: Any) -> torch.Tensor:
            return self.inner_model.apply_model(*args, **kwargs)

        def forward(self, input: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            c_out, c_in = [x[:, None, None, None] for x in self.get_scalings(sigma)]
            eps = self.get_eps(input * c_in, self.sigma_to_t(sigma), **kwargs)
            out = input + eps * c_out
            scaled = self.sigma_to_t(sigma)[:, None, None, None] * 10.0
            c_skip = 0.25 / (scaled**2 + 0.25)
            c_out2 = scaled / (scaled**2 + 0.25) ** 0.5
            return c_out2 * out + c_skip * input

    return LCMDenoiser(FakeLDM(downcast))


def a1111_schedule(label: str, n: int, inner: Any, sampling: Any) -> torch.Tensor:
    """A1111 1.10's sd_schedulers functions (inner = k-diffusion's model wrapper)."""
    lo, hi = inner.sigmas[0].item(), inner.sigmas[-1].item()
    if label == "Uniform":
        return inner.get_sigmas(n)
    if label == "Karras":
        return sampling.get_sigmas_karras(n, lo, hi)
    if label == "Exponential":
        return sampling.get_sigmas_exponential(n, lo, hi)
    if label == "Polyexponential":
        return sampling.get_sigmas_polyexponential(n, lo, hi)
    if label in ("SGM Uniform", "Normal"):
        start, end = inner.sigma_to_t(torch.tensor(hi)), inner.sigma_to_t(torch.tensor(lo))
        ts = torch.linspace(start, end, n + 1)[:-1] if label == "SGM Uniform" else torch.linspace(
            start, end, n)
        return torch.FloatTensor([inner.t_to_sigma(t) for t in ts] + [0.0])
    if label == "KL Optimal":
        a_min, a_max = torch.arctan(torch.tensor(lo)), torch.arctan(torch.tensor(hi))
        k = torch.arange(n + 1)
        return torch.tan(k / n * a_min + (1.0 - k / n) * a_max)
    if label == "Align Your Steps":
        published = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
        if n == len(published):
            return torch.FloatTensor([*published, 0.0])
        ys = np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(published)), np.log(published[::-1]))
        return torch.FloatTensor(np.append(np.exp(ys)[::-1].copy(), [0.0]))
    if label == "Simple":
        ss = len(inner.sigmas) / n
        return torch.FloatTensor([float(inner.sigmas[-(1 + int(x * ss))]) for x in range(n)] + [0.0])
    if label == "DDIM":
        ss, values, x = max(len(inner.sigmas) // n, 1), [], 1
        while x < len(inner.sigmas):
            values.append(float(inner.sigmas[x]))
            x += ss
        return torch.FloatTensor(values[::-1] + [0.0])
    if label == "Beta":
        from scipy import stats

        points = [stats.beta.ppf(x, 0.6, 0.6) for x in 1 - np.linspace(0, 1, n)]
        return torch.FloatTensor([lo + p * (hi - lo) for p in points] + [0.0])
    raise AssertionError(label)


A1111_DEFAULT_SCHEDULE = {"DPM++ 2M": "Karras", "DPM++ SDE": "Karras", "DPM++ 2M SDE": "Exponential",
                          "DPM++ 2M SDE Heun": "Exponential", "DPM++ 2S a": "Karras",
                          "DPM++ 3M SDE": "Exponential", "DPM2": "Karras", "DPM2 a": "Karras",
                          "Restart": "Karras"}
DISCARD = {"DPM2", "DPM2 a", "DPM++ 3M SDE"}


def oracle_restart(sampling: Any) -> Any:
    """A1111's restart_sampler (sd_samplers_extra), restated on k-diffusion's primitives."""

    def restart(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: Any = None,
                callback: Any = None, disable: Any = None) -> torch.Tensor:
        s_in = x.new_ones([x.shape[0]])
        step_id = 0

        def heun_step(x: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            nonlocal step_id
            denoised = model(x, old * s_in)
            d = sampling.to_d(x, old, denoised)
            callback({"x": x, "i": step_id, "denoised": denoised})
            dt = new - old
            if new == 0:
                x = x + d * dt
            else:
                x_2 = x + d * dt
                d_2 = sampling.to_d(x_2, new, model(x_2, new * s_in))
                x = x + (d + d_2) / 2 * dt
            step_id += 1
            return x

        steps = sigmas.shape[0] - 1
        restart_list: dict[float, list[Any]] = {}
        if steps >= 20:
            restart_steps, restart_times = 9, 1
            if steps >= 36:
                restart_steps, restart_times = steps // 4, 2
            sigmas = sampling.get_sigmas_karras(steps - restart_steps * restart_times, sigmas[-2].item(),
                                                sigmas[0].item())
            restart_list = {0.1: [restart_steps + 1, restart_times, 2]}
        by_index = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in restart_list.items()}
        step_list = []
        for i in range(len(sigmas) - 1):
            step_list.append((sigmas[i], sigmas[i + 1]))
            if i + 1 in by_index:
                r_steps, r_times, r_max = by_index[i + 1]
                min_idx, max_idx = i + 1, int(torch.argmin(abs(sigmas - r_max), dim=0))
                if max_idx < min_idx:
                    sigma_restart = sampling.get_sigmas_karras(r_steps, sigmas[min_idx].item(),
                                                               sigmas[max_idx].item())[:-1]
                    for _ in range(r_times):
                        step_list.extend(zip(sigma_restart[:-1], sigma_restart[1:], strict=True))
        last = None
        for old, new in step_list:
            if last is None:
                last = old
            elif last < old:
                x = x + sampling.torch.randn_like(x) * (old**2 - last**2) ** 0.5
            x = heun_step(x, old, new)
            last = new
        return x

    return restart


def oracle_lcm(sampling: Any) -> Any:
    def lcm(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: Any = None, callback: Any = None,
            disable: Any = None, noise_sampler: Any = None) -> torch.Tensor:
        noise_sampler = sampling.default_noise_sampler(x) if noise_sampler is None else noise_sampler
        s_in = x.new_ones([x.shape[0]])
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i] * s_in)
            callback({"x": x, "i": i, "denoised": denoised})
            x = denoised
            if sigmas[i + 1] > 0:
                x = x + sigmas[i + 1] * noise_sampler(sigmas[i], sigmas[i + 1])
        return x

    return lcm


class ImageRNG:
    """A1111's per-image generators: the initial noise, then ``next()`` for every later draw."""

    def __init__(self, seeds: list[int]) -> None:
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.first = torch.stack([torch.randn(SHAPE, generator=g) for g in self.generators])

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.randn(SHAPE, generator=g) for g in self.generators])


class TorchHijack:
    def __init__(self, rng: ImageRNG) -> None:
        self.rng = rng

    def __getattr__(self, item: str) -> Any:
        if item == "randn_like":
            return self.rng.randn_like
        return getattr(torch, item)


def run_oracle(name: str, schedule: str, steps: int, downcast: bool = False,
               options: dict[str, Any] | None = None) -> tuple[
        torch.Tensor, list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """A1111's sample(): sigmas, x = noise * sigmas[0], the k-diffusion function with A1111's arguments."""
    sampling, external = load()
    function_name, kwargs = KDIFFUSION_SAMPLERS[name]
    if name == "LCM":
        inner = lcm_wrapper(external, sampling, downcast)
    else:
        inner = external.CompVisDenoiser(FakeLDM(downcast), quantize=True)
    label = A1111_DEFAULT_SCHEDULE.get(name, "Uniform") if schedule == "Automatic" else schedule
    n = steps + 1 if name in DISCARD else steps
    sigmas = a1111_schedule(label, n, inner, sampling)
    if name in DISCARD:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    rng = ImageRNG(SEEDS)
    x = rng.first * sigmas[0]
    xs: list[torch.Tensor] = []
    denoised: list[torch.Tensor] = []

    def callback(info: dict[str, Any]) -> None:
        xs.append(info["x"].clone())
        denoised.append(info["denoised"].clone())

    original_torch = sampling.torch
    sampling.torch = TorchHijack(rng)
    try:
        extra = {**kwargs, **(options or {})}  # options: A1111's sampler parameters (s_churn ...)
        if function_name == "restart":
            function = oracle_restart(sampling)
        elif function_name == "lcm":
            function = oracle_lcm(sampling)
        else:
            function = getattr(sampling, function_name)
        if function_name in ("sample_dpm_fast", "sample_dpm_adaptive"):
            extra.update(sigma_min=inner.sigmas[0].item(), sigma_max=inner.sigmas[-1].item())
            if function_name == "sample_dpm_fast":
                extra["n"] = steps
        else:
            extra["sigmas"] = sigmas
        if name in ("DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE"):
            extra["noise_sampler"] = sampling.BrownianTreeNoiseSampler(
                x, sigmas[sigmas > 0].min(), sigmas.max(), seed=list(SEEDS))
        with torch.no_grad():
            final = function(a1111_cfg(inner), x, callback=callback, disable=True, **extra)
    finally:
        sampling.torch = original_torch
    return sigmas, xs, denoised, final


# -- sdweb's side ---------------------------------------------------------------------------------


def fake_cfg_unet(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The fake UNet's CFG prediction (uncond and cond at the test's scale), as the denoiser's model."""
    uncond, cond = fake_unet(x_in, t, CONDS[0]), fake_unet(x_in, t, CONDS[1])
    return uncond + (cond - uncond) * CFG


def seeded_noise() -> tuple[list[torch.Generator], torch.Tensor]:
    """One CPU generator per test seed, and each image's starting noise drawn from it."""
    generators = [torch.Generator().manual_seed(seed) for seed in SEEDS]
    return generators, torch.stack([torch.randn(SHAPE, generator=g) for g in generators])


def run_sdweb(registry: SamplerRegistry, name: str, schedule: str, steps: int,
              downcast: bool = False, options: dict[str, Any] | None = None) -> tuple[
                  torch.Tensor, list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    plan = registry.build(name, schedule, SD_CONFIG, downcast_alphas=downcast)
    assert isinstance(plan, FunctionSamplerPlan) and plan.a1111
    sigmas = plan.sigmas(steps)
    generators, noise = seeded_noise()
    model = plan.model_sigmas()

    denoiser = DiscreteDenoiser(fake_cfg_unet, model)
    xs: list[torch.Tensor] = []
    denoised: list[torch.Tensor] = []

    def callback(i: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        xs.append(x.clone())
        denoised.append(x0.clone())

    function = plan.sampler.sampling_function()
    assert function is not None
    import inspect

    accepted = inspect.signature(function).parameters
    extra: dict[str, Any] = dict(options or {})
    if "seeds" in accepted:
        extra["seeds"] = list(SEEDS)
    if "sigma_range" in accepted:
        extra["sigma_range"] = (model.sigma_min, model.sigma_max)
    if "steps" in accepted:
        extra["steps"] = steps
    final = function(denoiser, noise * float(sigmas[0]), sigmas, generator=generators, callback=callback,
                     **extra)
    return sigmas, xs, denoised, final


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(actual, expected.to(actual.dtype), atol=1e-4, rtol=0,
                               msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", list(KDIFFUSION_SAMPLERS))
def test_sampler_and_schedule_match_a1111s_k_diffusion(registry: SamplerRegistry, name: str,
                                                       schedule: str) -> None:
    steps = 20 if name == "Restart" else STEPS  # Restart only restarts from 20 steps on
    o_sigmas, o_xs, o_denoised, o_final = run_oracle(name, schedule, steps)
    s_sigmas, s_xs, s_denoised, s_final = run_sdweb(registry, name, schedule, steps)
    if name not in ("DPM fast", "DPM adaptive"):  # they integrate over the model's range, not the schedule
        _close(s_sigmas, o_sigmas, "sigmas")
    assert len(s_denoised) == len(o_denoised), "model evaluations reported per step"
    for i, (mine, theirs) in enumerate(zip(s_denoised, o_denoised, strict=True)):
        _close(mine, theirs, f"denoised latents at step {i}")
    if name == "DPM adaptive":  # k-diffusion reports x after the step there
        for i, (mine, theirs) in enumerate(zip(s_xs, o_xs, strict=True)):
            _close(mine, theirs, f"latents after step {i}")
    elif name != "Restart":  # k-diffusion reports x before each step: after step i-1
        for i, (mine, theirs) in enumerate(zip(s_xs[:-1], o_xs[1:], strict=True)):
            _close(mine, theirs, f"latents after step {i}")
    _close(s_final, o_final, "final latents")
    assert torch.isfinite(s_final).all()


@pytest.mark.parametrize(("name", "options"), [
    ("Euler", {"s_churn": 1.5}),
    ("Euler", {"s_churn": 3.0, "s_tmin": 0.5, "s_tmax": 4.0, "s_noise": 1.003}),
    ("Heun", {"s_churn": 1.0, "s_noise": 0.98}),
    ("DPM2", {"s_churn": 2.0, "s_tmin": 1.0}),
    ("DPM2 a", {"s_noise": 0.9}),
    ("DPM++ 2S a", {"s_noise": 1.05}),
    ("DPM++ SDE", {"s_noise": 0.9}),
    ("DPM++ 2M SDE", {"s_noise": 0.8}),
    ("DPM++ 2M SDE Heun", {"s_noise": 0.8}),
    ("DPM++ 3M SDE", {"s_noise": 1.1}),
    ("DPM fast", {"s_noise": 0.9}),
])
def test_sampler_parameters_match_k_diffusion(registry: SamplerRegistry, name: str,
                                              options: dict[str, Any]) -> None:
    """A1111's "Sigma churn / tmin / tmax / noise" (s_churn ...) as k-diffusion's functions take them:
    churn raises each step's level with noise drawn from the images' generators (A1111's noise hijack),
    s_noise scales the noise drawn. sdweb's latents equal k-diffusion's step by step, and differ from the
    defaults' (the parameters act)."""
    o_sigmas, _o_xs, o_denoised, o_final = run_oracle(name, "Automatic", STEPS, options=options)
    s_sigmas, _s_xs, s_denoised, s_final = run_sdweb(registry, name, "Automatic", STEPS, options=options)
    assert len(s_denoised) == len(o_denoised)
    for i, (mine, theirs) in enumerate(zip(s_denoised, o_denoised, strict=True)):
        _close(mine, theirs, f"denoised latents at step {i}")
    _close(s_final, o_final, "final latents")
    _sigmas, _xs, _denoised, default_final = run_sdweb(registry, name, "Automatic", STEPS)
    assert float((default_final - s_final).abs().max()) > 1e-3, "the parameters change the image"


def test_a1111s_sampler_parameters_reach_the_functions_that_take_them(registry: SamplerRegistry) -> None:
    """A1111's sampler_extra_params: Euler, Heun, DPM2 take all four, the noisy samplers s_noise only,
    Euler a, DPM adaptive, LMS, DPM++ 2M, Restart and LCM none (A1111 hands them nothing)."""
    import inspect

    from sdweb.params import SIGMA_DEFAULTS, SIGMA_SAMPLERS

    for name in KDIFFUSION_SAMPLERS:
        plan = registry.build(name, "Automatic", SD_CONFIG)
        assert isinstance(plan, FunctionSamplerPlan)
        function = plan.sampler.sampling_function()
        taken = tuple(key for key in SIGMA_DEFAULTS if key in inspect.signature(function).parameters)
        assert taken == SIGMA_SAMPLERS.get(name, ()), name


@pytest.mark.parametrize(("name", "schedule"), [("Euler a", "Automatic"), ("DPM++ 2M", "Karras"),
                                              ("DPM++ 2M SDE", "SGM Uniform"), ("DPM2", "Normal"),
                                              ("DPM adaptive", "Automatic"), ("LCM", "Automatic")])
def test_downcast_alphas_cumprod_matches_a1111_on_fp16_alphas(registry: SamplerRegistry, name: str,
                                                               schedule: str) -> None:
    """A1111's "Downcast alphas_cumprod" (use_downcasted_alpha_bar; always on before A1111 1.7): the model's
    alphas_cumprod are fp16 when k-diffusion's wrapper is built, so every sigma and timestep comes from
    them. sdweb's sigmas and latents equal that, and differ from the float32 alphas' run."""
    o_sigmas, _o_xs, o_denoised, o_final = run_oracle(name, schedule, STEPS, downcast=True)
    s_sigmas, _s_xs, s_denoised, s_final = run_sdweb(registry, name, schedule, STEPS, downcast=True)
    if name != "DPM adaptive":
        _close(s_sigmas, o_sigmas, "sigmas")
    assert len(s_denoised) == len(o_denoised)
    for i, (mine, theirs) in enumerate(zip(s_denoised, o_denoised, strict=True)):
        _close(mine, theirs, f"denoised latents at step {i}")
    _close(s_final, o_final, "final latents")
    default_sigmas, _xs, _denoised, default_final = run_sdweb(registry, name, schedule, STEPS)
    if name != "DPM adaptive":
        assert float((default_sigmas - s_sigmas).abs().max()) > 1e-4, "fp16 alphas move the sigmas"
    assert float((default_final - s_final).abs().max()) > 1e-4, "and the image"


def test_downcast_alphas_apply_to_a1111_samplers_only(registry: SamplerRegistry) -> None:
    a1111 = registry.build("Euler", "Karras", SD_CONFIG, downcast_alphas=True)
    assert isinstance(a1111, FunctionSamplerPlan)
    assert a1111.alphas_cumprod().dtype == torch.float16
    fp16_sigma_max = torch.tensor(14.609375)  # sqrt((1 - a) / a) of the fp16 alpha, computed in fp16
    torch.testing.assert_close(a1111.model_sigmas().sigmas[-1], fp16_sigma_max, atol=0, rtol=0)
    plain = registry.build("Euler", "Karras", SD_CONFIG)
    assert isinstance(plain, FunctionSamplerPlan) and plain.alphas_cumprod().dtype == torch.float32
    diffusers = registry.build("Euler", "Karras", SD_CONFIG, path="diffusers", downcast_alphas=True)
    assert not isinstance(diffusers, FunctionSamplerPlan)  # diffusers' own float32 tables


def test_sdxl_align_your_steps_uses_the_sdxl_table(registry: SamplerRegistry) -> None:
    plan = registry.build("Euler", "Align Your Steps", SD_CONFIG)
    assert isinstance(plan, FunctionSamplerPlan)
    sd, sdxl = plan.sigmas(11), plan.sigmas(11, sdxl=True)
    assert [round(float(v), 3) for v in sdxl[:3]] == [14.615, 6.315, 3.771]
    assert [round(float(v), 3) for v in sd[:3]] == [14.615, 6.475, 3.861]
    assert math.isclose(float(sd[-1]), 0.0)


# -- the real loop: run_txt2img on the tiny SD model equals A1111's sampling of the same UNet ----------


class _UNetLDM(torch.nn.Module):
    """The tiny UNet seen as A1111's LDM model: ``apply_model(x, t, cond)`` with the LDM's alphas."""

    def __init__(self, unet: Any, downcast: bool = False) -> None:
        super().__init__()
        self.unet = unet
        self.alphas_cumprod = ldm_alphas_cumprod().half() if downcast else ldm_alphas_cumprod()

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=cond, return_dict=False)[0]


def _a1111_generators(seeds: list[int], rng: str) -> list[Any]:
    if rng == "NV":
        from sdweb.engine.seeds import PhiloxGenerator  # pinned on its own in test_seeds.py

        return [PhiloxGenerator(seed) for seed in seeds]
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def _draw(generators: list[Any], shape: tuple[int, ...]) -> torch.Tensor:
    return torch.stack([g.randn(shape) if hasattr(g, "randn") else torch.randn(shape, generator=g)
                        for g in generators])


def a1111_cfg_denoiser(inner: Any, cond: torch.Tensor, uncond: torch.Tensor, cfg_scale: float) -> Any:
    """A1111's CFGDenoiser over ``inner`` (a k-diffusion wrapper): one batch of cond and uncond rows."""

    def cfg_denoiser(x_in: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        both = inner(torch.cat([x_in, x_in]), torch.cat([sigma, sigma]),
                     cond=torch.cat([cond.repeat(2, 1, 1), uncond.repeat(2, 1, 1)]))
        denoised_cond, denoised_uncond = both.chunk(2)
        return denoised_uncond + (denoised_cond - denoised_uncond) * cfg_scale

    return cfg_denoiser


def run_with_image_noise(sampling: Any, generators: list[Any], function_name: str, denoiser: Any,
                         x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """k-diffusion's ``function_name`` with its ``torch.randn_like`` drawing from each image's generator
    (A1111's sampler noise hijack)."""

    class Hijack:
        def __getattr__(self, item: str) -> Any:
            return (lambda like: _draw(generators, tuple(like.shape[1:]))) if item == "randn_like" \
                else getattr(torch, item)

    original = sampling.torch
    sampling.torch = Hijack()
    try:
        with torch.no_grad():
            return getattr(sampling, function_name)(denoiser, x, disable=True, **kwargs)
    finally:
        sampling.torch = original


@pytest.mark.parametrize(("name", "schedule", "rng", "ensd", "downcast", "options"), [
    ("Euler a", "Automatic", "CPU", 31337, False, {}),
    pytest.param("DPM++ 2M SDE", "Karras", "CPU", 0, False, {}, marks=pytest.mark.slow),
    ("DPM2 a", "Automatic", "NV", 31337, False, {}),
    pytest.param("DPM++ 2M", "Align Your Steps", "NV", 0, False, {}, marks=pytest.mark.slow),
    ("DPM++ 2M", "Karras", "CPU", 0, True, {}),  # use_downcasted_alpha_bar: fp16 alphas_cumprod
    # A1111's sampler parameters (request fields / settings s_churn ...): churn noise from the generators.
    ("Euler", "Automatic", "CPU", 31337, False, {"s_churn": 2.0, "s_tmax": 10.0, "s_noise": 0.97}),
    ("DPM++ 2M SDE", "Karras", "CPU", 0, False, {"s_noise": 0.9}),
])
def test_the_generation_loop_equals_a1111s_sampling_of_the_same_unet(sd1_model: Any, name: str, schedule: str,
                                                                      rng: str, ensd: int, downcast: bool,
                                                                      options: dict[str, Any]) -> None:
    from sdweb.engine.encode import PromptEncoder
    from sdweb.engine.generate import run_txt2img
    from sdweb.params import JobControl
    from tests.engine.conftest import tiny_params

    registry = SamplerRegistry.from_plugin_results([("builtin", builtin.register_samplers())],
                                                   [("builtin", builtin.register_schedules())])
    params = tiny_params(sampler_name=name, scheduler=schedule, steps=4, rng=rng, eta_noise_seed_delta=ensd,
                         batch_size=2, cfg_scale=6.0, use_downcasted_alpha_bar=downcast, **options)
    run = run_txt2img(sd1_model, params, samplers=registry, control=JobControl(), on_step=lambda _: None,
                      output_type="latent")
    ours = torch.cat([image.image for image in run.images])
    if downcast:  # the setting changes the image
        plain = run_txt2img(sd1_model, params.model_copy(update={"use_downcasted_alpha_bar": False}),
                            samplers=registry, control=JobControl(), on_step=lambda _: None,
                            output_type="latent")
        assert float((torch.cat([image.image for image in plain.images]) - ours).abs().max()) > 1e-3

    # A1111: sigmas, noise from the seeds' generators (ENSD: fresh generators at seed + ENSD for the
    # sampler's draws), CFGDenoiser over CompVisDenoiser(quantize=True), the k-diffusion function.
    sampling, external = load()
    pipe = sd1_model.pipe
    cond, uncond = (item.hidden for item in PromptEncoder(pipe, device="cpu", dtype=torch.float32)
                    .encode_texts([params.prompt, params.negative_prompt], clip_skip=1))
    inner = external.CompVisDenoiser(_UNetLDM(pipe.unet, downcast), quantize=True)
    label = A1111_DEFAULT_SCHEDULE.get(name, "Uniform") if schedule == "Automatic" else schedule
    n = params.steps + 1 if name in DISCARD else params.steps
    sigmas = a1111_schedule(label, n, inner, sampling)
    if name in DISCARD:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    seeds = [params.seed, params.seed + 1]
    generators = _a1111_generators(seeds, rng)
    x = _draw(generators, tuple(ours.shape[1:])) * sigmas[0]
    if ensd:
        generators = _a1111_generators([seed + ensd for seed in seeds], rng)

    function_name, kwargs = KDIFFUSION_SAMPLERS[name]
    extra = {**kwargs, **options}
    if "SDE" in name:
        extra["noise_sampler"] = sampling.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(),
                                                                   seed=seeds)
    expected = run_with_image_noise(sampling, generators, function_name,
                                    a1111_cfg_denoiser(inner, cond, uncond, params.cfg_scale), x,
                                    sigmas=sigmas, **extra)
    # 1e-4, relative to the size of the latents: the random tiny UNet drives them to ~30 (fp32 ulp ~2e-6).
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(ours / scale, expected / scale, atol=1e-5, rtol=0)
    assert ("ENSD: 31337" in build_infotext_for(params)) == bool(ensd)


def build_infotext_for(params: Any) -> str:
    from sdweb.images.infotext import build_infotext

    extra = {} if params.eta_noise_seed_delta else {"ENSD": None}
    return build_infotext(params, seed=params.seed, subseed=params.subseed, model_name="m", model_hash="h",
                          rng=params.rng, extra=extra, version="v")


# -- A1111's timestep samplers: DDIM and PLMS (sd_samplers_timesteps_impl, restated) ---------------------


Trajectory = tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]


def a1111_plms_eps(e_t: torch.Tensor, old_eps: list[torch.Tensor],
                   heun_start: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A1111's PLMS noise estimate from ``e_t`` and up to three earlier ones (``old_eps``, oldest first;
    ``e_t`` is added, the list kept at three); the first step averages ``e_t`` with ``heun_start()``, the
    noise predicted one step on."""
    if not old_eps:
        e_prime = (e_t + heun_start()) / 2
    elif len(old_eps) == 1:
        e_prime = (3 * e_t - old_eps[-1]) / 2
    elif len(old_eps) == 2:
        e_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
    else:
        e_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
    old_eps.append(e_t)
    if len(old_eps) >= 4:
        old_eps.pop(0)
    return e_prime


def _a1111_timestep_sampler(name: str, steps: int, eta: float, downcast: bool = False) -> Trajectory:
    alphas_cumprod = ldm_alphas_cumprod().half() if downcast else ldm_alphas_cumprod()
    timesteps = torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    sqrt_one_minus = torch.sqrt(1 - alphas)
    sigmas = eta * np.sqrt((1 - alphas_prev.numpy()) / (1 - alphas) * (1 - alphas / alphas_prev.numpy()))
    rng = ImageRNG(SEEDS)
    x = rng.first.clone()

    def model(x_t: torch.Tensor, t: float) -> torch.Tensor:  # CFGDenoiserTimesteps: CFG on the noise
        timestep = torch.tensor([t])
        uncond, cond = fake_unet(x_t, timestep, CONDS[0]), fake_unet(x_t, timestep, CONDS[1])
        return uncond + (cond - uncond) * CFG

    xs: list[torch.Tensor] = []
    x0s: list[torch.Tensor] = []
    old_eps: list[torch.Tensor] = []

    def update(e: torch.Tensor, index: int, x_t: torch.Tensor,
               sigma_t: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        a_t, a_prev = alphas[index].item(), alphas_prev[index].item()
        pred_x0 = (x_t - sqrt_one_minus[index].item() * e) / math.sqrt(a_t)
        return math.sqrt(a_prev) * pred_x0 + math.sqrt(1.0 - a_prev - sigma_t**2) * e, pred_x0

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item())
        if name == "DDIM":
            sigma_t = float(sigmas[index])
            x, pred_x0 = update(e_t, index, x, sigma_t)
            x = x + sigma_t * rng.randn_like(x)
        else:
            def heun_start(e_t: torch.Tensor = e_t, index: int = index, x: torch.Tensor = x) -> torch.Tensor:
                x_prev, _ = update(e_t, index, x)
                return model(x_prev, timesteps[max(index - 1, 0)].item())

            x, pred_x0 = update(a1111_plms_eps(e_t, old_eps, heun_start), index, x)
        xs.append(x.clone())
        x0s.append(pred_x0.clone())
    return xs, x0s, x


@pytest.mark.parametrize(("name", "eta", "schedule"), [("DDIM", 0.0, "Automatic"), ("DDIM", 0.7, "Karras"),
                                                       ("PLMS", 0.0, "Automatic"), ("PLMS", 0.0, "Beta")])
def test_ddim_and_plms_follow_a1111s_timesteps_and_updates(registry: SamplerRegistry, name: str, eta: float,
                                                           schedule: str) -> None:
    steps = 7  # 1000 // 7 = 142: timesteps 1, 143, ..., 853 and 995 (eight of them, seven calls)
    expected_xs, expected_x0s, expected = _a1111_timestep_sampler(name, steps, eta)
    plan = registry.build(name, schedule, SD_CONFIG)
    assert isinstance(plan, FunctionSamplerPlan) and plan.a1111
    sigmas = plan.sigmas(steps)  # the schedule type does not matter to them (as in A1111)
    model = plan.model_sigmas()
    torch.testing.assert_close(sigmas[:-1], model.sigmas[[995, 853, 711, 569, 427, 285, 143, 1]])
    generators, noise = seeded_noise()

    xs: list[torch.Tensor] = []
    x0s: list[torch.Tensor] = []

    def callback(i: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        xs.append(x.clone())
        x0s.append(x0.clone())

    function = plan.sampler.sampling_function()
    extra = {"eta": eta} if name == "DDIM" else {}
    final = function(DiscreteDenoiser(fake_cfg_unet, model), noise * float(sigmas[0]), sigmas,
                     generator=generators, callback=callback, **extra)
    assert len(xs) == len(expected_xs) == 7
    for i in range(7):
        _close(xs[i], expected_xs[i], f"latents after step {i}")
        _close(x0s[i], expected_x0s[i], f"predicted x0 at step {i}")
    _close(final, expected, "final latents")


@pytest.mark.parametrize(("name", "eta"), [("DDIM", 0.0), ("DDIM", 0.7), ("PLMS", 0.0)])
def test_ddim_and_plms_with_downcast_alphas_cumprod_use_a1111s_fp16_alphas(registry: SamplerRegistry,
                                                                          name: str, eta: float) -> None:
    """A1111's DDIM / PLMS read alphas_cumprod[timestep] (fp16 ones with "Downcast alphas_cumprod") and
    round ``1 - alpha`` in their precision; sdweb's take the same entries from the plan's table."""
    steps = 7
    expected_xs, expected_x0s, expected = _a1111_timestep_sampler(name, steps, eta, downcast=True)
    plan = registry.build(name, "Automatic", SD_CONFIG, downcast_alphas=True)
    assert isinstance(plan, FunctionSamplerPlan)
    sigmas = plan.sigmas(steps)
    generators, noise = seeded_noise()

    xs: list[torch.Tensor] = []
    function = plan.sampler.sampling_function()
    extra = {"eta": eta} if name == "DDIM" else {}
    final = function(DiscreteDenoiser(fake_cfg_unet, plan.model_sigmas()), noise * float(sigmas[0]), sigmas,
                     generator=generators, callback=lambda i, x, x0: xs.append(x.clone()),
                     alphas_cumprod=plan.alphas_cumprod(), **extra)
    for i in range(7):
        _close(xs[i], expected_xs[i], f"latents after step {i}")
    _close(final, expected, "final latents")
    _xs, _x0s, float32_alphas = _a1111_timestep_sampler(name, steps, eta)
    assert float((final - float32_alphas).abs().max()) > 1e-4  # the fp16 alphas change the image


@pytest.mark.parametrize("name", ["DDIM", "UniPC"])
def test_the_generation_loop_hands_timestep_samplers_the_fp16_table(sd1_model: Any, name: str) -> None:
    from sdweb.engine.generate import run_txt2img
    from sdweb.params import JobControl
    from tests.engine.conftest import tiny_params

    registry = SamplerRegistry.from_plugin_results([("builtin", builtin.register_samplers())],
                                                   [("builtin", builtin.register_schedules())])
    runs = []
    for downcast in (False, True):
        params = tiny_params(sampler_name=name, steps=4, use_downcasted_alpha_bar=downcast)
        run = run_txt2img(sd1_model, params, samplers=registry, control=JobControl(), on_step=lambda _: None,
                          output_type="latent")
        runs.append(torch.cat([image.image for image in run.images]))
    assert all(torch.isfinite(latents).all() for latents in runs)
    assert float((runs[0] - runs[1]).abs().max()) > 1e-4


@pytest.mark.parametrize("name", ["DDIM", "PLMS"])
def test_timestep_samplers_start_from_noised_init_latents_in_img2img(registry: SamplerRegistry,
                                                                      name: str) -> None:
    """img2img hands them init + noise * sigma (not pure noise): with a model that knows the image they
    come back to it."""
    plan = registry.build(name, "Automatic", SD_CONFIG)
    assert isinstance(plan, FunctionSamplerPlan)
    sigmas = plan.sigmas(10)[4:]  # the tail, as img2img takes it
    init = torch.randn((1, *SHAPE), generator=torch.Generator().manual_seed(3)) * 0.5
    noise = torch.randn((1, *SHAPE), generator=torch.Generator().manual_seed(4))
    function = plan.sampler.sampling_function()
    start = init + noise * float(sigmas[0])
    out = function(lambda x, sigma: init, start, sigmas, generator=None, callback=None, from_image=True)
    # they stop at timestep 1 (sigma 0.03), as A1111's: what is left is a trace of the noise
    assert float((out - init).abs().max()) < 0.2

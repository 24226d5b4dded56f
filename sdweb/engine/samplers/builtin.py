"""The built-in samplers and schedule types, registered as a plugin like any extension's.

A1111 1.10's samplers by its names and aliases. The ones A1111 runs through k-diffusion (Euler a ...
DPM adaptive, Restart, LCM) and its timestep samplers DDIM, PLMS and UniPC are sdweb's own
implementations of those algorithms (``sdweb.engine.samplers.kdiffusion``), driven as A1111 drives them:
its schedules (its own timesteps for DDIM / PLMS / UniPC, UniPC's continuous-time grid), its "discard
penultimate sigma" rule, its noise. Diffusers' extras DEIS and DDPM are diffusers' schedulers. Sampling
functions and classes are named as ``"module:attribute"`` strings, imported when a job builds its
sampler, so listing samplers does not import torch.

:func:`diffusers_samplers` keeps the diffusers-scheduler versions of the same names ("DPM++ 2M" ->
``DPMSolverMultistepScheduler`` ...), the "diffusers" sampler path a setting can choose.

"Automatic" resolves to each sampler's ``default_schedule``: A1111 1.10's choices (Karras for
DPM++ 2M / SDE / 2S a, DPM2 (a), Restart; Exponential for the multistep SDE samplers; Uniform for the
rest). On the diffusers path schedule types reach the schedulers through diffusers' own flags (or
custom sigmas); a scheduler that takes neither does not offer that schedule type.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from sdweb.plugin_api import SamplerSpec, ScheduleSpec, hookimpl

logger = logging.getLogger(__name__)

FUNCTIONS = "sdweb.engine.samplers.functions"
KDIFFUSION = "sdweb.engine.samplers.kdiffusion"
TIMESTEP_SAMPLERS = "sdweb.engine.samplers.timestep_samplers"


@hookimpl
def register_schedules() -> list[ScheduleSpec]:
    """A1111 1.10's schedule types, in its order.

    Uniform, Karras, Exponential and Beta also reach diffusers' schedulers through their own flags
    (the diffusers sampler path); every type reaches A1111's samplers through
    ``sdweb.engine.samplers.kdiffusion`` (the A1111 path, the default).
    """
    schedules = [
        ScheduleSpec(name="Automatic", label="Automatic", aliases=("automatic",)),
        # No flag: the spacing of the model's scheduler config (timestep_spacing), uniform in time.
        ScheduleSpec(name="Uniform", label="Uniform", aliases=("uniform",)),
        ScheduleSpec(name="Karras", label="Karras", aliases=("karras",), config={"use_karras_sigmas": True}),
        ScheduleSpec(name="Exponential", label="Exponential", aliases=("exponential",),
                     config={"use_exponential_sigmas": True}),
        ScheduleSpec(name="Polyexponential", label="Polyexponential", aliases=("polyexponential",),
                     sigmas_fn=_polyexponential),
        ScheduleSpec(name="SGM Uniform", label="SGM Uniform", aliases=("sgm_uniform", "SGMUniform"),
                     sigmas_fn=_model_schedule("SGM Uniform")),
        ScheduleSpec(name="KL Optimal", label="KL Optimal", aliases=("kl_optimal",), sigmas_fn=_kl_optimal),
        ScheduleSpec(name="Align Your Steps", label="Align Your Steps", aliases=("align_your_steps",),
                     sigmas_fn=_align_your_steps),
        ScheduleSpec(name="Simple", label="Simple", aliases=("simple",), sigmas_fn=_model_schedule("Simple")),
        ScheduleSpec(name="Normal", label="Normal", aliases=("normal",), sigmas_fn=_model_schedule("Normal")),
        ScheduleSpec(name="DDIM", label="DDIM", aliases=("ddim",), sigmas_fn=_model_schedule("DDIM")),
    ]
    if _available("scipy"):
        schedules.append(ScheduleSpec(name="Beta", label="Beta", aliases=("beta",),
                                      config={"use_beta_sigmas": True}))
    else:
        logger.info("schedule type Beta is not offered: it needs the scipy package")
    return schedules


def _polyexponential(n: int, sigma_min: float, sigma_max: float) -> Any:
    from sdweb.engine.samplers import schedules

    return schedules.polyexponential(n, sigma_min, sigma_max)[:-1]


def _kl_optimal(n: int, sigma_min: float, sigma_max: float) -> Any:
    from sdweb.engine.samplers import schedules

    return schedules.kl_optimal(n, sigma_min, sigma_max)[:-1]


def _align_your_steps(n: int, sigma_min: float, sigma_max: float) -> Any:
    from sdweb.engine.samplers import schedules

    return schedules.align_your_steps(n)[:-1]


def _model_schedule(label: str) -> Any:
    """A schedule that needs the model's own sigma table (given as keyword ``model``)."""

    def sigmas_fn(n: int, sigma_min: float, sigma_max: float, *, model: Any) -> Any:
        from sdweb.engine.samplers import schedules

        values = schedules.a1111_sigmas(label, n, model)
        return values[values > 0]

    sigmas_fn.__name__ = f"{label.lower().replace(' ', '_')}_sigmas"
    return sigmas_fn


def _kd(name: str, function: str, aliases: tuple[str, ...], *, schedule: str = "Uniform",
        **options: Any) -> SamplerSpec:
    """An A1111 sampler, sdweb's own implementation: ``kdiffusion.<function>``, or
    ``timestep_samplers.<function>`` for its timestep samplers (``timesteps=True``: DDIM, PLMS, UniPC).
    """
    if schedule != "Uniform":
        options = {"scheduler": schedule.lower(), **options}
    module = TIMESTEP_SAMPLERS if options.get("timesteps") else KDIFFUSION
    return SamplerSpec(name=name, sample_fn=f"{module}:{function}", aliases=aliases,
                       default_schedule=schedule, options=options)


@hookimpl
def register_samplers() -> list[SamplerSpec]:
    """A1111 1.10's samplers, in its order: the k-diffusion ones, then its timestep samplers DDIM, PLMS
    and UniPC, then LCM, all exact (sdweb.engine.samplers.kdiffusion / timestep_samplers); then diffusers'
    extras (DEIS, DDPM).
    """
    samplers = [
        _kd("DPM++ 2M", "sample_dpmpp_2m", ("k_dpmpp_2m",), schedule="Karras"),
        _kd("DPM++ SDE", "sample_dpmpp_sde", ("k_dpmpp_sde",), schedule="Karras", second_order=True,
            brownian_noise=True),
        _kd("DPM++ 2M SDE", "sample_dpmpp_2m_sde", ("k_dpmpp_2m_sde",), schedule="Exponential",
            brownian_noise=True),
        _kd("DPM++ 2M SDE Heun", "sample_dpmpp_2m_sde_heun", ("k_dpmpp_2m_sde_heun",), schedule="Exponential",
            brownian_noise=True, solver_type="heun"),
        _kd("DPM++ 2S a", "sample_dpmpp_2s_ancestral", ("k_dpmpp_2s_a",), schedule="Karras", uses_ensd=True,
            second_order=True),
        _kd("DPM++ 3M SDE", "sample_dpmpp_3m_sde", ("k_dpmpp_3m_sde",), schedule="Exponential",
            discard_next_to_last_sigma=True, brownian_noise=True),
        _kd("Euler a", "sample_euler_ancestral", ("k_euler_a", "k_euler_ancestral"), uses_ensd=True),
        _kd("Euler", "sample_euler", ("k_euler",)),
        _kd("LMS", "sample_lms", ("k_lms",)),
        _kd("Heun", "sample_heun", ("k_heun",), second_order=True),
        _kd("DPM2", "sample_dpm_2", ("k_dpm_2",), schedule="Karras", discard_next_to_last_sigma=True,
            second_order=True),
        _kd("DPM2 a", "sample_dpm_2_ancestral", ("k_dpm_2_a",), schedule="Karras",
            discard_next_to_last_sigma=True, uses_ensd=True, second_order=True),
        _kd("DPM fast", "sample_dpm_fast", ("k_dpm_fast",), uses_ensd=True),
        _kd("DPM adaptive", "sample_dpm_adaptive", ("k_dpm_ad",), uses_ensd=True),
        _kd("Restart", "sample_restart", ("restart",), schedule="Karras", second_order=True),
        _kd("DDIM", "sample_ddim", ("ddim",), timesteps=True, default_eta_is_0=True, uses_ensd=True),
        _kd("PLMS", "sample_plms", ("plms",), timesteps=True),
        _kd("UniPC", "sample_unipc", ("unipc",), timesteps=True, uni_pc=True),
        _kd("LCM", "sample_lcm", ("k_lcm",), denoiser="lcm"),
        _scheduler("DEIS", "DEISMultistepScheduler", ("deis",), {}),
        _scheduler("DDPM", "DDPMScheduler", ("ddpm",), {}),
    ]
    return samplers


def diffusers_samplers() -> dict[str, SamplerSpec]:
    """The diffusers-scheduler versions of A1111's samplers (the "diffusers" sampler path), by name."""
    dpmpp_2m = {"algorithm_type": "dpmsolver++", "solver_order": 2}
    dpmpp_2m_sde = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}
    dpmpp_3m_sde = {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}
    samplers = [
        _scheduler("DPM++ 2M", "DPMSolverMultistepScheduler", ("k_dpmpp_2m",), dpmpp_2m, default="Karras"),
        _scheduler("DPM++ 2M SDE", "DPMSolverMultistepScheduler", ("k_dpmpp_2m_sde",), dpmpp_2m_sde,
                   default="Exponential"),
        SamplerSpec(name="DPM++ 2S a", sample_fn=f"{FUNCTIONS}:sample_dpmpp_2s_ancestral",
                    aliases=("k_dpmpp_2s_a",),
                    default_schedule="Uniform", options={"uses_ensd": True, "second_order": True}),
        _scheduler("DPM++ 3M SDE", "DPMSolverMultistepScheduler", ("k_dpmpp_3m_sde",), dpmpp_3m_sde,
                   default="Exponential"),
        _scheduler("Euler a", "EulerAncestralDiscreteScheduler", ("k_euler_a", "k_euler_ancestral"), {},
                   uses_ensd=True),
        _scheduler("Euler", "EulerDiscreteScheduler", ("k_euler",), {}),
        _scheduler("LMS", "LMSDiscreteScheduler", ("k_lms",), {}),
        _scheduler("Heun", "HeunDiscreteScheduler", ("k_heun",), {}, second_order=True),
        _scheduler("DPM2", "KDPM2DiscreteScheduler", ("k_dpm_2",), {}, second_order=True),
        _scheduler("DPM2 a", "KDPM2AncestralDiscreteScheduler", ("k_dpm_2_a",), {},
                   uses_ensd=True, second_order=True),
        _scheduler("LCM", "LCMScheduler", ("k_lcm",), {}),
        _scheduler("DDIM", "DDIMScheduler", ("ddim",), {}),
        _scheduler("PLMS", "PNDMScheduler", ("plms",), {"skip_prk_steps": True}),
        _scheduler("UniPC", "UniPCMultistepScheduler", ("unipc",), {}),
    ]
    if _available("torchsde"):
        samplers.append(_scheduler("DPM++ SDE", "DPMSolverSDEScheduler", ("k_dpmpp_sde",), {},
                                   default="Karras", second_order=True, brownian_noise=True))
    return {spec.name: spec for spec in samplers}


def _available(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _scheduler(name: str, cls: str, aliases: tuple[str, ...], overrides: dict[str, Any], *,
               default: str = "Uniform", **options: Any) -> SamplerSpec:
    if default != "Uniform":
        options = {"scheduler": default.lower(), **options}
    return SamplerSpec(name=name, scheduler_cls=f"diffusers:{cls}", overrides=overrides, aliases=aliases,
                       default_schedule=default, options=options)

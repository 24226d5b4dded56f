"""The built-in samplers and schedule types, registered as a plugin like any extension's.

A1111's sampler names and aliases mapped onto diffusers' schedulers as diffusers' schedulers overview
maps them ("DPM++ 2M" -> ``DPMSolverMultistepScheduler``, "DPM++ 2M SDE" -> the same with
``algorithm_type="sde-dpmsolver++"``, "Euler a" -> ``EulerAncestralDiscreteScheduler``, ...). Classes are
named as ``"diffusers:Class"`` strings, imported when a job builds its scheduler, so listing samplers
does not import torch. "DPM++ 2S a",
which diffusers lacks, is a sampling function (``sdweb.engine.samplers.functions``) registered through
the same hook, the proof that the function contract carries a real algorithm.

"Automatic" resolves to each sampler's ``default_schedule``: A1111 1.10's choices (Karras for
DPM++ 2M / DPM++ SDE, Exponential for the multistep SDE samplers, Uniform for the rest). Schedule types
reach the schedulers through diffusers' own flags; a scheduler without the flag does not offer that
schedule type (the registry says so with the list it does offer).
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from sdweb.plugin_api import SamplerSpec, ScheduleSpec, hookimpl

logger = logging.getLogger(__name__)

FUNCTIONS = "sdweb.engine.samplers.functions"


@hookimpl
def register_schedules() -> list[ScheduleSpec]:
    """Automatic, Uniform, Karras, Exponential and (with scipy) Beta."""
    schedules = [
        ScheduleSpec(name="Automatic", label="Automatic", aliases=("automatic",)),
        # No flag: the spacing of the model's scheduler config (timestep_spacing), uniform in time.
        ScheduleSpec(name="Uniform", label="Uniform", aliases=("uniform",)),
        ScheduleSpec(name="Karras", label="Karras", aliases=("karras",), config={"use_karras_sigmas": True}),
        ScheduleSpec(name="Exponential", label="Exponential", aliases=("exponential",),
                     config={"use_exponential_sigmas": True}),
    ]
    if _available("scipy"):
        schedules.append(ScheduleSpec(name="Beta", label="Beta", aliases=("beta",),
                                      config={"use_beta_sigmas": True}))
    else:
        logger.info("schedule type Beta is not offered: it needs the scipy package")
    return schedules


@hookimpl
def register_samplers() -> list[SamplerSpec]:
    """A1111's samplers, in A1111's order, where diffusers (or sdweb) has them."""
    dpmpp_2m = {"algorithm_type": "dpmsolver++", "solver_order": 2}
    dpmpp_2m_sde = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}
    dpmpp_3m_sde = {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}
    samplers = [
        _scheduler("DPM++ 2M", "DPMSolverMultistepScheduler", ("k_dpmpp_2m",), dpmpp_2m, default="Karras"),
    ]
    if _available("torchsde"):
        samplers.append(_scheduler("DPM++ SDE", "DPMSolverSDEScheduler", ("k_dpmpp_sde",), {},
                                   default="Karras", second_order=True, brownian_noise=True))
    else:
        logger.info("sampler DPM++ SDE is not offered: diffusers' DPMSolverSDEScheduler needs torchsde")
    samplers += [
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
        _scheduler("DDIM", "DDIMScheduler", ("ddim",), {}),
        _scheduler("PLMS", "PNDMScheduler", ("plms",), {"skip_prk_steps": True}),
        _scheduler("UniPC", "UniPCMultistepScheduler", ("unipc",), {}),
        _scheduler("LCM", "LCMScheduler", ("k_lcm",), {}),
        _scheduler("DEIS", "DEISMultistepScheduler", ("deis",), {}),
        _scheduler("DDPM", "DDPMScheduler", ("ddpm",), {}),
    ]
    return samplers


def _available(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _scheduler(name: str, cls: str, aliases: tuple[str, ...], overrides: dict[str, Any], *,
               default: str = "Uniform", **options: Any) -> SamplerSpec:
    if default != "Uniform":
        options = {"scheduler": default.lower(), **options}
    return SamplerSpec(name=name, scheduler_cls=f"diffusers:{cls}", overrides=overrides, aliases=aliases,
                       default_schedule=default, options=options)

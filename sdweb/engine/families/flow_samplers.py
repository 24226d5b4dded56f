"""A1111 sampler names for flow-matching models (SD 3.x, Flux), mapped to diffusers' flow schedulers.

Flow models predict a velocity along a straight path from noise (sigma 1) to the image (sigma 0); the
schedule is a *shifted* sigma ramp: SD 3.x uses a fixed shift (3.0, from its scheduler config), Flux a
resolution-dependent one (``mu`` grows with the number of image tokens, diffusers' ``calculate_shift``;
``exp(mu)`` is the equivalent fixed shift). The samplers that exist for this parameterisation:

============  =========================================================================================
Euler         ``FlowMatchEulerDiscreteScheduler``, exactly as diffusers' SD3 / Flux pipelines drive it
Heun          ``FlowMatchHeunDiscreteScheduler`` (second order: two model calls per step)
DPM++ 2M      ``DPMSolverMultistepScheduler`` with flow sigmas and ``flow_prediction``
UniPC         ``UniPCMultistepScheduler`` with flow sigmas and ``flow_prediction``
============  =========================================================================================

Every other A1111 sampler is refused with the reason (ancestral and SDE samplers add fresh noise with the
variance-exploding formulas of epsilon models; DDIM/PLMS/LMS/DPM2/LCM/DEIS/DDPM have no flow form in
diffusers). Schedule types: "Automatic", "Uniform" and Forge's "Simple" all mean the model's shifted
ramp; "Karras", "Exponential" and "Beta" respacings are offered with Euler (diffusers' flags).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: Canonical A1111 name -> (diffusers class, extra config).
FLOW_SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "Euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "Heun": ("FlowMatchHeunDiscreteScheduler", {}),
    "DPM++ 2M": (
        "DPMSolverMultistepScheduler",
        {
            "algorithm_type": "dpmsolver++",
            "solver_order": 2,
            "use_flow_sigmas": True,
            "prediction_type": "flow_prediction",
        },
    ),
    "UniPC": ("UniPCMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}),
}
#: Aliases A1111's API accepts for these.
_ALIASES = {"k_euler": "Euler", "k_heun": "Heun", "k_dpmpp_2m": "DPM++ 2M", "unipc": "UniPC"}
#: Schedule types that mean "the model's own shifted ramp".
DEFAULT_SCHEDULES = ("Automatic", "Uniform", "Simple")
#: Respacings diffusers' flow Euler scheduler offers through config flags.
EULER_RESPACINGS = {
    "Karras": "use_karras_sigmas",
    "Exponential": "use_exponential_sigmas",
    "Beta": "use_beta_sigmas",
}


class FlowSamplerError(ValueError):
    """A sampler or schedule type that flow-matching models cannot use; the message lists what they can."""


def flow_sampler_name(name: str) -> str:
    """The canonical flow sampler for ``name`` (any case, A1111 aliases), or :class:`FlowSamplerError`."""
    wanted = name.strip()
    for canonical in FLOW_SAMPLERS:
        if canonical.lower() == wanted.lower():
            return canonical
    alias = _ALIASES.get(wanted.lower())
    if alias is not None:
        return alias
    lowered = wanted.lower()
    if " a" in f" {lowered} " or lowered.endswith(" a") or "ancestral" in lowered or "sde" in lowered:
        why = "ancestral and SDE samplers add fresh noise with formulas made for epsilon/v-prediction models"
    else:
        why = "diffusers has no flow-matching form of it"
    raise FlowSamplerError(
        f"sampler {name!r} cannot run flow-matching models (SD 3.x, Flux): {why}; "
        f"use one of {', '.join(FLOW_SAMPLERS)}"
    )


def check_flow_schedule(sampler: str, schedule: str) -> str:
    """The schedule type name to use (canonical), or :class:`FlowSamplerError` with the supported ones."""
    wanted = schedule.strip()
    for name in (*DEFAULT_SCHEDULES, *EULER_RESPACINGS):
        if name.lower() == wanted.lower():
            if name in EULER_RESPACINGS and sampler != "Euler":
                break
            return name
    allowed = [*DEFAULT_SCHEDULES, *(EULER_RESPACINGS if sampler == "Euler" else ())]
    raise FlowSamplerError(
        f"schedule type {schedule!r} does not fit sampler {sampler!r} on a flow-matching model; "
        f"use one of {', '.join(allowed)}"
    )


def calculate_mu(image_tokens: int, config: Mapping[str, Any]) -> float:
    """Flux's resolution-dependent shift exponent (diffusers' ``calculate_shift``)."""
    base_len = float(config.get("base_image_seq_len", 256))
    max_len = float(config.get("max_image_seq_len", 4096))
    base_shift = float(config.get("base_shift", 0.5))
    max_shift = float(config.get("max_shift", 1.15))
    slope = (max_shift - base_shift) / (max_len - base_len)
    return image_tokens * slope + base_shift - slope * base_len


@dataclass
class FlowPlan:
    """A fresh flow scheduler for one batch and how to set its steps."""

    sampler: str
    schedule: str
    scheduler: Any
    #: Flux: the shift exponent for this image size; SD3: None (fixed shift in the config).
    mu: float | None

    @property
    def shift(self) -> float:
        """The fixed shift equivalent to this plan's schedule."""
        if self.mu is not None:
            return math.exp(self.mu)
        return float(self.scheduler.config.get("shift", self.scheduler.config.get("flow_shift", 1.0)))

    def set_timesteps(self, steps: int, device: torch.device | str) -> None:
        scheduler = self.scheduler
        if self.sampler == "Euler" and self.mu is not None:
            # What FluxPipeline does: a linear ramp 1 -> 1/steps, shifted by mu inside the scheduler.
            sigmas = np.linspace(1.0, 1.0 / steps, steps)
            scheduler.set_timesteps(sigmas=sigmas, mu=self.mu, device=device)
        else:
            scheduler.set_timesteps(steps, device=device)

    def sigma_at(self, timestep: torch.Tensor | float) -> float:
        """The noise level of ``timestep`` (flow schedulers use ``t = sigma * num_train_timesteps``)."""
        return float(timestep) / float(self.scheduler.config.get("num_train_timesteps", 1000))


def build_flow_plan(
    sampler_name: str, schedule_name: str, base_config: Mapping[str, Any], *, image_tokens: int
) -> FlowPlan:
    """A plan for ``sampler_name`` / ``schedule_name`` on a model whose scheduler config is ``base_config``.

    ``image_tokens``: the number of 2x2 latent patches of the image (Flux's shift depends on it).
    """
    from diffusers import schedulers as diffusers_schedulers

    sampler = flow_sampler_name(sampler_name)
    schedule = check_flow_schedule(sampler, schedule_name)
    dynamic = bool(base_config.get("use_dynamic_shifting"))
    mu = calculate_mu(image_tokens, base_config) if dynamic else None
    shift = math.exp(mu) if mu is not None else float(base_config.get("shift", 1.0))
    class_name, extra = FLOW_SAMPLERS[sampler]
    cls = getattr(diffusers_schedulers, class_name)
    if sampler == "Euler":
        config = {k: v for k, v in base_config.items() if not k.startswith("_")}
        flag = EULER_RESPACINGS.get(schedule)
        if flag:
            config[flag] = True
        scheduler = cls.from_config(config)
    elif sampler == "Heun":
        scheduler = cls(num_train_timesteps=int(base_config.get("num_train_timesteps", 1000)), shift=shift)
    else:
        scheduler = cls(
            num_train_timesteps=int(base_config.get("num_train_timesteps", 1000)), flow_shift=shift, **extra
        )
    logger.debug("flow sampler %s / %s -> %s (shift %.3f)", sampler, schedule, class_name, shift)
    return FlowPlan(sampler=sampler, schedule=schedule, scheduler=scheduler, mu=mu)

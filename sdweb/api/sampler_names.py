"""Sampler and schedule-type names as clients send them, resolved as A1111 resolves them.

A1111 v1.10 (``sd_samplers.get_sampler_and_scheduler``) never refuses a name: an old name carrying its
schedule ("DPM++ 2M Karras") is split, an unknown sampler becomes the first one ("DPM++ 2M"), an
unknown schedule type "Automatic". Clients that also drive ComfyUI (SillyTavern keeps one setting for
both) send ComfyUI's spellings (``euler_ancestral``, ``dpmpp_2m``, ``sgm_uniform``, ``normal``): they
are read as the A1111 names they stand for. :func:`resolve_sampler` does all that against the sampler
registry and appends a sentence to ``notes`` for each name it had to replace.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

#: A1111's first sampler: what it uses for a name it does not know.
DEFAULT_SAMPLER = "DPM++ 2M"
AUTOMATIC = "Automatic"

#: ComfyUI's sampler names (KSampler.SAMPLERS) -> A1111's.
COMFY_SAMPLERS: Mapping[str, str] = {
    "euler": "Euler", "euler_ancestral": "Euler a", "euler_a": "Euler a", "heun": "Heun", "dpm_2": "DPM2",
    "dpm_2_ancestral": "DPM2 a", "lms": "LMS", "dpm_fast": "DPM fast", "dpm_adaptive": "DPM adaptive",
    "dpmpp_2s_ancestral": "DPM++ 2S a", "dpmpp_sde": "DPM++ SDE", "dpmpp_sde_gpu": "DPM++ SDE",
    "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_sde": "DPM++ 2M SDE", "dpmpp_2m_sde_gpu": "DPM++ 2M SDE",
    "dpmpp_3m_sde": "DPM++ 3M SDE", "dpmpp_3m_sde_gpu": "DPM++ 3M SDE", "ddim": "DDIM", "ddpm": "DDPM",
    "uni_pc": "UniPC", "uni_pc_bh2": "UniPC", "lcm": "LCM", "deis": "DEIS", "restart": "Restart",
    "plms": "PLMS", "ipndm": "iPNDM",
}
#: ComfyUI's schedule names (KSampler.SCHEDULERS) -> A1111's schedule types.
COMFY_SCHEDULES: Mapping[str, str] = {
    "normal": "Normal", "karras": "Karras", "exponential": "Exponential", "sgm_uniform": "SGM Uniform",
    "simple": "Simple", "ddim_uniform": "DDIM", "beta": "Beta", "kl_optimal": "KL Optimal",
    "align_your_steps": "Align Your Steps", "polyexponential": "Polyexponential", "uniform": "Uniform",
}


def _find(lookup: Any, name: str) -> str | None:
    try:
        return str(lookup(name).name)
    except ValueError:
        return None


def find_sampler(registry: Any, name: str) -> str | None:
    """The registry's name for ``name`` (its own names and aliases, then ComfyUI's spelling); or None."""
    return _find(registry.get, name) or (
        _find(registry.get, COMFY_SAMPLERS[name.strip().lower()])
        if name.strip().lower() in COMFY_SAMPLERS else None)


def find_schedule(registry: Any, name: str) -> str | None:
    """The registry's schedule type for ``name`` (names, aliases, ComfyUI's spelling, ``_`` as space)."""
    key = name.strip().lower()
    candidates = [name, COMFY_SCHEDULES.get(key, ""), name.replace("_", " ")]
    for candidate in candidates:
        if candidate:
            found = _find(registry.get_schedule, candidate)
            if found:
                return found
    return None


def resolve_sampler(registry: Any, sampler: str, scheduler: str, notes: list[str], *,
                    field: str = "sampler_name", schedule_field: str = "scheduler") -> tuple[str, str]:
    """Canonical ``(sampler, schedule type)``; unknown names fall back as A1111's do, with a note."""
    from sdweb.images.infotext import split_sampler_name

    found = find_sampler(registry, sampler)
    if found is None:
        # Before A1111 1.9 the schedule type was part of the name ("DPM++ 2M Karras").
        head, schedule = split_sampler_name(sampler, scheduler)
        if head != sampler:
            found = find_sampler(registry, head)
            if found is not None:
                scheduler = schedule
    if found is None:
        names = registry.names()
        found = DEFAULT_SAMPLER if DEFAULT_SAMPLER in names else names[0]
        notes.append(f"{field}: sampler {sampler!r} is not available here; used {found!r} (as A1111 does "
                     f"with a name it does not know). Available: {', '.join(names)}")
    schedule_name = find_schedule(registry, scheduler or AUTOMATIC)
    if schedule_name is None:
        schedule_name = AUTOMATIC
        notes.append(f"{schedule_field}: schedule type {scheduler!r} is not available here; used "
                     f"{AUTOMATIC!r} (as A1111 does). Available: {', '.join(registry.schedule_names())}")
    compatible = registry.compatible_schedules(found)
    if schedule_name not in compatible:
        notes.append(f"{schedule_field}: sampler {found!r} cannot use schedule type {schedule_name!r} here; "
                     f"used {AUTOMATIC!r}. It supports: {', '.join(compatible)}")
        schedule_name = AUTOMATIC
    return found, schedule_name

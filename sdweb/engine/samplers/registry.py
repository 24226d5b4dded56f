"""The sampler registry: every sampler and schedule type the plugins registered, by A1111 name.

This module owns the lookup from what a user typed ("Euler a", "k_dpmpp_2m", "Karras") to a ready
object for one job: a fresh diffusers scheduler (:class:`SchedulerPlan`) or a sampling function with
its sigmas (:class:`FunctionSamplerPlan`). It is built once from the results of the pluggy hooks
``register_samplers`` / ``register_schedules`` (the built-in samplers are a plugin like any other,
``sdweb.engine.samplers.builtin``) and passed to whoever needs it; nothing here is global.

A schedule type reaches a diffusers scheduler through config flags (``use_karras_sigmas``...) that the
scheduler class must accept, or through ``set_timesteps(sigmas=...)`` with the schedule's own
``sigmas_fn``. A combination that cannot work is an error naming the schedules that can.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from sdweb.engine.samplers import kdiffusion, schedules, timestep_samplers
from sdweb.engine.samplers.functions import (
    function_schedule_problem,
    schedule_sigmas,
    scheduler_from_config,
    scheduler_options,
)
from sdweb.plugin_api import SamplerSpec, ScheduleSpec

logger = logging.getLogger(__name__)

#: The schedule type that means "the sampler's own default" (A1111's "Automatic").
AUTOMATIC = "Automatic"
#: Sampler paths (the ``sampler_path`` setting): A1111's k-diffusion samplers exactly, or diffusers'.
A1111_PATH = "A1111"
DIFFUSERS_PATH = "diffusers"
SAMPLER_PATHS = (A1111_PATH, DIFFUSERS_PATH)

#: Config flags diffusers schedulers use to pick a sigma spacing. All of them are switched off before
#: the chosen schedule's flags are applied, so a model config that ships with one set cannot leak into
#: a different schedule type.
SIGMA_SPACING_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")

# /sdapi/v1/schedulers facts A1111 reports for its built-in schedule types: (default_rho, need_inner_model).
# ScheduleSpec has no fields for them; a plugin schedule reports (-1, False).
_A1111_SCHEDULE_FACTS: dict[str, tuple[float, bool]] = {
    "Automatic": (-1.0, False),
    "Uniform": (-1.0, True),
    "Karras": (7.0, False),
    "Exponential": (-1.0, False),
    "Polyexponential": (1.0, False),
    "SGM Uniform": (-1.0, True),
    "KL Optimal": (-1.0, False),
    "Align Your Steps": (-1.0, False),
    "Simple": (-1.0, True),
    "Normal": (-1.0, True),
    "DDIM": (-1.0, True),
    "Beta": (-1.0, True),
}


class UnknownSamplerError(ValueError):
    """A sampler name (or alias) that no plugin registered."""


class UnknownScheduleError(ValueError):
    """A schedule type name (or alias) that no plugin registered."""


class IncompatibleScheduleError(ValueError):
    """A schedule type the chosen sampler cannot use."""


class DuplicateSamplerError(ValueError):
    """Two plugins registered the same sampler or schedule name (or alias)."""


@dataclass(frozen=True)
class SchedulerPlan:
    """A diffusers scheduler for one job, fresh from ``from_config``: the caller may mutate it."""

    sampler: SamplerSpec
    schedule: ScheduleSpec
    scheduler: Any
    #: Set when the schedule reaches the scheduler through ``set_timesteps(sigmas=...)``.
    custom_sigmas: bool = False

    def set_timesteps(self, steps: int, device: torch.device | str) -> None:
        """Set the scheduler's timesteps for ``steps`` sampling steps on ``device``."""
        if self.custom_sigmas:
            sigmas = _custom_sigmas(self.schedule, steps, self.scheduler)
            self.scheduler.set_timesteps(sigmas=sigmas, device=device)
        else:
            self.scheduler.set_timesteps(steps, device=device)


@dataclass(frozen=True)
class FunctionSamplerPlan:
    """A k-diffusion style sampling function with what it needs to compute its sigmas."""

    sampler: SamplerSpec
    schedule: ScheduleSpec
    #: The model's scheduler config (training betas, prediction type), as given to ``build``.
    base_config: Mapping[str, Any]
    #: One of A1111's k-diffusion samplers (``sdweb.engine.samplers.kdiffusion``): A1111's model wrapper
    #: and, for A1111's schedule types, A1111's sigmas.
    a1111: bool = False
    #: A1111's "Downcast alphas_cumprod" (``use_downcasted_alpha_bar``): the alphas rounded to fp16.
    #: Only A1111's samplers (``a1111``) honour it.
    downcast_alphas: bool = False
    #: A1111's schedule settings (rho, sigma range, Beta's shape, "Discard penultimate sigma"); A1111's
    #: samplers on A1111's schedule types only.
    tuning: schedules.ScheduleTuning = schedules.DEFAULT_TUNING
    #: A1111's "Noise schedule for sampling: Zero Terminal SNR" (``sd_noise_schedule``): the alphas
    #: rescaled so the last is almost 0. Only A1111's samplers (``a1111``) honour it.
    zero_terminal_snr: bool = False

    def alphas_cumprod(self) -> torch.Tensor:
        """The model's training ``alphas_cumprod`` as A1111's model carries them (CPU): float32, or fp16
        with ``downcast_alphas`` (then the sigmas, and UniPC's log alphas, are computed in fp16 as A1111's);
        then, with ``zero_terminal_snr``, rescaled to zero terminal SNR (A1111's order: downcast first).
        """
        alphas_cumprod = schedules.ldm_alphas_cumprod(self.base_config)
        if self.downcast_alphas and self.a1111:
            alphas_cumprod = schedules.downcast_alphas_cumprod(alphas_cumprod)
        if self.zero_terminal_snr and self.a1111:
            alphas_cumprod = schedules.zero_terminal_snr_alphas_cumprod(alphas_cumprod)
        return alphas_cumprod

    def model_sigmas(self) -> schedules.DiscreteSigmas:
        """The model's noise levels as A1111's wrapper for this sampler sees them (LCM: its 50 steps)."""
        alphas_cumprod = self.alphas_cumprod()
        if self.sampler.options.get("denoiser") == "lcm":
            return schedules.LCMSigmas(alphas_cumprod)
        return schedules.DiscreteSigmas(alphas_cumprod)

    def sigmas(self, steps: int, *, sdxl: bool = False) -> torch.Tensor:
        """Decreasing float32 sigmas on the CPU, usually ``steps + 1`` ending in 0.

        For A1111's samplers and schedule types, exactly A1111's (a few of its schedules give another
        count: DDIM's, or KL Optimal ending at the smallest sigma).
        """
        if self.a1111 and self.sampler.options.get("timesteps"):
            # A1111's timestep samplers (DDIM, PLMS, UniPC) use their own timesteps whatever the schedule
            # type.
            return timestep_samplers.timestep_sigmas(steps, self.model_sigmas())
        if self.a1111 and self.schedule.name in schedules.SCHEDULES:
            discard = bool(self.sampler.options.get("discard_next_to_last_sigma", False))
            return schedules.a1111_sigmas(self.schedule.name, steps, self.model_sigmas(),
                                          discard_penultimate=discard, sdxl=sdxl, tuning=self.tuning)
        return schedule_sigmas(self.schedule, steps, self.base_config)


SamplerPlan = SchedulerPlan | FunctionSamplerPlan


@dataclass(frozen=True)
class _Registered:
    spec: Any
    plugin: str


class SamplerRegistry:
    """Samplers and schedule types by name and alias. Build it with :meth:`from_plugin_results`."""

    def __init__(self) -> None:
        self._samplers: dict[str, _Registered] = {}
        self._sampler_keys: dict[str, str] = {}  # lower-cased name or alias -> name
        self._schedules: dict[str, _Registered] = {}
        self._schedule_keys: dict[str, str] = {}

    # -- building --------------------------------------------------------------------------
    @classmethod
    def from_plugin_results(
        cls,
        samplers: Iterable[tuple[str, list[SamplerSpec] | None]],
        schedules: Iterable[tuple[str, list[ScheduleSpec] | None]],
    ) -> SamplerRegistry:
        """Build from ``(plugin name, specs)`` pairs as the plugin host collects them.

        Raises:
            DuplicateSamplerError: a name or alias is registered twice (the message names both plugins).
            TypeError: a plugin returned something that is not a spec.
        """
        registry = cls()
        for plugin, specs in schedules:
            for spec in specs or ():
                registry.add_schedule(spec, plugin=plugin)
        if AUTOMATIC not in registry._schedules:
            registry.add_schedule(ScheduleSpec(name=AUTOMATIC, label=AUTOMATIC, aliases=("automatic",)),
                                  plugin="sdweb")
        for plugin, specs in samplers:
            for spec in specs or ():
                registry.add_sampler(spec, plugin=plugin)
        return registry

    def add_sampler(self, spec: SamplerSpec, *, plugin: str) -> None:
        if not isinstance(spec, SamplerSpec):
            raise TypeError(f"plugin {plugin!r}: register_samplers must return SamplerSpec items, "
                            f"got {type(spec).__name__}")
        _claim(self._sampler_keys, self._samplers, spec.name, spec.aliases, plugin, "sampler")
        self._samplers[spec.name] = _Registered(spec, plugin)

    def add_schedule(self, spec: ScheduleSpec, *, plugin: str) -> None:
        if not isinstance(spec, ScheduleSpec):
            raise TypeError(f"plugin {plugin!r}: register_schedules must return ScheduleSpec items, "
                            f"got {type(spec).__name__}")
        _claim(self._schedule_keys, self._schedules, spec.name, spec.aliases, plugin, "schedule type")
        self._schedules[spec.name] = _Registered(spec, plugin)

    # -- lookup ----------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Sampler names in registration order (built-ins first)."""
        return list(self._samplers)

    def schedule_names(self) -> list[str]:
        """Schedule type names in registration order ("Automatic" first)."""
        return list(self._schedules)

    def get(self, name_or_alias: str) -> SamplerSpec:
        """The sampler called ``name_or_alias`` (case-insensitive), or :class:`UnknownSamplerError`."""
        name = self._sampler_keys.get(name_or_alias.strip().lower())
        if name is None:
            raise UnknownSamplerError(
                f"sampler {name_or_alias!r} not found; known: {', '.join(self.names())}")
        return self._samplers[name].spec

    def get_schedule(self, name_or_alias: str) -> ScheduleSpec:
        """The schedule type called ``name_or_alias`` (case-insensitive), or :class:`UnknownScheduleError`."""
        name = self._schedule_keys.get(name_or_alias.strip().lower())
        if name is None:
            raise UnknownScheduleError(
                f"schedule type {name_or_alias!r} not found; known: {', '.join(self.schedule_names())}")
        return self._schedules[name].spec

    def plugin_of(self, sampler_name: str) -> str:
        """Which plugin registered a sampler (for error messages and the extensions tab)."""
        return self._samplers[self.get(sampler_name).name].plugin

    def resolve_schedule(self, sampler_name: str, schedule_name: str) -> ScheduleSpec:
        """The concrete schedule type ``schedule_name`` means for this sampler ("Automatic" resolved)."""
        sampler = self.get(sampler_name)
        schedule = self.get_schedule(schedule_name)
        if schedule.name == AUTOMATIC:
            schedule = self.get_schedule(sampler.default_schedule)
        return schedule

    def compatible_schedules(self, sampler_name: str) -> list[str]:
        """The schedule types this sampler can run with ("Automatic" included)."""
        sampler = self.get(sampler_name)
        names = [AUTOMATIC]
        for name, registered in self._schedules.items():
            if name != AUTOMATIC and _incompatibility(sampler, registered.spec) is None:
                names.append(name)
        return names

    # -- building a plan for one job -------------------------------------------------------
    def build(self, name: str, schedule: str, base_scheduler_config: Mapping[str, Any], *,
              path: str = A1111_PATH, downcast_alphas: bool = False,
              tuning: schedules.ScheduleTuning | None = None,
              zero_terminal_snr: bool = False) -> SamplerPlan:
        """A fresh plan for one job: sampler ``name`` with schedule type ``schedule``.

        ``base_scheduler_config`` is the loaded model's scheduler config (``pipe.scheduler.config``):
        it carries the training betas and prediction type every sampler must keep. The shared
        pipeline's scheduler is never touched.

        ``path``: "A1111" (A1111's k-diffusion samplers, exact) or "diffusers" (the same names run by
        diffusers' schedulers where diffusers has one; other samplers are the same on both paths).

        ``downcast_alphas``: A1111's "Downcast alphas_cumprod" (``use_downcasted_alpha_bar``; A1111 before
        1.7 always did it): A1111's samplers compute their sigmas, timestep quantisation and alphas from
        the training ``alphas_cumprod`` rounded to fp16. Diffusers' schedulers (the "diffusers" path)
        and plugin samplers ignore it: they keep their own float32 tables.

        ``tuning``: A1111's schedule settings (:class:`~sdweb.engine.samplers.schedules.ScheduleTuning`),
        for A1111's samplers on A1111's schedule types.
        ``zero_terminal_snr``: A1111's "Noise schedule for sampling: Zero Terminal SNR"
        (``sd_noise_schedule``): A1111's samplers rescale the training ``alphas_cumprod`` to zero
        terminal SNR (after the downcast, if any); diffusers' schedulers that have
        ``rescale_betas_zero_snr`` turn it on (diffusers' own rescaling), the others and plugin samplers
        ignore it.

        Raises:
            UnknownSamplerError, UnknownScheduleError: a name nobody registered.
            IncompatibleScheduleError: the sampler cannot use that schedule type.
        """
        if path not in SAMPLER_PATHS:
            raise ValueError(f"sampler path must be one of {', '.join(SAMPLER_PATHS)}, got {path!r}")
        sampler = self.get(name)
        if path == DIFFUSERS_PATH and _is_a1111(sampler):
            from sdweb.engine.samplers.builtin import diffusers_samplers

            sampler = diffusers_samplers().get(sampler.name, sampler)
        chosen = self.get_schedule(schedule)
        if chosen.name == AUTOMATIC:
            chosen = self.get_schedule(sampler.default_schedule)
        problem = _incompatibility(sampler, chosen)
        if problem is not None:
            supported = [AUTOMATIC] + [other for other in self.schedule_names()
                                       if other != AUTOMATIC
                                       and _incompatibility(sampler, self.get_schedule(other)) is None]
            raise IncompatibleScheduleError(
                f"sampler {sampler.name!r} cannot use schedule type {chosen.name!r} ({problem}); "
                f"it supports: {', '.join(supported)}")
        if sampler.sample_fn is not None:
            a1111 = _is_a1111(sampler)
            return FunctionSamplerPlan(sampler=sampler, schedule=chosen, base_config=base_scheduler_config,
                                       a1111=a1111, downcast_alphas=bool(downcast_alphas) and a1111,
                                       tuning=tuning or schedules.DEFAULT_TUNING,
                                       zero_terminal_snr=bool(zero_terminal_snr) and a1111)
        cls = sampler.scheduler_class()
        assert cls is not None  # SamplerSpec guarantees one of the two
        accepted = _init_parameters(cls)
        options = {flag: False for flag in SIGMA_SPACING_FLAGS if flag in accepted}
        options.update(dict(sampler.overrides))
        if zero_terminal_snr and "rescale_betas_zero_snr" in accepted:
            options["rescale_betas_zero_snr"] = True
        custom = _route(cls, chosen) == "sigmas"
        if not custom:
            options.update(chosen.config)
        try:
            scheduler = scheduler_from_config(cls, base_scheduler_config, **options)
        except ValueError as exc:
            plugin = self.plugin_of(sampler.name)
            raise ValueError(f"sampler {sampler.name!r} (plugin {plugin!r}): {exc}") from exc
        logger.debug("sampler %s / %s -> %s%s", sampler.name, chosen.name, cls.__name__,
                     " (custom sigmas)" if custom else "")
        return SchedulerPlan(sampler=sampler, schedule=chosen, scheduler=scheduler, custom_sigmas=custom)

    # -- listings for the API and UI -------------------------------------------------------
    def describe(self) -> list[dict[str, Any]]:
        """``/sdapi/v1/samplers`` items: ``{"name", "aliases", "options"}``."""
        return [
            {"name": spec.name, "aliases": list(spec.aliases),
             "options": {key: str(value) for key, value in dict(spec.options).items()}}
            for spec in (registered.spec for registered in self._samplers.values())
        ]

    def describe_schedules(self) -> list[dict[str, Any]]:
        """``/sdapi/v1/schedulers`` items: name, label, aliases, default_rho, need_inner_model.

        ``name`` is A1111's lower-case identifier ("karras"), ``label`` what the UI shows ("Karras").
        """
        items = []
        for spec in (registered.spec for registered in self._schedules.values()):
            rho, inner = _A1111_SCHEDULE_FACTS.get(spec.name, (-1.0, False))
            identifier = spec.name.lower().replace(" ", "_")
            aliases = [alias for alias in spec.aliases if alias != identifier]
            items.append({"name": identifier, "label": spec.label or spec.name,
                          "aliases": aliases or None, "default_rho": rho, "need_inner_model": inner})
        return items


def _is_a1111(sampler: SamplerSpec) -> bool:
    """One of A1111's samplers as sdweb implements them (``sdweb.engine.samplers.kdiffusion``, or
    ``timestep_samplers`` for its DDIM, PLMS and UniPC).
    """
    target = sampler.sample_fn
    return isinstance(target, str) and target.startswith((f"{kdiffusion.__name__}:",
                                                          f"{timestep_samplers.__name__}:"))


def _claim(keys: dict[str, str], registered: Mapping[str, _Registered], name: str,
           aliases: Iterable[str], plugin: str, kind: str) -> None:
    """Reserve a name and its aliases (case-insensitive) or raise naming both plugins."""
    wanted = [name, *aliases]
    for key in wanted:
        owner_name = keys.get(key.strip().lower())
        if owner_name is not None:
            owner = registered[owner_name].plugin
            raise DuplicateSamplerError(
                f"{kind} {key!r} is registered twice: by plugin {owner!r} ({owner_name!r}) and by plugin "
                f"{plugin!r} ({name!r}); disable one of the two extensions")
    for key in wanted:
        keys[key.strip().lower()] = name


def _init_parameters(cls: type) -> frozenset[str]:
    return scheduler_options(cls)


def _route(cls: type, schedule: ScheduleSpec) -> str | None:
    """How ``schedule`` reaches scheduler ``cls``: "config" flags, custom "sigmas", or None (it cannot).

    A schedule with its own ``sigmas_fn`` and no flags means those sigmas, not the default spacing.
    """
    accepted = _init_parameters(cls)
    flags_apply = all(key in accepted for key in schedule.config)
    if flags_apply and (schedule.config or schedule.sigmas_fn is None):
        return "config"
    if schedule.sigmas_fn is not None and _accepts_custom_sigmas(cls):
        return "sigmas"
    return None


def _accepts_custom_sigmas(cls: type) -> bool:
    set_timesteps = getattr(cls, "set_timesteps", None)
    return set_timesteps is not None and "sigmas" in inspect.signature(set_timesteps).parameters


def _incompatibility(sampler: SamplerSpec, schedule: ScheduleSpec) -> str | None:
    """Why ``sampler`` cannot use ``schedule``, or None when it can."""
    if sampler.supported_schedules is not None and schedule.name not in sampler.supported_schedules:
        return "the sampler lists the schedule types it supports"
    if sampler.sample_fn is not None:
        return function_schedule_problem(schedule)
    cls = sampler.scheduler_class()
    assert cls is not None
    if _route(cls, schedule) is not None:
        return None
    missing = [key for key in schedule.config if key not in _init_parameters(cls)]
    if missing:
        return f"{cls.__name__} has no {', '.join(missing)} option"
    return f"{cls.__name__} does not take custom sigmas"


def _custom_sigmas(schedule: ScheduleSpec, steps: int, scheduler: Any) -> list[float]:
    """Sigmas from a plugin's ``sigmas_fn`` for a scheduler that takes ``set_timesteps(sigmas=...)``."""
    # diffusers takes the full list, final 0 included, and derives the timesteps from it
    return [float(value) for value in schedule_sigmas(schedule, steps, scheduler.config)]

"""The one public module for extension authors. Everything else in ``sdweb`` is private.

An extension imports only from here::

    from diffusers import LCMScheduler
    from sdweb.plugin_api import SamplerSpec, hookimpl

    @hookimpl
    def register_samplers():
        return [SamplerSpec(name="LCM", scheduler_cls=LCMScheduler, aliases=("k_lcm",))]

``API_VERSION`` follows semantic versioning: an extension's manifest states the major version it was
written for (``plugin_api = "1"``) and is refused with a clear message when that does not match.
The hook specifications, with their documentation, are in ``sdweb/extensions/hookspecs.py``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pluggy

from sdweb.config import OptionSpec
from sdweb.params import GenerationParams, GenerationResult, Img2ImgParams, JobControl, StepProgress
from sdweb.scripting import (
    PreparedScript,
    ScriptArg,
    ScriptCall,
    ScriptContext,
    ScriptEnvironment,
    ScriptError,
    ScriptSpec,
    XyzAxis,
)

API_VERSION = "1.0"
PROJECT_NAME = "sdweb"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: A sampling function in the k-diffusion style:
#: ``sample(denoise, x, sigmas, *, generator, callback) -> x``, where ``denoise(x, sigma) -> x0`` is
#: the CFG-combined denoiser, ``sigmas`` a decreasing 1-D tensor ending in 0, ``generator`` a list
#: with one ``torch.Generator`` per image of the batch (diffusers' convention; draw image i's noise
#: from ``generator[i]`` so each image is reproducible alone), or None, and ``callback(i, x, x0)`` is
#: called after each step (it raises to stop early).
SamplingFunction = Callable[..., Any]


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler, by its A1111 name: either a diffusers scheduler class or a sampling function.

    Args:
        name: what users see and pass as ``sampler_name`` ("Euler a").
        scheduler_cls: a diffusers ``SchedulerMixin`` subclass, built from the model's scheduler config
            updated with ``overrides``. Exactly one of ``scheduler_cls`` and ``sample_fn`` is given.
            Either may also be a ``"module:attribute"`` string, imported on first use: that keeps
            listing samplers (and serving the page) free of torch/diffusers imports.
        sample_fn: a :data:`SamplingFunction`, run on the sigmas of the chosen schedule type.
        overrides: scheduler config overrides (``{"algorithm_type": "dpmsolver++"}``).
        aliases: other names that select it (A1111's ``k_euler_a``).
        default_schedule: the schedule type "Automatic" means for this sampler.
        supported_schedules: schedule types it accepts; None means all that the registry knows.
        options: shown by ``/sdapi/v1/samplers``.
    """

    name: str
    scheduler_cls: type | str | None = None
    sample_fn: SamplingFunction | str | None = None
    overrides: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    aliases: tuple[str, ...] = ()
    default_schedule: str = "Uniform"
    supported_schedules: tuple[str, ...] | None = None
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if (self.scheduler_cls is None) == (self.sample_fn is None):
            raise ValueError(f"sampler {self.name!r}: give exactly one of scheduler_cls and sample_fn")
        if not self.name.strip():
            raise ValueError("a sampler needs a name")

    def scheduler_class(self) -> type | None:
        """``scheduler_cls``, imported now if it was given as ``"module:Class"``."""
        return _resolve(self.scheduler_cls)  # type: ignore[return-value]

    def sampling_function(self) -> SamplingFunction | None:
        """``sample_fn``, imported now if it was given as ``"module:function"``."""
        return _resolve(self.sample_fn)  # type: ignore[return-value]


def _resolve(target: object) -> object:
    if not isinstance(target, str):
        return target
    module_name, _, attribute = target.partition(":")
    if not attribute:
        raise ValueError(f"expected 'module:attribute', got {target!r}")
    return getattr(importlib.import_module(module_name), attribute)


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule type ("Karras"): maps to diffusers scheduler config flags or a sigma function.

    Args:
        name: what users see ("Karras").
        config: scheduler config flags that select it in diffusers (``{"use_karras_sigmas": True}``).
        sigmas_fn: ``sigmas_fn(n, sigma_min, sigma_max) -> 1-D tensor`` (n values, decreasing, no
            trailing zero) used with function samplers, and with scheduler samplers that accept
            custom sigmas.
        aliases: other names ("karras").
    """

    name: str
    config: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    sigmas_fn: Callable[..., Any] | None = None
    aliases: tuple[str, ...] = ()
    label: str = ""


@dataclass(frozen=True)
class ControlPreprocessorSpec:
    """A ControlNet preprocessor an extension adds (``register_controlnet_preprocessors``).

    Args:
        name: what units and ``/controlnet/module_list`` call it ("my_edges").
        run: ``run(image, resolution, threshold_a, threshold_b) -> image`` (RGB PIL images in and out).
        tags: the control types it serves ("Canny", "Depth" ...), for ``/controlnet/control_types``.
        aliases: other names units may use.
        resolution: ``(default, minimum, maximum)`` of the preprocessor resolution; None: it has none.
        threshold_a: ``(label, default, minimum, maximum)`` of its first slider; None: it has none.
        threshold_b: the same for its second slider.
    """

    name: str
    run: Callable[..., Any]
    tags: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    resolution: tuple[float, float, float] | None = (512, 64, 2048)
    threshold_a: tuple[str, float, float, float] | None = None
    threshold_b: tuple[str, float, float, float] | None = None


@dataclass(frozen=True)
class UITab:
    """A tab an extension adds: ``render()`` builds its gradio components inside an open ``gr.Tab``."""

    title: str
    render: Callable[[], None]
    elem_id: str = ""


__all__ = [
    "API_VERSION",
    "ControlPreprocessorSpec",
    "GenerationParams",
    "GenerationResult",
    "Img2ImgParams",
    "JobControl",
    "OptionSpec",
    "PreparedScript",
    "SamplerSpec",
    "SamplingFunction",
    "ScheduleSpec",
    "ScriptArg",
    "ScriptCall",
    "ScriptContext",
    "ScriptEnvironment",
    "ScriptError",
    "ScriptSpec",
    "StepProgress",
    "UITab",
    "XyzAxis",
    "hookimpl",
]

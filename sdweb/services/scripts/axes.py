"""The built-in X/Y/Z plot axes, in A1111's order, and what each does to a cell's request.

The list keeps every axis A1111 1.10 offers, in its order, so that the axis numbers API clients send
(``script_args[0] = 4`` is "Steps" in txt2img) mean the same here. Axes that sdweb cannot vary per
request (sigma tweaks, token merging, refiner ...) stay listed with the reason in ``unsupported``;
choosing one is an error that says it. Extensions add axes after these (hook ``register_xyz_axes``).

Each ``apply`` returns a validated copy of the request: a value out of range ("Steps: 500") is an error
naming the axis and the value before anything runs, never a silent clamp.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from sdweb.params import GenerationParams, format_validation_error
from sdweb.scripting import AxisFormat, AxisValueType, ScriptEnvironment, ScriptError, ScriptMode, XyzAxis

logger = logging.getLogger(__name__)

BOTH: tuple[ScriptMode, ...] = ("txt2img", "img2img")
TXT2IMG: tuple[ScriptMode, ...] = ("txt2img",)
IMG2IMG: tuple[ScriptMode, ...] = ("img2img",)
_SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


def with_values(params: GenerationParams, label: str, *, shown: str | None = None,
                **changes: Any) -> GenerationParams:
    """``params`` with ``changes``, validated; a bad value is a :class:`ScriptError` naming the axis
    (``label``) and the value (``shown``, default: the changed values).
    """
    try:
        return type(params).model_validate({**params.model_dump(), **changes})
    except ValidationError as exc:
        shown = shown if shown is not None else ", ".join(f"{value}" for value in changes.values())
        raise ScriptError(f"{label} {shown}: {format_validation_error(exc)}") from None


def _field(name: str, label: str) -> Callable[[GenerationParams, Any, Sequence[Any]], GenerationParams]:
    def apply(params: GenerationParams, value: Any, _values: Sequence[Any]) -> GenerationParams:
        return with_values(params, label, **{name: value})

    return apply


def _nothing(params: GenerationParams, _value: Any, _values: Sequence[Any]) -> GenerationParams:
    return params


def _prompt_sr(params: GenerationParams, value: Any, values: Sequence[Any]) -> GenerationParams:
    search = str(values[0])
    if search not in params.prompt and search not in params.negative_prompt:
        raise ScriptError(f"Prompt S/R did not find {search!r} in the prompt or the negative prompt")
    return with_values(params, "Prompt S/R", prompt=params.prompt.replace(search, str(value)),
                       negative_prompt=params.negative_prompt.replace(search, str(value)))


def _prompt_order(params: GenerationParams, value: Any, _values: Sequence[Any]) -> GenerationParams:
    """The listed tokens put in the order ``value`` gives, at the places they held in the prompt."""
    tokens = [str(token) for token in value]
    prompt = params.prompt
    missing = [token for token in tokens if token not in prompt]
    if missing:
        raise ScriptError(f"Prompt order: {missing[0]!r} is not in the prompt")
    by_place = sorted(tokens, key=prompt.find)
    parts: list[str] = []
    rest = prompt
    for token in by_place:
        at = rest.find(token)
        parts.append(rest[:at])
        rest = rest[at + len(token):]
    rebuilt = "".join(part + tokens[index] for index, part in enumerate(parts)) + rest
    return with_values(params, "Prompt order", prompt=rebuilt)


def _styles(params: GenerationParams, value: Any, _values: Sequence[Any]) -> GenerationParams:
    added = tuple(name.strip() for name in str(value).split(",") if name.strip())
    return with_values(params, "Styles", styles=(*params.styles, *added))


def _size(params: GenerationParams, value: Any, _values: Sequence[Any]) -> GenerationParams:
    match = _SIZE.match(str(value))
    if match is None:
        raise ScriptError(f"Size {value!r}: write it as WIDTHxHEIGHT, e.g. 512x768")
    return with_values(params, "Size", shown=str(value).strip(), width=int(match[1]), height=int(match[2]))


# -- confirm: check every value before anything runs ---------------------------------------------

def _known(label: str, lookup: Callable[[ScriptEnvironment, str], str]) -> Callable[..., Sequence[Any]]:
    def confirm(values: Sequence[Any], env: ScriptEnvironment) -> Sequence[Any]:
        found = []
        for value in values:
            try:
                found.append(lookup(env, str(value)))
            except LookupError as exc:
                raise ScriptError(f"{label}: {str(exc).strip(chr(39) + chr(34))}") from None
        return found

    return confirm


def _one_of(label: str,
            choices: Callable[[ScriptEnvironment], Sequence[str]]) -> Callable[..., Sequence[Any]]:
    def lookup(env: ScriptEnvironment, value: str) -> str:
        known = list(choices(env))
        for choice in known:
            if choice.lower() == value.strip().lower():
                return choice
        raise LookupError(f"{value!r} not found; known: {', '.join(known)}")

    return _known(label, lookup)


def _find_vae(env: ScriptEnvironment, value: str) -> str:
    lowered = value.strip().lower()
    if lowered in ("auto", "automatic"):
        return "Automatic"
    if lowered == "none":
        return "None"
    for name in env.vae_names():
        if lowered in (name.lower(), name.rsplit(".", 1)[0].lower()):
            return name
    known = ", ".join(["Automatic", "None", *env.vae_names()])
    raise LookupError(f"VAE {value!r} not found; known: {known}")


def _confirm_styles(values: Sequence[Any], env: ScriptEnvironment) -> Sequence[Any]:
    known = env.style_names()
    for value in values:
        for name in (part.strip() for part in str(value).split(",")):
            if name and name not in known:
                raise ScriptError(f"Styles: style {name!r} not found; known: {', '.join(known) or 'none'}")
    return values


def _confirm_rng(values: Sequence[Any], _env: ScriptEnvironment) -> Sequence[Any]:
    found = []
    for value in values:
        upper = str(value).strip().upper()
        if upper not in ("CPU", "GPU", "NV"):
            raise ScriptError(f"RNG source: {value!r} is not one of CPU, GPU, NV")
        found.append(upper)
    return found


def _axis(label: str, value_type: AxisValueType, apply: Callable[..., GenerationParams], *,
          modes: tuple[ScriptMode, ...] = BOTH, fmt: AxisFormat = "label", cost: float = 0.0,
          choices: Callable[[ScriptEnvironment], Sequence[str]] | None = None,
          confirm: Callable[..., Sequence[Any]] | None = None) -> XyzAxis:
    return XyzAxis(label=label, value_type=value_type, apply=apply, modes=modes, choices=choices,
                   confirm=confirm, cost=cost, format=fmt)


def _unsupported(label: str, value_type: AxisValueType, why: str,
                 modes: tuple[ScriptMode, ...] = BOTH) -> XyzAxis:
    return XyzAxis(label=label, value_type=value_type, apply=_nothing, modes=modes, unsupported=why)


_NO_SIGMA = "sdweb's samplers take no per-request sigma settings"
_NO_SETTING = "this setting is not available per request in sdweb"


def _samplers(env: ScriptEnvironment) -> Sequence[str]:
    return env.sampler_names()


def _schedules(env: ScriptEnvironment) -> Sequence[str]:
    return env.schedule_names()


def _checkpoints(env: ScriptEnvironment) -> Sequence[str]:
    return sorted(env.checkpoint_titles(), key=str.casefold)


def _vaes(env: ScriptEnvironment) -> Sequence[str]:
    return ["Automatic", "None", *env.vae_names()]


def _hires_upscalers(env: ScriptEnvironment) -> Sequence[str]:
    return env.hires_upscaler_names()


def _style_names(env: ScriptEnvironment) -> Sequence[str]:
    return env.style_names()


def _find_sampler(env: ScriptEnvironment, value: str) -> str:
    return env.find_sampler(value)


def _find_checkpoint(env: ScriptEnvironment, value: str) -> str:
    return env.find_checkpoint(value)


def builtin_axes() -> list[XyzAxis]:
    """Every A1111 1.10 axis, in its order (txt2img-only and img2img-only ones marked by ``modes``)."""
    samplers = _known("Sampler", _find_sampler)
    return [
        _axis("Nothing", "str", _nothing, fmt="nothing"),
        _axis("Seed", "int", _field("seed", "Seed")),
        _axis("Var. seed", "int", _field("subseed", "Var. seed")),
        _axis("Var. strength", "float", _field("subseed_strength", "Var. strength")),
        _axis("Steps", "int", _field("steps", "Steps")),
        _axis("Hires steps", "int", _field("hr_second_pass_steps", "Hires steps"), modes=TXT2IMG),
        _axis("CFG Scale", "float", _field("cfg_scale", "CFG Scale")),
        _unsupported("Image CFG Scale", "float", "instruct-pix2pix models are not supported", IMG2IMG),
        _axis("Prompt S/R", "str", _prompt_sr, fmt="value"),
        _axis("Prompt order", "permutations", _prompt_order, fmt="join"),
        _axis("Sampler", "str", _field("sampler_name", "Sampler"), modes=TXT2IMG, fmt="value",
              choices=_samplers, confirm=samplers),
        _axis("Hires sampler", "str", _field("hr_sampler_name", "Hires sampler"), modes=TXT2IMG,
              choices=_samplers, confirm=_known("Hires sampler", _find_sampler)),
        _axis("Sampler", "str", _field("sampler_name", "Sampler"), modes=IMG2IMG, fmt="value",
              choices=_samplers, confirm=samplers),
        _axis("Checkpoint name", "str", _field("checkpoint", "Checkpoint name"), fmt="basename", cost=1.0,
              choices=_checkpoints, confirm=_known("Checkpoint name", _find_checkpoint)),
        _axis("Negative Guidance minimum sigma", "float",
              _field("s_min_uncond", "Negative Guidance minimum sigma")),
        _axis("Sigma Churn", "float", _field("s_churn", "Sigma Churn")),
        _axis("Sigma min", "float", _field("s_tmin", "Sigma min")),
        _axis("Sigma max", "float", _field("s_tmax", "Sigma max")),
        _axis("Sigma noise", "float", _field("s_noise", "Sigma noise")),
        _axis("Schedule type", "str", _field("scheduler", "Schedule type"), choices=_schedules,
              confirm=_one_of("Schedule type", _schedules)),
        _unsupported("Schedule min sigma", "float", _NO_SIGMA),
        _unsupported("Schedule max sigma", "float", _NO_SIGMA),
        _unsupported("Schedule rho", "float", _NO_SIGMA),
        _axis("Skip Early CFG", "float", _field("skip_early_cond", "Skip Early CFG")),
        _unsupported("Beta schedule alpha", "float", _NO_SIGMA),
        _unsupported("Beta schedule beta", "float", _NO_SIGMA),
        _axis("Eta", "float", _field("eta", "Eta")),
        _axis("Clip skip", "int", _field("clip_skip", "Clip skip")),
        _axis("Denoising", "float", _field("denoising_strength", "Denoising")),
        _unsupported("Initial noise multiplier", "float", _NO_SETTING),
        _axis("Extra noise", "float", _field("img2img_extra_noise", "Extra noise")),
        _axis("Hires upscaler", "str", _field("hr_upscaler", "Hires upscaler"), modes=TXT2IMG,
              choices=_hires_upscalers, confirm=_one_of("Hires upscaler", _hires_upscalers)),
        _unsupported("Cond. Image Mask Weight", "float", "it is the setting 'Inpainting conditioning mask "
                     "strength' here, not a per-request value", IMG2IMG),
        _axis("VAE", "str", _field("vae", "VAE"), cost=0.7, choices=_vaes, confirm=_known("VAE", _find_vae)),
        _axis("Styles", "str", _styles, choices=_style_names, confirm=_confirm_styles),
        _axis("UniPC Order", "int", _field("uni_pc_order", "UniPC Order")),
        _unsupported("Face restore", "str", "face restoration is not a per-cell setting here"),
        _unsupported("Token merging ratio", "float", "token merging is not supported"),
        _unsupported("Token merging ratio high-res", "float", "token merging is not supported"),
        _unsupported("Always discard next-to-last sigma", "str", _NO_SIGMA),
        _unsupported("SGM noise multiplier", "str", _NO_SETTING),
        _unsupported("Refiner checkpoint", "str", "the SDXL refiner is not supported"),
        _unsupported("Refiner switch at", "float", "the SDXL refiner is not supported"),
        _axis("RNG source", "str", _field("rng", "RNG source"), choices=lambda _env: ["GPU", "CPU", "NV"],
              confirm=_confirm_rng),
        _unsupported("FP8 mode", "str", "fp8 weight storage is not supported"),
        _axis("Size", "str", _size),
    ]


def axes_for(mode: ScriptMode, axes: Sequence[XyzAxis]) -> list[XyzAxis]:
    """The axes offered in ``mode``, in order: the numbers ``script_args`` use index this list."""
    return [axis for axis in axes if mode in axis.modes]


def format_value(axis: XyzAxis, value: Any) -> str:
    """How ``value`` of ``axis`` is written in the grid legend (A1111's formats)."""
    if isinstance(value, float):
        value = round(value, 8)
    if axis.format == "nothing":
        return ""
    if axis.format == "join":
        return ", ".join(str(item) for item in value)
    if axis.format == "basename":
        return str(value).replace("\\", "/").rsplit("/", 1)[-1]
    if axis.format == "value":
        return str(value)
    return f"{axis.label}: {value}"

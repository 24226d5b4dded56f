"""A1111 generation metadata ("infotext"): write it, parse it, and map it back to a request.

This module owns the text format described in ``shared/reference/a1111-infotext.md``:

* :func:`build_infotext` writes the exact layout A1111 writes (prompt lines, ``Negative prompt:``
  line, one ``key: value, ...`` line in A1111's key order, ``Version`` last).
* :func:`parse_infotext` reads any A1111/Forge/Civitai infotext with A1111's own rules, returning
  the same ``{key: str}`` dictionary A1111's paste code works from.
* :func:`infotext_to_params` turns that dictionary into a :class:`GenerationParams` plus the keys it
  does not map (model hash and name, LoRA hashes, hires settings, ...).

Pure Python: no torch, no Pillow.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from sdweb.params import (
    A1111_COMPAT_INFOTEXT,
    CFG_SKIP_INFOTEXT,
    EMPHASIS_DEFAULT,
    SCHEDULE_SETTINGS,
    SIGMA_DEFAULTS,
    SIGMA_INFOTEXT,
    UNIPC_DEFAULTS,
    GenerationParams,
    Img2ImgParams,
    format_validation_error,
    sampler_sigma_values,
)

logger = logging.getLogger(__name__)

#: A1111's pattern for one ``key: value`` pair of the parameter line. A value is either a JSON string
#: (which may hold commas) or anything up to the next comma.
PARAM_PAIR_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
#: ``512x768`` values are split into ``Key-1`` / ``Key-2`` when parsing.
IMAGE_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")

NEGATIVE_PROMPT_PREFIX = "Negative prompt:"
#: Forge's keys for the text encoder / VAE files of SD 3.x / Flux ("Module 1: ae"): file stems, in order.
MODULE_KEY_RE = re.compile(r"Module (\d+)")

#: Every parameter key A1111's ``create_infotext`` writes before the feature/extension keys, in its
#: order. A key given in ``extra`` that is one of these keeps this position (A1111 builds one dict
#: literal with these keys and then updates it with the extra parameters), so real A1111 strings
#: rebuild in their own order.
A1111_BASE_KEYS: tuple[str, ...] = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Distilled CFG Scale",  # Forge's, for Flux dev (given by the engine in ``extra``)
    "Image CFG scale",
    "Seed",
    "Face restoration",
    "Size",
    "Model hash",
    "Model",
    "FP8 weight",
    "Cache FP16 weight for LoRA",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Seed resize from",
    "Denoising strength",
    "Conditional mask weight",
    "Clip skip",
    "ENSD",
    "Token merging ratio",
    "Token merging ratio hr",
    "Init image hash",
    "RNG",
    "Tiling",
)

#: Defaults A1111 assumes for keys an infotext leaves out.
PARSE_DEFAULTS: Mapping[str, str] = {"Clip skip": "1", "RNG": "GPU", "Schedule type": "Automatic"}

#: Schedule types that old infotexts (before A1111 1.9) folded into the sampler name
#: ("DPM++ 2M Karras"). Longest first so "SGM Uniform" wins over "Uniform".
_SAMPLER_NAME_SCHEDULE_SUFFIXES: tuple[str, ...] = (
    "Polyexponential",
    "SGM Uniform",
    "Exponential",
    "KL Optimal",
    "Karras",
    "Uniform",
    "Simple",
    "Normal",
    "Beta",
)

#: A1111's compatibility keys a paste applies (all of A1111_COMPAT_INFOTEXT).
INFOTEXT_COMPAT_READ: tuple[str, ...] = ("Old prompt editing timelines", "Downcast alphas_cumprod",
                                          "Pad conds", "Pad conds v0", "Discard penultimate sigma",
                                          "SGM noise multiplier",
                                          *(key for key, _default in SCHEDULE_SETTINGS.values()))
#: Infotext keys :func:`infotext_to_params` turns into ``GenerationParams`` fields.
_MAPPED_KEYS = frozenset(
    {
        "Prompt",
        "Negative prompt",
        "Steps",
        "Sampler",
        "Schedule type",
        "CFG scale",
        "Distilled CFG Scale",
        "Seed",
        "Size-1",
        "Size-2",
        "Variation seed",
        "Variation seed strength",
        "Seed resize from-1",
        "Seed resize from-2",
        "Clip skip",
        "Tiling",
        "Denoising strength",
        "ENSD",
        "Eta",
        "Eta DDIM",
        "RNG",
        "Sampler path",
        "UniPC variant",
        "UniPC skip type",
        "UniPC order",
        "UniPC lower order final",
        *INFOTEXT_COMPAT_READ,
        *SIGMA_INFOTEXT.values(),
        *CFG_SKIP_INFOTEXT.values(),
        "Emphasis",
        "Noise Schedule",
    }
)

#: A1111's timestep samplers: their eta is written as ``Eta DDIM`` (default 0), k-diffusion's as ``Eta`` (1).
TIMESTEP_SAMPLERS = frozenset({"DDIM", "PLMS", "UniPC"})

#: Keys A1111 writes for settings that change the picture and that a request cannot carry here: a paste
#: names them (never a silently different image).
INFOTEXT_NOT_HONOURED: tuple[str, ...] = (
    "Refiner",  # A1111's SDXL refiner: another checkpoint takes over part-way
    "Refiner switch at",
    "Token merging ratio",
    "Token merging ratio hr",
)
#: A1111's UniPC settings: infotext key -> request field (and option) name.
INFOTEXT_UNIPC: Mapping[str, str] = {
    "UniPC variant": "uni_pc_variant",
    "UniPC skip type": "uni_pc_skip_type",
    "UniPC order": "uni_pc_order",
    "UniPC lower order final": "uni_pc_lower_order_final",
}


#: Hires fix keys whose text is a request field as it is.
INFOTEXT_HIRES_TEXT: Mapping[str, str] = {
    "Hires upscaler": "hr_upscaler",
    "Hires prompt": "hr_prompt",
    "Hires negative prompt": "hr_negative_prompt",
    "Hires sampler": "hr_sampler_name",
    "Hires schedule type": "hr_scheduler",
}
#: Every hires fix key :func:`infotext_to_params` maps (``Hires resize`` is split into -1/-2 when parsed).
INFOTEXT_HIRES_KEYS: tuple[str, ...] = (
    "Hires upscale",
    "Hires steps",
    "Hires resize-1",
    "Hires resize-2",
    *INFOTEXT_HIRES_TEXT,
)


class InfotextError(ValueError):
    """An infotext value that cannot become a request field (names the key and the value)."""


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def format_value(value: Any) -> str:
    """One value as text: whole floats without ``.0`` (``CFG scale: 7``), others as ``str()``."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value)


def quote_value(text: str) -> str:
    """A1111's quoting: a JSON string only when the value holds ``,``, ``:`` or a newline."""
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def build_infotext(
    params: GenerationParams,
    *,
    seed: int,
    subseed: int | None,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    model_name: str | None,
    model_hash: str | None,
    vae_name: str | None = None,
    vae_hash: str | None = None,
    clip_skip: int = 1,
    rng: str = "CPU",
    extra: Mapping[str, Any] | None = None,
    version: str,
) -> str:
    """The infotext of one image, byte for byte as A1111 writes it.

    Args:
        params: the request; its sampler, schedule type, steps, CFG, size, variation and
            seed-resize fields are written.
        seed: the image's concrete seed (``params.seed`` may be -1).
        subseed: the image's concrete variation seed; written only when
            ``params.subseed_strength > 0``.
        prompt: the image's prompt when it differs from ``params.prompt`` (styles applied,
            per-image wildcards); None means ``params.prompt``.
        negative_prompt: likewise for the negative prompt.
        model_name: checkpoint name without extension (``v1-5-pruned-emaonly``).
        model_hash: short sha256 of the checkpoint (10 hex).
        vae_name: VAE file name when a separate VAE was used.
        vae_hash: its short hash.
        clip_skip: the effective CLIP skip; written only when > 1.
        rng: the effective noise source; written only when it is not ``"GPU"``.
        extra: further pairs in their order (``Hires upscale``, ``Lora hashes``, ...). None values
            are left out; a key that A1111 writes at a fixed place (``Denoising strength``,
            ``ENSD``, ...) is written at that place.
        version: the program version (``sdweb.__version__``); written last.
    """
    prompt_text = params.prompt if prompt is None else prompt
    negative_text = params.negative_prompt if negative_prompt is None else negative_prompt
    varies = params.subseed_strength > 0
    resized = params.seed_resize_from_w > 0 and params.seed_resize_from_h > 0

    # A dict keeps the position of a key when it is updated: extras that name a base key land at the
    # base key's place, as in A1111.
    pairs: dict[str, Any] = dict.fromkeys(A1111_BASE_KEYS)
    pairs.update(
        {
            "Steps": params.steps,
            "Sampler": params.sampler_name,
            "Schedule type": params.scheduler,
            "CFG scale": params.cfg_scale,
            "Seed": seed,
            "Size": f"{params.width}x{params.height}",
            "Model hash": model_hash,
            "Model": model_name,
            "VAE hash": vae_hash,
            "VAE": vae_name,
            "Variation seed": subseed if varies else None,
            "Variation seed strength": params.subseed_strength if varies else None,
            "Seed resize from": (
                f"{params.seed_resize_from_w}x{params.seed_resize_from_h}" if resized else None
            ),
            "Clip skip": clip_skip if clip_skip > 1 else None,
            "RNG": rng if rng != "GPU" else None,
            "Tiling": "True" if params.tiling else None,
            # A1111 writes ENSD only where it acted; the engine's extras say so (None leaves it out).
            "ENSD": params.eta_noise_seed_delta or None,
        }
    )
    if params.sampler_name in TIMESTEP_SAMPLERS:  # A1111's DDIM / PLMS / UniPC: "Eta DDIM", default 0
        if params.eta:
            pairs["Eta DDIM"] = params.eta
    elif params.eta is not None and params.eta != 1.0:
        pairs["Eta"] = params.eta
    # A1111's sampler parameters the sampler (or the hires pass's) takes, when not its defaults (on the
    # diffusers path: its Euler, the one diffusers scheduler whose step takes them).
    samplers = [params.sampler_name]
    if getattr(params, "enable_hr", False) and params.hr_sampler_name:
        samplers.append(params.hr_sampler_name)
    if params.sampler_path == "diffusers":
        samplers = [name for name in samplers if name == "Euler"]
    sigma_values = {name: value for sampler in samplers
                    for name, value in sampler_sigma_values(params, sampler).items()}
    for name, key in SIGMA_INFOTEXT.items():
        if name in sigma_values:
            pairs[key] = sigma_values[name]
    if params.sampler_path == "diffusers":
        pairs["Sampler path"] = "diffusers"  # sdweb's: diffusers' schedulers ran, not A1111's samplers
    elif params.sampler_name == "UniPC":
        # A1111's UniPC settings other than its defaults, under the keys A1111 reads them from.
        for key, name in INFOTEXT_UNIPC.items():
            value = getattr(params, name)
            if value is not None and value != UNIPC_DEFAULTS[name]:
                pairs[key] = value
    for key, value in (extra or {}).items():
        if key != "Version":
            pairs[key] = value
    # The engine's "Emphasis" (A1111's text encoder adds it as the prompts are encoded) goes after "Old
    # prompt editing timelines" (added as the prompt schedules are made) and before the keys A1111 adds as
    # sampling starts ("Downcast alphas_cumprod", "Noise Schedule") and during it ("Pad conds").
    emphasis = pairs.pop("Emphasis", None)
    for name, key in A1111_COMPAT_INFOTEXT.items():
        # A1111 writes its compatibility settings only when on, after the hashes of the extra networks
        # (its "Downcast alphas_cumprod" is added as sampling starts). An engine that knows better says so
        # in ``extra`` (A1111 writes "Old prompt editing timelines" only where they changed a schedule).
        if getattr(params, name, None) and key not in (extra or {}):
            pairs[key] = True
        if name == "use_old_scheduling" and emphasis is not None:
            pairs["Emphasis"] = emphasis
        if (name == "use_downcasted_alpha_bar" and params.sd_noise_schedule not in (None, "Default")
                and "Noise Schedule" not in (extra or {})):  # an engine without alphas_cumprod says None
            pairs["Noise Schedule"] = params.sd_noise_schedule
    for name, (key, default) in SCHEDULE_SETTINGS.items():
        # A1111 writes a schedule setting where it differs from its default, Beta's shape whenever the
        # Beta schedule runs.
        value = getattr(params, name, None)
        if value is None or key in (extra or {}):  # an engine that knows better says so in ``extra``
            continue
        if name == "img2img_extra_noise" and not (isinstance(params, Img2ImgParams) or params.enable_hr):
            continue  # A1111 writes it where an img2img sampling added it
        if value != default or (name.startswith("beta_dist") and params.scheduler == "Beta"):
            pairs[key] = value
    # A1111's CFG skipping, written as its denoiser does when it skips the negative prompt.
    if params.skip_early_cond:
        pairs["Skip Early CFG"] = params.skip_early_cond
    if params.s_min_uncond:
        pairs["NGMS"] = params.s_min_uncond
        if params.s_min_uncond_all:
            pairs["NGMS all steps"] = True
    if any(MODULE_KEY_RE.fullmatch(str(key)) for key in pairs):
        # Forge names the VAE among its "Module N" files and reads a "VAE" key as the whole choice.
        pairs["VAE"] = None
    pairs["Version"] = version

    rendered = []
    for key, value in pairs.items():
        if value is None:
            continue
        text = format_value(value)
        # A1111 writes a bare flag when the value equals its key.
        rendered.append(key if text == key else f"{key}: {quote_value(text)}")
    negative_line = f"\n{NEGATIVE_PROMPT_PREFIX} {negative_text}" if negative_text else ""
    return f"{prompt_text}{negative_line}\n{', '.join(rendered)}".strip()


def hires_infotext(params: GenerationParams) -> dict[str, Any]:
    """The hires fix pairs A1111 writes, in its order, for ``build_infotext``'s ``extra``.

    ``Denoising strength`` lands at its own place among the base keys. The second pass's own sampler,
    prompts and schedule type are written only where they differ from the first pass's (A1111's rule);
    :func:`infotext_to_params` reads all of them back.
    """
    pairs: dict[str, Any] = {"Denoising strength": params.denoising_strength}
    if params.hr_resize_x or params.hr_resize_y:
        pairs["Hires resize"] = f"{params.hr_resize_x}x{params.hr_resize_y}"
    else:
        pairs["Hires upscale"] = params.hr_scale
    if params.hr_second_pass_steps:
        pairs["Hires steps"] = params.hr_second_pass_steps
    pairs["Hires upscaler"] = params.hr_upscaler
    if params.hr_sampler_name and params.hr_sampler_name != params.sampler_name:
        pairs["Hires sampler"] = params.hr_sampler_name
    if params.hr_prompt and params.hr_prompt != params.prompt:
        pairs["Hires prompt"] = params.hr_prompt
    if params.hr_negative_prompt and params.hr_negative_prompt != params.negative_prompt:
        pairs["Hires negative prompt"] = params.hr_negative_prompt
    if params.hr_scheduler and params.hr_scheduler != params.scheduler:
        pairs["Hires schedule type"] = params.hr_scheduler
    return pairs


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _unquote(value: str) -> str:
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    return decoded if isinstance(decoded, str) else value


def parse_infotext(text: str) -> dict[str, Any]:
    """Parse an infotext with A1111's rules into ``{"Prompt": ..., "Negative prompt": ..., key: str}``.

    * The last line holds the parameters only when at least 3 ``key: value`` pairs match on it;
      otherwise it is part of the prompt.
    * Lines before the first one starting with ``Negative prompt:`` are the prompt (each line
      stripped, joined by newlines); that line, without the prefix, and all after it are the
      negative prompt.
    * Quoted values are JSON-decoded; ``WxH`` values become ``Key-1`` and ``Key-2``.
    * Left-out keys get A1111's defaults: ``Clip skip`` 1, ``RNG`` GPU, ``Schedule type`` Automatic.

    Values stay strings, as A1111 keeps them; :func:`infotext_to_params` converts them.
    """
    *lines, last_line = text.strip().split("\n")
    if len(PARAM_PAIR_RE.findall(last_line)) < 3:
        lines.append(last_line)
        last_line = ""

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for raw_line in lines:
        line = raw_line.strip()
        if line.startswith(NEGATIVE_PROMPT_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PROMPT_PREFIX) :].strip()
        (negative_lines if in_negative else prompt_lines).append(line)

    result: dict[str, Any] = {
        "Prompt": "\n".join(prompt_lines),
        "Negative prompt": "\n".join(negative_lines),
    }
    for key, raw_value in PARAM_PAIR_RE.findall(last_line):
        if not raw_value:
            # A1111 drops a key with an empty value (its parser fails on it and moves on).
            logger.debug("infotext key %r has an empty value; left out", key)
            continue
        value = _unquote(raw_value)
        size = IMAGE_SIZE_RE.match(value)
        if size is not None:
            result[f"{key}-1"] = size.group(1)
            result[f"{key}-2"] = size.group(2)
        else:
            result[key] = value
    for key, default in PARSE_DEFAULTS.items():
        result.setdefault(key, default)
    return result


def split_sampler_name(sampler: str, schedule: str | None) -> tuple[str, str]:
    """Split an old-style sampler name that carries its schedule ("DPM++ 2M Karras").

    Only when the schedule type is missing or "Automatic": an explicit ``Schedule type`` wins, and a
    name without a known suffix is returned as it is.
    """
    schedule = schedule or "Automatic"
    if schedule != "Automatic":
        return sampler, schedule
    for suffix in _SAMPLER_NAME_SCHEDULE_SUFFIXES:
        head = sampler[: -len(suffix) - 1]
        if sampler.endswith(" " + suffix) and head.strip():
            return head, suffix
    return sampler, schedule


def _to_int(parsed: Mapping[str, Any], key: str) -> int:
    value = parsed[key]
    try:
        return int(str(value).strip())
    except ValueError:
        raise InfotextError(f"infotext {key!r}: expected a whole number, got {value!r}") from None


def _to_whole(parsed: Mapping[str, Any], key: str) -> int:
    """A whole number, also as A1111's float settings write one ("3.0")."""
    value = parsed[key]
    try:
        number = float(str(value).strip())
    except ValueError:
        number = math.nan
    if number.is_integer():
        return int(number)
    raise InfotextError(f"infotext {key!r}: expected a whole number, got {value!r}")


def _to_float(parsed: Mapping[str, Any], key: str) -> float:
    value = parsed[key]
    try:
        number = float(str(value).strip())
    except ValueError:
        raise InfotextError(f"infotext {key!r}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InfotextError(f"infotext {key!r}: expected a finite number, got {value!r}")
    return number


def _rejoin_sizes(parsed: Mapping[str, Any], keys: list[str]) -> dict[str, Any]:
    """Give back ``Key: WxH`` for ``Key-1``/``Key-2`` pairs, so the extras read as the infotext did."""
    extras: dict[str, Any] = {}
    for key in keys:
        if key.endswith("-1") and f"{key[:-2]}-2" in parsed:
            extras[key[:-2]] = f"{parsed[key]}x{parsed[key[:-2] + '-2']}"
        elif key.endswith("-2") and f"{key[:-2]}-1" in parsed:
            continue
        else:
            extras[key] = parsed[key]
    return extras


def infotext_to_params(
    parsed: Mapping[str, Any], *, problems: list[str] | None = None, gpu_rng: str = "GPU"
) -> tuple[GenerationParams, dict[str, Any]]:
    """Map a :func:`parse_infotext` result onto a request, plus the keys that are not request fields.

    Mapped: Prompt, Negative prompt, Steps, Sampler, Schedule type (an old "DPM++ 2M Karras" sampler name
    is split), CFG scale, Distilled CFG Scale (Forge's, Flux), Seed, Size, Variation seed and strength,
    Seed resize from, Clip skip, RNG, ENSD, Eta, Sampler path, Tiling, Denoising strength, Forge's
    ``Module 1``..``Module N`` (the text encoder / VAE files of SD 3.x / Flux, as file stems, into
    ``additional_modules``), and hires fix: any ``Hires ...`` key turns ``enable_hr`` on (an image made
    with hires fix is remade with it); ``Hires upscale``, ``Hires resize``, ``Hires steps``, ``Hires
    upscaler``, ``Hires prompt``, ``Hires negative prompt``, ``Hires sampler`` and ``Hires schedule type``
    fill the ``hr_*`` fields. ``checkpoint`` stays None: the checkpoint is chosen by the caller from
    ``Model hash`` / ``Model``, which come back in the second dict with every other unmapped key (VAE,
    Version, Hires checkpoint, Lora hashes, ...) in the infotext's order; ``WxH`` pairs there are joined
    back (``"Tile size": "64x64"``).

    The noise fields are always set, so a pasted image does not depend on this machine's settings:
    ``ENSD`` (0 when absent: A1111 writes it only when it acted), ``RNG`` (absent means A1111's
    default, GPU noise: ``gpu_rng`` says what reproduces it here, "GPU" where CUDA exists and "NV"
    elsewhere), ``Sampler path`` (absent: A1111's samplers). ``Eta`` fills ``eta``. So are A1111's
    sampler parameters (``Sigma churn``, ``Sigma tmin``, ``Sigma tmax``, ``Sigma noise``) and CFG skipping
    (``NGMS``, ``NGMS all steps``, ``Skip Early CFG``): absent, they are their defaults (off).

    Args:
        parsed: what :func:`parse_infotext` returned.
        problems: when given, a value that does not fit a request is left at its default and described
            here (for a paste into a form, which should not be all-or-nothing) instead of raising.
        gpu_rng: the noise source that reproduces A1111's GPU noise on this machine.

    Raises:
        InfotextError: without ``problems``: a value is not a number where one is needed, or is
            outside what a request allows (the message names the field and the range; nothing is
            corrected).
    """
    fields: dict[str, Any] = {
        "prompt": str(parsed.get("Prompt", "")),
        "negative_prompt": str(parsed.get("Negative prompt", "")),
    }

    def convert(name: str, key: str, to: Any, source: Mapping[str, Any] = parsed) -> None:
        if key not in source:
            return
        try:
            fields[name] = to(source, key)
        except InfotextError as exc:
            if problems is None:
                raise
            problems.append(f"{exc}; the default is used")

    convert("steps", "Steps", _to_int)
    schedule = str(parsed["Schedule type"]) if "Schedule type" in parsed else None
    if "Sampler" in parsed:
        fields["sampler_name"], schedule = split_sampler_name(str(parsed["Sampler"]), schedule)
    if schedule is not None:
        fields["scheduler"] = schedule
    convert("cfg_scale", "CFG scale", _to_float)
    convert("distilled_cfg_scale", "Distilled CFG Scale", _to_float)
    convert("seed", "Seed", _to_int)
    if "Size-1" in parsed and "Size-2" in parsed:
        convert("width", "Size-1", _to_int)
        convert("height", "Size-2", _to_int)
    convert("subseed", "Variation seed", _to_int)
    convert("subseed_strength", "Variation seed strength", _to_float)
    if "Seed resize from-1" in parsed and "Seed resize from-2" in parsed:
        convert("seed_resize_from_w", "Seed resize from-1", _to_int)
        convert("seed_resize_from_h", "Seed resize from-2", _to_int)
    convert("clip_skip", "Clip skip", _to_int)
    if "Tiling" in parsed:
        fields["tiling"] = str(parsed["Tiling"]).strip().lower() == "true"
    convert("denoising_strength", "Denoising strength", _to_float)
    mapped = set(_MAPPED_KEYS)
    modules = sorted(
        (int(match.group(1)), key)
        for key in parsed
        if (match := MODULE_KEY_RE.fullmatch(str(key))) is not None
    )
    if modules:  # Forge's "Module N": the forge_additional_modules choice, by file stem
        fields["additional_modules"] = tuple(str(parsed[key]) for _index, key in modules)
        mapped |= {key for _index, key in modules}
    mapped |= _hires_fields(parsed, fields, convert)

    rng = str(parsed.get("RNG", "GPU")).strip()
    if rng in ("CPU", "GPU", "NV"):
        fields["rng"] = gpu_rng if rng == "GPU" else rng
    elif problems is not None:
        problems.append(f"RNG {rng!r} from the infotext is not a noise source here (CPU, GPU, NV); "
                        "the setting is used")
    else:
        raise InfotextError(f"infotext 'RNG': expected CPU, GPU or NV, got {rng!r}")
    fields["eta_noise_seed_delta"] = 0
    convert("eta_noise_seed_delta", "ENSD", _to_int)
    convert("eta", "Eta", _to_float)
    convert("eta", "Eta DDIM", _to_float)
    path = str(parsed.get("Sampler path", "A1111")).strip()
    fields["sampler_path"] = "diffusers" if path.lower() == "diffusers" else "A1111"
    for name, key in A1111_COMPAT_INFOTEXT.items():
        if key in INFOTEXT_COMPAT_READ:  # absent: off where the image was made (A1111 writes them when on)
            fields[name] = str(parsed.get(key, "")).strip().lower() == "true"
    for name, (key, default) in SCHEDULE_SETTINGS.items():
        fields[name] = default  # absent: A1111's default where the image was made
        convert(name, key, _to_float)
    # A1111's sampler parameters and CFG skipping: absent ones are off where the image was made (A1111
    # writes them when they act), not this machine's settings.
    fields.update(SIGMA_DEFAULTS, s_min_uncond=0.0, s_min_uncond_all=False, skip_early_cond=0.0)
    for name, key in {**SIGMA_INFOTEXT, "s_min_uncond": "NGMS", "skip_early_cond": "Skip Early CFG"}.items():
        convert(name, key, _to_float)
    fields["s_min_uncond_all"] = str(parsed.get("NGMS all steps", "")).strip().lower() == "true"
    # Absent: A1111's defaults where the image was made (it writes them only when they are not).
    fields["emphasis"] = str(parsed.get("Emphasis", EMPHASIS_DEFAULT)).strip()
    fields["sd_noise_schedule"] = str(parsed.get("Noise Schedule", "Default")).strip()
    if fields.get("sampler_name") == "UniPC" or any(key in parsed for key in INFOTEXT_UNIPC):
        # A1111's UniPC settings: absent ones are A1111's defaults, not this machine's settings.
        fields.update(UNIPC_DEFAULTS)
        convert("uni_pc_variant", "UniPC variant", lambda source, key: str(source[key]).strip())
        convert("uni_pc_skip_type", "UniPC skip type", lambda source, key: str(source[key]).strip())
        convert("uni_pc_order", "UniPC order", _to_whole)
        convert("uni_pc_lower_order_final", "UniPC lower order final",
                lambda source, key: str(source[key]).strip().lower() == "true")
    unmapped = [key for key in parsed if key not in mapped]
    return _checked_params(fields, problems), _rejoin_sizes(parsed, unmapped)


def _hires_fields(parsed: Mapping[str, Any], fields: dict[str, Any], convert: Any) -> set[str]:
    """Fill the hires fix fields from ``Hires ...`` keys; return the keys used."""
    if not any(str(key).startswith("Hires ") for key in parsed):
        return set()
    fields["enable_hr"] = True
    hires = dict(parsed)
    width, _, height = str(hires.get("Hires resize", "")).partition("x")
    if height:  # "128x96" when the caller's dictionary kept it whole
        hires.setdefault("Hires resize-1", width.strip())
        hires.setdefault("Hires resize-2", height.strip())
    convert("hr_scale", "Hires upscale", _to_float, hires)
    convert("hr_second_pass_steps", "Hires steps", _to_int, hires)
    convert("hr_resize_x", "Hires resize-1", _to_int, hires)
    convert("hr_resize_y", "Hires resize-2", _to_int, hires)
    for key, name in INFOTEXT_HIRES_TEXT.items():
        if key in hires:
            fields[name] = str(hires[key])
    if "hr_sampler_name" in fields:  # an old "DPM++ 2M Karras" carries its schedule type
        sampler, schedule = split_sampler_name(fields["hr_sampler_name"], fields.get("hr_scheduler"))
        fields["hr_sampler_name"] = sampler
        if schedule != "Automatic":
            fields["hr_scheduler"] = schedule
    return {*INFOTEXT_HIRES_KEYS, "Hires resize"}


def _checked_params(fields: dict[str, Any], problems: list[str] | None) -> GenerationParams:
    try:
        return GenerationParams(**fields)
    except ValidationError as error:
        if problems is None:
            raise InfotextError(
                f"infotext does not fit a request: {format_validation_error(error)}"
            ) from None
        bad = {str(item["loc"][0]) for item in error.errors() if item.get("loc")}
        for item in error.errors():
            name = str(item["loc"][0]) if item.get("loc") else "request"
            message = str(item.get("msg", "invalid value")).removeprefix("Value error, ")
            problems.append(f"{name} {fields.get(name)!r} from the infotext is out of range ({message}); "
                            "the default is used")
        kept = {name: value for name, value in fields.items() if name not in bad}
        return GenerationParams(**kept)  # every value left passed its check above


def has_parameter_line(text: str) -> bool:
    """Whether ``text`` ends with an A1111 parameter line (at least 3 ``key: value`` pairs)."""
    last_line = text.strip().rsplit("\n", 1)[-1]
    return len(PARAM_PAIR_RE.findall(last_line)) >= 3

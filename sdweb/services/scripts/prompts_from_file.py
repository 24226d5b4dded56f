"""Prompts from file or textbox: one request per line, each line a prompt or A1111's ``--option value`` list.

A line without ``--`` is a prompt. A line like ``--prompt "a red fox" --steps 10 --seed 3`` sets those
fields for that line only (A1111's option names: ``prompt``, ``negative_prompt``, ``styles``,
``seed``, ``subseed``, ``subseed_strength``, ``seed_resize_from_w``/``_h``, ``sampler_name``,
``sampler_index``, ``scheduler``, ``batch_size``, ``n_iter``, ``steps``, ``cfg_scale``, ``width``,
``height``, ``tiling``, ``sd_model``, ``do_not_save_samples`` ...). ``--prompt`` and
``--negative_prompt`` take every word up to the next option, quoted or not.

A1111's ``script_args``: ``[checkbox_iterate, checkbox_iterate_batch, prompt_position, prompt_txt]``:

* "Iterate seed every line": the seed goes up by batch size x batch count after each line.
* "Use same random seed for all lines": a seed of -1 is drawn once for every line.
* ``prompt_position`` "start" / "end": a line's prompt goes before / after the tab's prompt (when the
  tab has one), joined by a space; the same for the negative prompt.

Unlike A1111, a line whose options cannot be read (an unknown option, a value that is not a number)
is an error naming the line, before anything runs, instead of being used whole as a prompt.
"""

from __future__ import annotations

import logging
import random
import shlex
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from sdweb.params import MAX_SEED, GenerationParams, GenerationResult, format_validation_error
from sdweb.scripting import (
    PreparedScript,
    ScriptArg,
    ScriptCall,
    ScriptContext,
    ScriptEnvironment,
    ScriptError,
    ScriptSpec,
)
from sdweb.services.scripts.arguments import choice, flag, text
from sdweb.services.scripts.xyz_plot import DEFAULT_MAX_IMAGES

logger = logging.getLogger(__name__)

TITLE = "Prompts from file or textbox"
ARGS = (
    ScriptArg("checkbox_iterate", "Iterate seed every line", False, "checkbox"),
    ScriptArg("checkbox_iterate_batch", "Use same random seed for all lines", False, "checkbox"),
    ScriptArg("prompt_position", "Insert prompts at the", "start", "radio", choices=("start", "end")),
    ScriptArg("prompt_txt", "List of prompt inputs", "", "textbox",
              help='one prompt per line, or options: --prompt "a red fox" --steps 10 --seed 3'),
)

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


def _as_int(value: str) -> int:
    return int(value)


def _as_float(value: str) -> float:
    return float(value)


def _as_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered not in _TRUE + _FALSE:
        raise ValueError("true or false")
    return lowered in _TRUE


def _as_styles(value: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in value.split(",") if name.strip())


#: A1111's line options: name -> (GenerationParams field or a script key, converter).
_OPTIONS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "prompt": ("prompt", str),
    "negative_prompt": ("negative_prompt", str),
    "prompt_for_display": ("", str),  # A1111 shows it in its UI only
    "styles": ("styles", _as_styles),
    "seed": ("seed", _as_int),
    "subseed": ("subseed", _as_int),
    "subseed_strength": ("subseed_strength", _as_float),
    "seed_resize_from_h": ("seed_resize_from_h", _as_int),
    "seed_resize_from_w": ("seed_resize_from_w", _as_int),
    "sampler_index": ("sampler_index", _as_int),
    "sampler_name": ("sampler_name", str),
    "scheduler": ("scheduler", str),
    "batch_size": ("batch_size", _as_int),
    "n_iter": ("n_iter", _as_int),
    "steps": ("steps", _as_int),
    "cfg_scale": ("cfg_scale", _as_float),
    "width": ("width", _as_int),
    "height": ("height", _as_int),
    "tiling": ("tiling", _as_bool),
    "restore_faces": ("restore_faces", _as_bool),
    "sd_model": ("checkpoint", str),
    "do_not_save_samples": ("do_not_save_samples", _as_bool),
    "do_not_save_grid": ("", _as_bool),  # scripts of this kind make no grid
}
_REFUSED = {
    "outpath_samples": "images are always saved under outputs/",
    "outpath_grids": "grids are always saved under outputs/",
}


def parse_line(line: str) -> dict[str, Any]:
    """One line's settings: ``{"prompt": line}`` for a plain prompt, else its ``--option value`` pairs.

    Raises:
        ValueError: an unknown option, a missing or unreadable value (the message names it).
    """
    if "--" not in line:
        return {"prompt": line}
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise ValueError(f"cannot split it into words ({exc}); check the quotes") from None
    found: dict[str, Any] = {}
    position = 0
    while position < len(words):
        word = words[position]
        if not word.startswith("--"):
            raise ValueError(f"{word!r} should be an option starting with --")
        name = word[2:]
        if name in _REFUSED:
            raise ValueError(f"--{name} is not supported: {_REFUSED[name]}")
        if name not in _OPTIONS:
            raise ValueError(f"unknown option --{name}; known: {', '.join('--' + key for key in _OPTIONS)}")
        if position + 1 >= len(words):
            raise ValueError(f"--{name} needs a value")
        field, convert = _OPTIONS[name]
        if name in ("prompt", "negative_prompt"):
            position += 1
            taken = [words[position]]
            position += 1
            while position < len(words) and not words[position].startswith("--"):
                taken.append(words[position])
                position += 1
            found[field] = " ".join(taken)
            continue
        value = words[position + 1]
        try:
            converted = convert(value)
        except ValueError:
            kinds = {_as_int: "a whole number", _as_float: "a number", _as_bool: "true or false"}
            kind = kinds.get(convert, "valid")
            raise ValueError(f"--{name} {value!r}: must be {kind}") from None
        if field:
            found[field] = converted
        position += 2
    return found


def _line_request(params: GenerationParams, settings: dict[str, Any], *, position: str,
                  env: ScriptEnvironment, where: str) -> tuple[GenerationParams, bool]:
    """The request of one line and whether to save its images."""
    changes = dict(settings)
    save = not changes.pop("do_not_save_samples", False)
    if changes.pop("restore_faces", False):
        raise ScriptError(f"{where}: --restore_faces true: use the tab's face restoration instead")
    if "sampler_index" in changes:
        names = env.sampler_names()
        index = changes.pop("sampler_index")
        if not 0 <= index < len(names):
            raise ScriptError(f"{where}: --sampler_index {index} is out of range 0-{len(names) - 1}")
        changes.setdefault("sampler_name", names[index])
    try:
        if "sampler_name" in changes:
            changes["sampler_name"] = env.find_sampler(changes["sampler_name"])
        if "checkpoint" in changes:
            changes["checkpoint"] = env.find_checkpoint(changes["checkpoint"])
    except LookupError as exc:
        raise ScriptError(f"{where}: {str(exc).strip(chr(39) + chr(34))}") from None
    for field, base in (("prompt", params.prompt), ("negative_prompt", params.negative_prompt)):
        if changes.get(field) and base:
            changes[field] = f"{changes[field]} {base}" if position == "start" else f"{base} {changes[field]}"
    try:
        return type(params).model_validate({**params.model_dump(), **changes}), save
    except ValidationError as exc:
        raise ScriptError(f"{where}: {format_validation_error(exc)}") from None


def prepare(call: ScriptCall) -> PreparedScript:
    args = call.args
    iterate = flag(args[0], "script_args[0] (checkbox_iterate)")
    same_seed = flag(args[1], "script_args[1] (checkbox_iterate_batch)")
    position = choice(args[2], "script_args[2] (prompt_position)", ("start", "end"))
    lines = [line.strip() for line in text(args[3], "script_args[3] (prompt_txt)").splitlines()]
    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line]
    if not numbered:
        raise ScriptError("script_args[3] (prompt_txt): give at least one prompt (one per line)")

    params = call.params
    seed = params.seed
    if (iterate or same_seed) and seed == -1:
        seed = random.SystemRandom().randint(0, MAX_SEED)
    requests: list[tuple[GenerationParams, bool]] = []
    for number, line in numbered:
        where = f"line {number}"
        try:
            settings = parse_line(line)
        except ValueError as exc:
            raise ScriptError(f"{where}: {exc}") from None
        request, save = _line_request(params.model_copy(update={"seed": seed}), settings, position=position,
                                      env=call.env, where=where)
        requests.append((request, save))
        if iterate:
            seed = (seed + params.batch_size * params.n_iter) % (MAX_SEED + 1)
    total = sum(request.total_images for request, _ in requests)
    limit = int(call.env.option("script_max_images") or DEFAULT_MAX_IMAGES)
    if total > limit:
        raise ScriptError(f"Prompts from file would make {total} images; at most {limit} are allowed "
                          f"(setting script_max_images)")

    def run(context: ScriptContext) -> GenerationResult:
        combined = GenerationResult(params=params)
        for request, save in requests:
            if context.interrupted:
                break
            result = context.generate(request, init_images=call.init_images, mask=call.mask, save=save)
            if context.skipped:
                context.clear_skip()
            if not combined.model_name and result.images:
                combined.model_name, combined.model_hash = result.model_name, result.model_hash
                combined.job_timestamp = result.job_timestamp
            for name in ("images", "infotexts", "seeds", "subseeds", "prompts", "negative_prompts", "paths"):
                getattr(combined, name).extend(getattr(result, name))
        combined.interrupted = context.interrupted
        context.record_history(combined)
        return combined

    return PreparedScript(run=run, planned=tuple(request for request, _ in requests),
                          job_count=sum(request.n_iter for request, _ in requests),
                          summary=f"Processing {len(requests)} lines in "
                                  f"{sum(request.n_iter for request, _ in requests)} jobs")


SCRIPT = ScriptSpec(
    title=TITLE,
    modes=("txt2img", "img2img"),
    args=ARGS,
    prepare=prepare,
    description="Runs one request per line: a prompt, or A1111's options such as "
                '--prompt "a red fox" --steps 10 --seed 3.',
)

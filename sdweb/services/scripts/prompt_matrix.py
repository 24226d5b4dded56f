"""Prompt matrix: every combination of the ``|``-separated parts of a prompt, as a labelled grid.

``a cat | in a hat | on a mat`` makes 4 images: "a cat", "a cat, in a hat", "a cat, on a mat" and
"a cat, in a hat, on a mat". The first half of the optional parts label the columns and the rest the
rows; a part a cell leaves out is written grey and struck through (A1111's legend).

A1111's ``script_args``: ``[put_at_start, different_seeds, prompt_type, variations_delimiter,
margin_size]``: put the base part last instead of first; one seed per image (seed + i) instead of
one for all; vary the positive or the negative prompt; join with ", " (comma) or " " (space); pixels
between cells. One image per combination (the request's batch size and count are not used, as in
A1111, where they only group the same images into batches). The grid comes first in the result and is
saved as ``prompt_matrix-NNNN``; every image is saved with its own infotext.
"""

from __future__ import annotations

import logging
import math
import random

from sdweb.images.labelled_grid import GridLabel, check_grid_size, labelled_grid
from sdweb.params import MAX_SEED, GenerationParams, GenerationResult
from sdweb.scripting import PreparedScript, ScriptArg, ScriptCall, ScriptContext, ScriptError, ScriptSpec
from sdweb.services.scripts.arguments import choice, flag, whole_number
from sdweb.services.scripts.axes import with_values
from sdweb.services.scripts.xyz_plot import DEFAULT_MAX_IMAGES

logger = logging.getLogger(__name__)

TITLE = "Prompt matrix"
#: 2 ** 12 = 4096 images is already far past any useful grid.
MAX_OPTIONAL_PARTS = 12

ARGS = (
    ScriptArg("put_at_start", "Set at prompt start", False, "checkbox"),
    ScriptArg("different_seeds", "Random seeds", False, "checkbox", help="one seed per image (seed + i)"),
    ScriptArg("prompt_type", "Prompt type", "positive", "radio", choices=("positive", "negative")),
    ScriptArg("variations_delimiter", "Joining char", "comma", "radio", choices=("comma", "space")),
    ScriptArg("margin_size", "Grid margins", 0, "slider", minimum=0, maximum=500, step=2),
)


def combinations(prompt: str, *, put_at_start: bool, delimiter: str) -> tuple[list[str], list[str]]:
    """``(optional parts, one prompt per combination)``; combination ``i`` has part ``n`` if bit n is set."""
    base, *options = (part.strip() for part in prompt.split("|"))
    options = [option.strip(",").strip() for option in options]
    prompts = []
    for number in range(2 ** len(options)):
        chosen = [option for index, option in enumerate(options) if number & (1 << index)]
        ordered = [*chosen, base] if put_at_start else [base, *chosen]
        prompts.append(delimiter.join(part for part in ordered if part))
    return options, prompts


def prepare(call: ScriptCall) -> PreparedScript:
    args = call.args
    put_at_start = flag(args[0], "script_args[0] (put_at_start)")
    different_seeds = flag(args[1], "script_args[1] (different_seeds)")
    prompt_type = choice(args[2], "script_args[2] (prompt_type)", ("positive", "negative"))
    joining = choice(args[3], "script_args[3] (variations_delimiter)", ("comma", "space"))
    delimiter = ", " if joining == "comma" else " "
    margin = whole_number(args[4], "script_args[4] (margin_size)", minimum=0, maximum=500)

    params = call.params
    source = params.prompt if prompt_type == "positive" else params.negative_prompt
    if "|" not in source:
        raise ScriptError(f"Prompt matrix: the {prompt_type} prompt has no '|': write the parts to combine "
                          f"after the base, e.g. 'a cat | in a hat | on a mat'")
    if source.count("|") > MAX_OPTIONAL_PARTS:
        raise ScriptError(f"Prompt matrix: {source.count('|')} optional parts make {2 ** source.count('|')} "
                          f"images; at most {MAX_OPTIONAL_PARTS} parts are allowed")
    options, prompts = combinations(source, put_at_start=put_at_start, delimiter=delimiter)
    limit = int(call.env.option("script_max_images") or DEFAULT_MAX_IMAGES)
    if len(prompts) > limit:
        raise ScriptError(f"Prompt matrix would make {len(prompts)} images; at most {limit} are allowed "
                          f"(setting script_max_images)")
    try:
        check_grid_size((params.width, params.height), len(prompts))
    except ValueError as exc:
        raise ScriptError(f"Prompt matrix: {exc}") from None

    seed = params.seed if params.seed != -1 else random.SystemRandom().randint(0, MAX_SEED)
    field = "prompt" if prompt_type == "positive" else "negative_prompt"
    requests = [with_values(params, "Prompt matrix", **{field: text}, batch_size=1, n_iter=1,
                            seed=(seed + (index if different_seeds else 0)) % (MAX_SEED + 1))
                for index, text in enumerate(prompts)]
    base = params.model_copy(update={"seed": seed})

    def run(context: ScriptContext) -> GenerationResult:
        return _run(context, base, requests, options, margin, call)

    return PreparedScript(run=run, planned=tuple(requests), job_count=len(requests),
                          summary=f"Prompt matrix will create {len(requests)} images")


def _run(context: ScriptContext, base: GenerationParams, requests: list[GenerationParams], options: list[str],
         margin: int, call: ScriptCall) -> GenerationResult:
    combined = GenerationResult(params=base)
    for request in requests:
        if context.interrupted:
            break
        result = context.generate(request, init_images=call.init_images, mask=call.mask)
        if context.skipped:
            context.clear_skip()
        if not result.images:
            break  # a grid with holes would mislabel the cells after them
        _append(combined, result)
    combined.interrupted = len(combined.images) < len(requests)
    if not combined.images:
        return combined
    if len(combined.images) == len(requests):
        grid = matrix_grid(combined.images, options, margin=margin)
        infotext = combined.infotexts[0]
        combined.grid_path = context.save_grid(grid, infotext=infotext, basename="prompt_matrix")
        combined.images.insert(0, grid)
        combined.infotexts.insert(0, infotext)
        for values in (combined.seeds, combined.subseeds, combined.prompts, combined.negative_prompts):
            values.insert(0, values[0])
    context.record_history(combined)
    return combined


def matrix_grid(images: list, options: list[str], *, margin: int = 0):  # noqa: ANN001, ANN201 - PIL
    """The images in combination order, columns labelled with the first half of the parts, rows the rest."""
    across = math.ceil(len(options) / 2)
    horizontal, vertical = options[:across], options[across:]
    columns = [[GridLabel(text, bool(position & (1 << index))) for index, text in enumerate(horizontal)]
               for position in range(2 ** len(horizontal))]
    rows = [[GridLabel(text, bool(position & (1 << index))) for index, text in enumerate(vertical)]
            for position in range(2 ** len(vertical))]
    return labelled_grid(images, rows=len(rows), column_labels=columns, row_labels=rows if vertical else None,
                         margin=margin)


def _append(combined: GenerationResult, result: GenerationResult) -> None:
    if not combined.model_name:
        combined.model_name, combined.model_hash = result.model_name, result.model_hash
        combined.vae_name, combined.vae_hash = result.vae_name, result.vae_hash
        combined.clip_skip, combined.job_timestamp = result.clip_skip, result.job_timestamp
        combined.extra_generation_params = dict(result.extra_generation_params)
    combined.images.extend(result.images)
    combined.infotexts.extend(result.infotexts)
    combined.seeds.extend(result.seeds)
    combined.subseeds.extend(result.subseeds)
    combined.prompts.extend(result.prompts)
    combined.negative_prompts.extend(result.negative_prompts)
    combined.paths.extend(result.paths)


SCRIPT = ScriptSpec(
    title=TITLE,
    modes=("txt2img", "img2img"),
    args=ARGS,
    prepare=prepare,
    description="Makes one image for every combination of the |-separated parts of the prompt and shows "
                "them as a grid labelled with the parts.",
)

"""Loopback (img2img): each output becomes the next loop's init image, the denoising strength moving
from the request's value to a final one along a curve.

A1111's ``script_args``: ``[loops, final_denoising_strength, denoising_curve, append_interrogation]``.
Loop ``i`` of ``n`` runs at ``start + (final - start) * curve(i / (n - 1))`` with curve "Linear"
(``t``), "Aggressive" (``sin(t * pi / 2)``) or "Lazy" (``1 - cos(t * pi / 2)``); each loop's seed is the
previous one + 1. After the first loop an inpainting job repaints from the previous result
("original"). With a batch count above 1 the whole loop runs that many times from the original
picture and the last image of each run is kept; with one, every loop's image is kept. Several images
also come as one row grid, first. Appending an interrogated caption (CLIP, DeepBooru) is refused:
sdweb has no captioning models.
"""

from __future__ import annotations

import logging
import math
import random

from sdweb.images.labelled_grid import labelled_grid
from sdweb.params import MAX_SEED, GenerationResult, Img2ImgParams
from sdweb.scripting import PreparedScript, ScriptArg, ScriptCall, ScriptContext, ScriptError, ScriptSpec
from sdweb.services.scripts.arguments import choice, number, whole_number

logger = logging.getLogger(__name__)

TITLE = "Loopback"
CURVES = ("Aggressive", "Linear", "Lazy")
ARGS = (
    ScriptArg("loops", "Loops", 4, "slider", minimum=1, maximum=32, step=1),
    ScriptArg("final_denoising_strength", "Final denoising strength", 0.5, "slider", minimum=0, maximum=1,
              step=0.01),
    ScriptArg("denoising_curve", "Denoising strength curve", "Linear", "dropdown", choices=CURVES),
    ScriptArg("append_interrogation", "Append interrogated prompt at each iteration", "None", "dropdown",
              choices=("None", "CLIP", "DeepBooru")),
)


def strength_at(loop: int, loops: int, start: float, final: float, curve: str) -> float:
    """The denoising strength of loop ``loop`` (0-based) of ``loops``."""
    if loops == 1:
        return start
    progress = loop / (loops - 1)
    if curve == "Aggressive":
        shaped = math.sin(progress * math.pi * 0.5)
    elif curve == "Lazy":
        shaped = 1 - math.cos(progress * math.pi * 0.5)
    else:
        shaped = progress
    return min(1.0, max(0.0, start + (final - start) * shaped))


def prepare(call: ScriptCall) -> PreparedScript:
    args = call.args
    loops = whole_number(args[0], "script_args[0] (loops)", minimum=1, maximum=32)
    final = number(args[1], "script_args[1] (final_denoising_strength)", minimum=0, maximum=1)
    curve = choice(args[2], "script_args[2] (denoising_curve)", CURVES)
    interrogation = choice(args[3], "script_args[3] (append_interrogation)", ("None", "CLIP", "DeepBooru"))
    if interrogation != "None":
        raise ScriptError(f"script_args[3] (append_interrogation): {interrogation} captioning is not "
                          f"available in sdweb; use None")
    params = call.params
    if not isinstance(params, Img2ImgParams):
        raise ScriptError("Loopback runs in img2img only")
    seed = params.seed if params.seed != -1 else random.SystemRandom().randint(0, MAX_SEED)
    base = params.model_copy(update={"seed": seed, "batch_size": 1, "n_iter": 1})
    start = params.denoising_strength
    strengths = [strength_at(i, loops, start, final, curve) for i in range(loops)]
    extra = {"Final denoising strength": final, "Denoising curve": curve}
    planned = tuple(base.model_copy(update={"denoising_strength": s}) for s in strengths)
    runs = params.n_iter

    def run(context: ScriptContext) -> GenerationResult:
        kept = []
        last_result: GenerationResult | None = None
        next_seed = seed
        for _ in range(runs):
            init = list(call.init_images[:1])
            fill = params.inpainting_fill
            last = None
            for loop in range(loops):
                if context.interrupted:
                    break
                request = base.model_copy(update={"seed": next_seed, "denoising_strength": strengths[loop],
                                                  "inpainting_fill": fill})
                result = context.generate(request, init_images=init, mask=call.mask, extra=extra)
                if context.interrupted or not result.images:
                    break
                next_seed = (result.seeds[0] + 1) % (MAX_SEED + 1)
                if context.skipped:
                    context.clear_skip()
                    break
                last, last_result = result, result
                init = [result.images[0]]
                fill = 1  # "original": the next loop repaints from this result
                if runs == 1:
                    kept.append(result)
            if runs > 1 and last is not None and not context.interrupted:
                kept.append(last)
            if context.interrupted:
                break
        combined = GenerationResult(params=params.model_copy(update={"seed": seed}),
                                    interrupted=context.interrupted)
        if last_result is None:
            return combined
        combined.model_name, combined.model_hash = last_result.model_name, last_result.model_hash
        combined.job_timestamp = last_result.job_timestamp
        combined.extra_generation_params = dict(last_result.extra_generation_params)
        for result in kept:
            for name in ("images", "infotexts", "seeds", "subseeds", "prompts", "negative_prompts"):
                getattr(combined, name).append(getattr(result, name)[0])
        for result in kept:
            combined.paths.extend(result.paths)
        if len(combined.images) > 1:
            grid = labelled_grid(combined.images, rows=1)
            combined.grid_path = context.save_grid(grid, infotext=combined.infotexts[0])
            combined.images.insert(0, grid)
            for values in (combined.infotexts, combined.seeds, combined.subseeds, combined.prompts,
                           combined.negative_prompts):
                values.insert(0, values[0])
        context.record_history(combined)
        return combined

    return PreparedScript(run=run, planned=planned, job_count=loops * runs,
                          summary=f"Loopback will run {loops} loops {runs} time(s)")


SCRIPT = ScriptSpec(
    title=TITLE,
    modes=("img2img",),
    args=ARGS,
    prepare=prepare,
    description="Feeds each output back in as the next init image, moving the denoising strength towards "
                "a final value.",
)

"""SD upscale (img2img): upscale the picture, then redraw it tile by tile with img2img and blend the tiles.

A1111's ``script_args``: ``[info, overlap, upscaler_index, scale_factor]`` (``info`` is its help text and
is ignored). The init image is scaled by ``scale_factor`` with the chosen upscaler (A1111's number in
the upscaler list, or its name), brought to a multiple of 8 pixels, cut into tiles of the request's
width x height overlapping by ``overlap`` pixels (:mod:`sdweb.images.tiles`), each tile redrawn by
img2img with the request's prompt and denoising strength (``batch_size`` tiles at a time, the seed +1
after each batch), and the tiles blended back together. The batch count makes that many upscales
(seed + n). Each upscaled picture is saved with the first batch's infotext plus "SD upscale overlap"
and "SD upscale upscaler"; the tiles themselves are not saved.
"""

from __future__ import annotations

import logging
import math
import random

from PIL import Image

from sdweb.images.tiles import combine_tiles, plan_tiles, split_tiles
from sdweb.params import MAX_SEED, GenerationResult, Img2ImgParams
from sdweb.scripting import (
    PreparedScript,
    ScriptArg,
    ScriptCall,
    ScriptContext,
    ScriptEnvironment,
    ScriptError,
    ScriptMode,
    ScriptSpec,
)
from sdweb.services.scripts.arguments import choice, number, whole_number
from sdweb.services.scripts.axes import with_values

logger = logging.getLogger(__name__)

TITLE = "SD upscale"
#: The upscaled picture's largest side (as the Extras upscaler's limit).
MAX_SIDE = 8192


def _upscalers(env: ScriptEnvironment, _mode: ScriptMode) -> list[str]:
    return env.upscaler_names()


ARGS = (
    ScriptArg("info", "Will upscale the image by the selected scale factor; use width and height sliders to "
              "set tile size", None, "html"),
    ScriptArg("overlap", "Tile overlap", 64, "slider", minimum=0, maximum=256, step=16),
    ScriptArg("upscaler_index", "Upscaler", 0, "radio", choices=_upscalers,
              help="A1111's number in the upscaler list, or the upscaler's name"),
    ScriptArg("scale_factor", "Scale Factor", 2.0, "slider", minimum=1.0, maximum=4.0, step=0.05),
)


def _multiple_of_8(value: float) -> int:
    return max(8, int(round(value / 8)) * 8)


def prepare(call: ScriptCall) -> PreparedScript:
    args = call.args
    overlap = whole_number(args[1], "script_args[1] (overlap)", minimum=0, maximum=256)
    upscaler = choice(args[2], "script_args[2] (upscaler_index)", call.env.upscaler_names())
    factor = number(args[3], "script_args[3] (scale_factor)", minimum=1.0, maximum=4.0)
    params = call.params
    if not isinstance(params, Img2ImgParams):
        raise ScriptError("SD upscale runs in img2img only")
    if call.mask is not None:
        raise ScriptError("SD upscale redraws the whole picture: remove the inpainting mask")
    if not call.init_images:
        raise ScriptError("SD upscale needs an init image")
    source = call.init_images[0]
    size = (_multiple_of_8(source.width * factor), _multiple_of_8(source.height * factor))
    if max(size) > MAX_SIDE:
        raise ScriptError(f"SD upscale: {source.width}x{source.height} x {factor:g} is {size[0]}x{size[1]}; "
                          f"at most {MAX_SIDE} pixels a side")
    try:
        layout = plan_tiles(size[0], size[1], tile_w=params.width, tile_h=params.height, overlap=overlap)
    except ValueError as exc:
        raise ScriptError(f"SD upscale: {exc}") from None
    seed = params.seed if params.seed != -1 else random.SystemRandom().randint(0, MAX_SEED)
    batch = max(1, params.batch_size)
    batches = math.ceil(layout.count / batch)
    tile_request = with_values(params, "SD upscale", width=layout.tile_w, height=layout.tile_h, n_iter=1,
                               batch_size=min(batch, layout.count), seed=seed)
    extra = {"SD upscale overlap": overlap, "SD upscale upscaler": upscaler}
    upscales = params.n_iter

    def run(context: ScriptContext) -> GenerationResult:
        # 1. Upscale once (the same picture for every batch count), to a multiple of 8.
        scaled = source if upscaler == "None" else context.upscale(source, upscaler=upscaler, factor=factor)
        if scaled.size != size:
            scaled = scaled.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        tiles = split_tiles(scaled, layout)
        combined = GenerationResult(params=params.model_copy(update={"seed": seed}))
        for n in range(upscales):
            # 2. Redraw the tiles, batch_size at a time.
            next_seed = (seed + n) % (MAX_SEED + 1)
            done: list[Image.Image] = []
            first: GenerationResult | None = None
            for index in range(batches):
                if context.interrupted:
                    break
                chunk = tiles[index * batch:(index + 1) * batch]
                request = tile_request.model_copy(update={"seed": next_seed, "batch_size": len(chunk)})
                result = context.generate(request, init_images=chunk, save=False, extra=extra)
                if context.skipped:
                    context.clear_skip()
                if len(result.images) != len(chunk):
                    break
                first = first or result
                done.extend(result.images)
                next_seed = (result.seeds[0] + 1) % (MAX_SEED + 1)
            if first is None or len(done) < len(tiles):
                break  # interrupted: a half-redrawn picture is not a result
            # 3. Blend the tiles together and save the picture.
            picture = combine_tiles(done, layout)
            infotext = context.infotext(first, index=0)
            path = context.save_image(picture, infotext=infotext, seed=first.seeds[0])
            if not combined.model_name:
                combined.model_name, combined.model_hash = first.model_name, first.model_hash
                combined.job_timestamp = first.job_timestamp
                combined.extra_generation_params = dict(first.extra_generation_params)
            combined.images.append(picture)
            combined.infotexts.append(infotext)
            combined.seeds.append(first.seeds[0])
            combined.subseeds.append(first.subseeds[0])
            combined.prompts.append(first.prompts[0])
            combined.negative_prompts.append(first.negative_prompts[0])
            if path:
                combined.paths.append(path)
        combined.interrupted = context.interrupted or len(combined.images) < upscales
        context.record_history(combined)
        return combined

    summary = (f"SD upscaling will process a total of {layout.count} images tiled as {len(layout.columns)}x"
               f"{len(layout.rows)} per upscale in a total of {batches * upscales} batches.")
    return PreparedScript(run=run, planned=(tile_request,), job_count=batches * upscales, summary=summary)


SCRIPT = ScriptSpec(
    title=TITLE,
    modes=("img2img",),
    args=ARGS,
    prepare=prepare,
    description="Upscales the picture with an upscaler, then redraws it tile by tile with img2img (tiles of "
                "the request's width x height) and blends the tiles.",
)

"""X/Y/Z plot: one request made once per combination of up to three axes' values, shown as a labelled grid.

A1111's behaviour and argument order (``script_args``)::

    [x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown, z_type, z_values,
     z_values_dropdown, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds,
     vary_seeds_x, vary_seeds_y, vary_seeds_z, margin_size, csv_mode]

* An axis type is A1111's axis number in the tab's list (:mod:`sdweb.services.scripts.axes`) or its
  label. Values are text in A1111's range syntax (:mod:`sdweb.services.scripts.ranges`); axes with
  choices (sampler, checkpoint ...) take the dropdown list, or the text when the list is empty or
  ``csv_mode`` is on.
* X values run along the columns, Y along the rows; each Z value gets its own X/Y sub-grid and the
  sub-grids stand side by side under their Z labels. Every cell's images are saved as usual, each with
  its own infotext; the grid is saved as ``xyz_grid-NNNN`` with ``Script``, ``X Type``, ``X Values``
  ... added to the first cell's infotext.
* Unless "Keep -1 for seeds" is set, a seed of -1 (in the request or a Seed / Var. seed axis) is drawn
  once before the grid, so every cell shares it; "Vary seeds for X/Y/Z" add the cell's index.
* The slowest axis to change (checkpoint, then VAE) is the outermost loop, so each model loads once.
* The number of images is checked before anything runs (setting ``script_max_images``), and so is
  the grid's size. Interrupting stops after the current cell; the grid shows the cells done (the
  others black) and every finished image is kept.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

from PIL import Image

from sdweb.images.labelled_grid import GridLabel, check_grid_size, labelled_grid
from sdweb.images.store import make_grid
from sdweb.params import MAX_SEED, GenerationParams, GenerationResult
from sdweb.scripting import (
    PreparedScript,
    ScriptArg,
    ScriptCall,
    ScriptContext,
    ScriptEnvironment,
    ScriptError,
    ScriptMode,
    ScriptSpec,
    XyzAxis,
)
from sdweb.services.scripts.arguments import flag, number, text_list
from sdweb.services.scripts.axes import format_value, with_values
from sdweb.services.scripts.ranges import RangeError, join_values, parse_values

logger = logging.getLogger(__name__)

TITLE = "X/Y/Z plot"
#: Default cap on the images one X/Y/Z plot (or any script) may make (setting ``script_max_images``).
DEFAULT_MAX_IMAGES = 400
_SEED_AXES = ("Seed", "Var. seed")


def _axis_labels(env: ScriptEnvironment, mode: ScriptMode) -> list[str]:
    return [axis.label for axis in env.xyz_axes(mode)]


def _arguments() -> tuple[ScriptArg, ...]:
    def axis_arg(name: str, label: str, default: int) -> ScriptArg:
        return ScriptArg(name, label, default, "dropdown",
                         choices=_axis_labels,
                         help="A1111's axis number in this tab's list, or the axis name")

    def values(name: str, label: str) -> ScriptArg:
        return ScriptArg(name, label, "", "textbox",
                         help='e.g. 1-5, 1-10 (+2), 1-10 [5], 0.5-1 (+0.1), a, "b, c"')

    def dropdown(name: str, label: str) -> ScriptArg:
        return ScriptArg(name, label, [], "multiselect",
                         help="values chosen from a list (sampler, checkpoint ...)")

    return (
        axis_arg("x_type", "X type", 1), values("x_values", "X values"),
        dropdown("x_values_dropdown", "X values"),
        axis_arg("y_type", "Y type", 0), values("y_values", "Y values"),
        dropdown("y_values_dropdown", "Y values"),
        axis_arg("z_type", "Z type", 0), values("z_values", "Z values"),
        dropdown("z_values_dropdown", "Z values"),
        ScriptArg("draw_legend", "Draw legend", True, "checkbox"),
        ScriptArg("include_lone_images", "Include Sub Images", False, "checkbox"),
        ScriptArg("include_sub_grids", "Include Sub Grids", False, "checkbox"),
        ScriptArg("no_fixed_seeds", "Keep -1 for seeds", False, "checkbox"),
        ScriptArg("vary_seeds_x", "Vary seeds for X", False, "checkbox"),
        ScriptArg("vary_seeds_y", "Vary seeds for Y", False, "checkbox"),
        ScriptArg("vary_seeds_z", "Vary seeds for Z", False, "checkbox"),
        ScriptArg("margin_size", "Grid margins (px)", 0, "slider", minimum=0, maximum=500, step=2),
        ScriptArg("csv_mode", "Use text inputs instead of dropdowns", False, "checkbox"),
    )


@dataclass(frozen=True)
class _Axis:
    """One axis as chosen: which, its values, and the text they came from (for the infotext)."""

    letter: str
    axis: XyzAxis
    values: list[Any]
    text: str

    @property
    def used(self) -> bool:
        return self.axis.label != "Nothing"

    def labels(self) -> list[str]:
        return [format_value(self.axis, value) for value in self.values]


def find_axis(value: Any, axes: Sequence[XyzAxis], *, arg: str) -> XyzAxis:
    """The axis ``value`` names: A1111's number in ``axes``, or a label (any case)."""
    if isinstance(value, bool):
        raise ScriptError(f"{arg}: an axis number or name, not {value!r}")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
        index = int(value)
        if not 0 <= index < len(axes):
            raise ScriptError(f"{arg}: axis number {index} is out of range 0-{len(axes) - 1}")
        axis = axes[index]
    elif isinstance(value, str):
        wanted = value.strip().lower()
        matches = [axis for axis in axes if axis.label.lower() == wanted]
        if not matches:
            raise ScriptError(f"{arg}: unknown axis {value!r}; known: {', '.join(a.label for a in axes)}")
        axis = matches[0]
    else:
        raise ScriptError(f"{arg}: an axis number or name, not {value!r}")
    if axis.unsupported:
        raise ScriptError(f"{arg}: the axis {axis.label!r} cannot be used: {axis.unsupported}")
    return axis


def _read_axis(call: ScriptCall, letter: str, axes: Sequence[XyzAxis], offset: int, csv_mode: bool) -> _Axis:
    args = call.args
    axis = find_axis(args[offset], axes, arg=f"script_args[{offset}] ({letter.lower()}_type)")
    if axis.label == "Nothing":
        return _Axis(letter, axis, [None], "")
    text = str(args[offset + 1] or "")
    dropdown = text_list(args[offset + 2], f"script_args[{offset + 2}] ({letter.lower()}_values_dropdown)")
    if axis.choices is not None and not csv_mode and dropdown:
        text = join_values(dropdown)
    try:
        values = parse_values(text, axis.value_type)
    except RangeError as exc:
        raise ScriptError(f"{letter} values ({axis.label}): {exc}") from None
    if not values:
        raise ScriptError(f"{letter} values: give at least one value for the axis {axis.label!r}")
    if axis.confirm is not None:
        values = list(axis.confirm(values, call.env))
    return _Axis(letter, axis, values, text)


def _fix_seeds(chosen: _Axis) -> _Axis:
    if chosen.axis.label not in _SEED_AXES:
        return chosen
    rng = random.SystemRandom()
    values = [rng.randint(0, MAX_SEED) if value in (None, "", -1) else value for value in chosen.values]
    return _Axis(chosen.letter, chosen.axis, values, chosen.text)


def _processing_order(x: _Axis, y: _Axis, z: _Axis) -> list[str]:
    """Axis letters from the outermost loop in, A1111's rule: the costliest axis changes least often."""
    cost = {"x": x.axis.cost, "y": y.axis.cost, "z": z.axis.cost}
    if cost["x"] > cost["y"] and cost["x"] > cost["z"]:
        return ["x", "y", "z"] if cost["y"] > cost["z"] else ["x", "z", "y"]
    if cost["y"] > cost["x"] and cost["y"] > cost["z"]:
        return ["y", "x", "z"] if cost["x"] > cost["z"] else ["y", "z", "x"]
    if cost["z"] > cost["x"] and cost["z"] > cost["y"]:
        return ["z", "x", "y"] if cost["x"] > cost["y"] else ["z", "y", "x"]
    return ["z", "y", "x"]


def prepare(call: ScriptCall) -> PreparedScript:
    # 1. The axes and their values, checked (unknown sampler, bad range ...) before anything runs.
    axes = call.env.xyz_axes(call.mode)
    args = call.args
    csv_mode = flag(args[17], "script_args[17] (csv_mode)")
    keep_random = flag(args[12], "script_args[12] (no_fixed_seeds)")
    draw_legend = flag(args[9], "script_args[9] (draw_legend)")
    include_lone = flag(args[10], "script_args[10] (include_lone_images)")
    include_sub_grids = flag(args[11], "script_args[11] (include_sub_grids)")
    vary = [flag(args[13 + i], f"script_args[{13 + i}] (vary_seeds_{letter})")
            for i, letter in enumerate("xyz")]
    margin = int(number(args[16], "script_args[16] (margin_size)", minimum=0, maximum=500))
    x, y, z = (_read_axis(call, letter, axes, offset, csv_mode)
               for letter, offset in (("X", 0), ("Y", 3), ("Z", 6)))

    # 2. Seeds: drawn once for the whole grid unless "Keep -1 for seeds".
    base = call.params
    if not keep_random:
        if base.seed == -1:
            base = base.model_copy(update={"seed": random.SystemRandom().randint(0, MAX_SEED)})
        x, y, z = _fix_seeds(x), _fix_seeds(y), _fix_seeds(z)

    # 3. Every cell's request (x first, then y, then z applied, as A1111).
    cells: dict[tuple[int, int, int], GenerationParams] = {}
    combos = product(enumerate(z.values), enumerate(y.values), enumerate(x.values))
    for (iz, vz), (iy, vy), (ix, vx) in combos:
        params = x.axis.apply(base, vx, x.values)
        params = y.axis.apply(params, vy, y.values)
        params = z.axis.apply(params, vz, z.values)
        offset = (ix if vary[0] else 0) + (iy * (len(x.values) if vary[0] else 1) if vary[1] else 0)
        if vary[2]:
            offset += iz * (len(x.values) if vary[0] else 1) * (len(y.values) if vary[1] else 1)
        if offset and params.seed != -1:
            params = with_values(params, "Vary seeds", seed=(params.seed + offset) % (MAX_SEED + 1))
        cells[(ix, iy, iz)] = params

    # 4. Size checks: images in all, and the grid's pixels.
    per_cell = base.batch_size * base.n_iter
    total_images = len(cells) * per_cell
    limit = int(call.env.option("script_max_images") or DEFAULT_MAX_IMAGES)
    if total_images > limit:
        raise ScriptError(f"X/Y/Z plot would make {total_images} images ({len(x.values)}x{len(y.values)}x"
                          f"{len(z.values)} cells x {per_cell} per cell); at most {limit} are allowed "
                          f"(setting script_max_images)")
    largest = max(cells.values(), key=lambda p: p.width * p.height)
    try:
        check_grid_size((largest.width, largest.height), len(cells))
    except ValueError as exc:
        raise ScriptError(f"X/Y/Z plot: {exc}") from None

    # 5. The order cells run in (costly axes outermost), and what to show.
    order = _processing_order(x, y, z)
    sizes = {"x": len(x.values), "y": len(y.values), "z": len(z.values)}

    def key(cell: tuple[int, int, int]) -> tuple[int, ...]:
        index = {"x": cell[0], "y": cell[1], "z": cell[2]}
        return tuple(index[letter] for letter in order)

    run_order = sorted(cells, key=key)
    grids = len(z.values)
    steps = sum(p.steps * p.n_iter for p in cells.values())
    plural = "s" if grids > 1 else ""
    per = f"; {per_cell} images per cell" if per_cell > 1 else ""
    summary = (f"X/Y/Z plot will create {total_images} images on {grids} {sizes['x']}x{sizes['y']} "
               f"grid{plural}{per}. (Total steps to process: {steps})")
    plan = _Plan(call=call, base=base, x=x, y=y, z=z, cells=cells, run_order=run_order,
                 draw_legend=draw_legend, include_lone=include_lone, include_sub_grids=include_sub_grids,
                 keep_random=keep_random, margin=margin)
    return PreparedScript(run=plan.run, planned=tuple(cells[cell] for cell in run_order),
                          job_count=sum(p.n_iter for p in cells.values()), summary=summary)


@dataclass(frozen=True)
class _Plan:
    call: ScriptCall
    base: GenerationParams
    x: _Axis
    y: _Axis
    z: _Axis
    cells: dict[tuple[int, int, int], GenerationParams]
    run_order: list[tuple[int, int, int]]
    draw_legend: bool
    include_lone: bool
    include_sub_grids: bool
    keep_random: bool
    margin: int

    def run(self, context: ScriptContext) -> GenerationResult:
        # 1. Every cell, costliest axis outermost; stop early on interrupt.
        results: dict[tuple[int, int, int], GenerationResult] = {}
        for cell in self.run_order:
            if context.interrupted:
                break
            result = context.generate(self.cells[cell], init_images=self.call.init_images,
                                      mask=self.call.mask)
            if context.skipped:
                context.clear_skip()
            if result.images:
                results[cell] = result
        if not results:
            return GenerationResult(params=self.base, interrupted=True)
        first = results[min(results, key=lambda c: (c[2], c[1], c[0]))]

        # 2. Grids: one X/Y grid per Z value, side by side under the Z labels.
        nx, ny, nz = len(self.x.values), len(self.y.values), len(self.z.values)
        size = first.images[0].size
        picture = {cell: make_grid(result.images) if len(result.images) > 1 else result.images[0]
                   for cell, result in results.items()}
        sub_grids = []
        for iz in range(nz):
            images = [picture.get((ix, iy, iz)) or Image.new("RGB", size)
                      for iy in range(ny) for ix in range(nx)]
            sub_grids.append(labelled_grid(
                images, rows=ny, margin=self.margin,
                column_labels=[[GridLabel(text)] for text in self.x.labels()] if self.draw_legend else None,
                row_labels=[[GridLabel(text)] for text in self.y.labels()] if self.draw_legend else None))
        main = sub_grids[0]
        if nz > 1:
            z_labels = [[GridLabel(text)] for text in self.z.labels()] if self.draw_legend else None
            main = labelled_grid(sub_grids, rows=1, margin=self.margin, column_labels=z_labels)

        # 3. Infotexts (A1111's keys), saving, and the combined result.
        infotexts = [self._grid_infotext(context, first, with_z=True)]
        images = [main]
        grid_path = context.save_grid(main, infotext=infotexts[0], basename="xyz_grid")
        if self.include_sub_grids and nz > 1:
            sub_info = self._grid_infotext(context, first, with_z=False)
            for grid in sub_grids:
                images.append(grid)
                infotexts.append(sub_info)
                context.save_grid(grid, infotext=sub_info, basename="xyz_grid")
        combined = GenerationResult(
            params=self.base, model_name=first.model_name, model_hash=first.model_hash,
            vae_name=first.vae_name, vae_hash=first.vae_hash, clip_skip=first.clip_skip,
            job_timestamp=first.job_timestamp,
            interrupted=context.interrupted or len(results) < len(self.cells),
            extra_generation_params=self._extra(with_z=True), grid_path=grid_path)
        combined.images.extend(images)
        combined.infotexts.extend(infotexts)
        for _ in images:
            combined.seeds.append(first.seeds[0])
            combined.subseeds.append(first.subseeds[0])
            combined.prompts.append(first.prompts[0])
            combined.negative_prompts.append(first.negative_prompts[0])
        ordered = [results[c] for c in sorted(results, key=lambda c: (c[2], c[1], c[0]))]
        for result in ordered:
            combined.paths.extend(result.paths)
            if self.include_lone:
                combined.images.extend(result.images)
                combined.infotexts.extend(result.infotexts)
                combined.seeds.extend(result.seeds)
                combined.subseeds.extend(result.subseeds)
                combined.prompts.extend(result.prompts)
                combined.negative_prompts.extend(result.negative_prompts)
        context.record_history(combined)
        return combined

    def _extra(self, *, with_z: bool) -> dict[str, Any]:
        extra: dict[str, Any] = {"Script": TITLE}
        for chosen in (self.x, self.y, self.z) if with_z else (self.x, self.y):
            if not chosen.used:
                continue
            extra[f"{chosen.letter} Type"] = chosen.axis.label
            extra[f"{chosen.letter} Values"] = chosen.text
            if chosen.axis.label in _SEED_AXES and not self.keep_random:
                extra[f"Fixed {chosen.letter} Values"] = ", ".join(str(value) for value in chosen.values)
        return extra

    def _grid_infotext(self, context: ScriptContext, first: GenerationResult, *, with_z: bool) -> str:
        return context.infotext(first, index=0, extra=self._extra(with_z=with_z))


SCRIPT = ScriptSpec(
    title=TITLE,
    modes=("txt2img", "img2img"),
    args=_arguments(),
    prepare=prepare,
    description="Makes the request once per combination of up to three axes' values (steps, CFG, sampler, "
                "checkpoint, prompt S/R ...) and shows the images as a grid with the values as labels.",
)

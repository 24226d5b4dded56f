"""X/Y/Z plot through the script service with the real wiring and a fake engine (flat colour per seed and
prompt): grid layout and labels from pixels, cells saved with infotexts, seeds, checkpoint order, limits,
interrupt, and axes and scripts that extensions add."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sdweb.params import GenerationParams, Img2ImgParams
from sdweb.plugin_api import PreparedScript, ScriptArg, ScriptSpec, XyzAxis, hookimpl
from sdweb.scripting import ScriptError
from sdweb.services.generation import GenerationError
from tests.fakes import FakeEngine, colour_for
from tests.services.scripts_support import box_of, checkpoint_file, has_ink, scripted, start_services

__all__ = ["checkpoint_file", "scripted"]  # fixtures


def base(**changes: Any) -> GenerationParams:
    values: dict[str, Any] = {"prompt": "a cat and another cat", "steps": 2, "width": 64, "height": 64,
                              "seed": 7}
    values.update(changes)
    return GenerationParams(**values)


def xyz(x: tuple[Any, str], y: tuple[Any, str] = (0, ""), z: tuple[Any, str] = (0, ""),
        **flags: Any) -> list[Any]:
    """A1111's 18 positional X/Y/Z arguments."""
    args: list[Any] = [x[0], x[1], [], y[0], y[1], [], z[0], z[1], [], True, False, False, False, False,
                       False, False, 0, False]
    names = ["draw_legend", "include_lone_images", "include_sub_grids", "no_fixed_seeds", "vary_seeds_x",
             "vary_seeds_y", "vary_seeds_z", "margin_size", "csv_mode"]
    for name, value in flags.items():
        args[9 + names.index(name)] = value
    return args


def test_a_grid_of_seeds_by_prompt_replacements(scripted) -> None:
    services, engine = scripted
    result = services.scripts.run("x/y/z plot", xyz((1, "1, 2, 3"), (7, "cat, dog")), base(), source="test")

    # Prompt S/R replaces every occurrence, in the order of the values; seeds along X.
    prompts = [call.prompt for call in engine.calls]
    assert prompts == ["a cat and another cat"] * 3 + ["a dog and another dog"] * 3
    assert [call.seed for call in engine.calls] == [1, 2, 3, 1, 2, 3]
    # The grid: X values are columns, Y values rows, each cell the image of its seed and prompt.
    grid = result.images[0]
    assert len(result.images) == 1
    boxes = {(seed, prompt): box_of(grid, colour_for(seed, f"a {prompt} and another {prompt}"))
             for seed in (1, 2, 3) for prompt in ("cat", "dog")}
    assert all(box is not None and (box[2] - box[0], box[3] - box[1]) == (64, 64) for box in boxes.values())
    lefts = [boxes[(seed, "cat")][0] for seed in (1, 2, 3)]
    assert lefts == sorted(lefts) and lefts[1] - lefts[0] == 64
    assert boxes[(1, "dog")][1] == boxes[(1, "cat")][1] + 64
    left, top = boxes[(1, "cat")][:2]
    assert left > 0 and top > 0 and grid.size == (left + 3 * 64, top + 2 * 64)
    # Labels: above every column and left of every row.
    assert all(has_ink(grid, (lx, 0, lx + 64, top)) for lx in lefts)
    assert all(has_ink(grid, (0, boxes[(1, p)][1], left, boxes[(1, p)][1] + 64)) for p in ("cat", "dog"))

    # Every cell saved on its own with its infotext; the grid with the script's keys.
    assert len(result.paths) == 6
    for path in result.paths:
        with Image.open(path) as image:
            info = image.info["parameters"]
        assert "Seed: " in info and "Script" not in info
    assert result.grid_path and Path(result.grid_path).name.startswith("xyz_grid-")
    with Image.open(result.grid_path) as saved:
        info = saved.info["parameters"]
        assert saved.size == grid.size
    assert "Script: X/Y/Z plot" in info and "X Type: Seed" in info and 'X Values: "1, 2, 3"' in info
    assert "Y Type: Prompt S/R" in info and 'Y Values: "cat, dog"' in info
    assert 'Fixed X Values: "1, 2, 3"' in info
    assert result.history_id is not None


def test_legend_off_and_margins(scripted) -> None:
    services, _ = scripted
    plain = services.scripts.run("X/Y/Z plot", xyz((1, "1-2"), draw_legend=False), base()).images[0]
    assert plain.size == (128, 64)
    spaced = services.scripts.run("X/Y/Z plot", xyz((1, "1-2"), draw_legend=False, margin_size=10), base())
    assert spaced.images[0].size == (138, 64)


def test_z_values_make_sub_grids_side_by_side(scripted) -> None:
    services, _ = scripted
    result = services.scripts.run("x/y/z plot", xyz(("Prompt S/R", "cat, dog"), z=("Seed", "5, 6"),
                                                    include_sub_grids=True, include_lone_images=True), base())
    main, first, second = result.images[:3]
    assert len(result.images) == 3 + 4 and len(result.infotexts) == len(result.images)
    assert first.size == second.size and main.width == 2 * first.width
    cat, dog = "a cat and another cat", "a dog and another dog"
    for seed, grid in ((5, first), (6, second)):
        assert box_of(grid, colour_for(seed, cat))[0] < box_of(grid, colour_for(seed, dog))[0]
    assert box_of(main, colour_for(5, dog))[0] < box_of(main, colour_for(6, cat))[0]
    assert "Z Type: Seed" in result.infotexts[0] and "Z Type" not in result.infotexts[1]
    # Sub-images come after the grids, each with its own seed in its infotext.
    assert [info.count("Seed: 5") for info in result.infotexts[3:]] == [1, 1, 0, 0]


def test_random_seeds_are_fixed_once_unless_kept(scripted) -> None:
    services, engine = scripted
    services.scripts.run("x/y/z plot", xyz((4, "1, 2")), base(seed=-1))
    fixed = [call.seed for call in engine.calls]
    assert fixed[0] == fixed[1] != -1
    engine.calls.clear()
    services.scripts.run("x/y/z plot", xyz((4, "1, 2"), no_fixed_seeds=True), base(seed=-1))
    kept = [call.seed for call in engine.calls]
    assert kept[0] != kept[1]  # each cell drew its own
    engine.calls.clear()
    result = services.scripts.run("x/y/z plot", xyz((1, "-1, -1")), base())
    seeds = [call.seed for call in engine.calls]
    assert -1 not in seeds and f'Fixed X Values: "{seeds[0]}, {seeds[1]}"' in result.infotexts[0]


def test_vary_seeds_adds_the_cell_index(scripted) -> None:
    services, engine = scripted
    services.scripts.run("x/y/z plot", xyz((4, "1-3"), vary_seeds_x=True), base(seed=100))
    assert [call.seed for call in engine.calls] == [100, 101, 102]


def test_each_checkpoint_loads_once_even_when_it_is_the_inner_axis(tmp_path: Path,
                                                                   checkpoint_file: Path) -> None:
    names = ("model-a.safetensors", "model-b.safetensors")
    services, engine = start_services(tmp_path, checkpoint_file, names=names)
    try:
        titles = [info.title for info in services.models.list_checkpoints()]
        result = services.scripts.run("x/y/z plot", xyz((11, "model-a, model-b"), (1, "1, 2, 3")), base())
        used = [call.checkpoint for call in engine.calls]
        assert used == [titles[0]] * 3 + [titles[1]] * 3  # A's cells, then B's: one switch
        assert [call.seed for call in engine.calls] == [1, 2, 3, 1, 2, 3]
        grid = result.images[0]
        colours = [colour_for(seed, base().prompt) for seed in (1, 2, 3)]
        tops = [box_of(grid, colour)[1] for colour in colours]
        assert tops == sorted(tops)  # the grid still shows Y (seeds) as rows
        assert "X Type: Checkpoint name" in result.infotexts[0]
    finally:
        services.worker.close()


def test_values_from_the_dropdown_and_a1111_axis_numbers(scripted) -> None:
    services, engine = scripted
    args = xyz((9, ""), y=(17, ""))
    args[2] = ["Euler", "DPM++ 2M"]
    args[5] = ["Karras"]
    services.scripts.run("x/y/z plot", args, base())
    assert [(call.sampler_name, call.scheduler) for call in engine.calls] == [("Euler", "Karras"),
                                                                              ("DPM++ 2M", "Karras")]
    axes = [axis.label for axis in services.scripts.environment().xyz_axes("txt2img")]
    assert axes[:12] == ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale",
                         "Prompt S/R", "Prompt order", "Sampler", "Hires sampler", "Checkpoint name"]
    assert axes[17] == "Schedule type" and axes[-1] == "Size"
    img2img = [axis.label for axis in services.scripts.environment().xyz_axes("img2img")]
    assert img2img[5:11] == ["CFG Scale", "Image CFG Scale", "Prompt S/R", "Prompt order", "Sampler",
                             "Checkpoint name"]


def test_prompt_order_size_styles_and_more_axes(scripted) -> None:
    services, engine = scripted
    services.styles.save(__import__("sdweb.prompts.styles", fromlist=["PromptStyle"]).PromptStyle(
        "vivid", "{prompt}, vivid colours", ""))
    services.scripts.run("x/y/z plot", xyz(("Prompt order", "red, blue"), ("Size", "64x128, 128x64")),
                         base(prompt="a red and blue ball"))
    assert [(c.prompt, c.width, c.height) for c in engine.calls] == [
        ("a red and blue ball", 64, 128), ("a blue and red ball", 64, 128),
        ("a red and blue ball", 128, 64), ("a blue and red ball", 128, 64)]
    engine.calls.clear()
    services.scripts.run("x/y/z plot", xyz(("Styles", "vivid"), ("CFG Scale", "3-4 [2]"), ("Clip skip", "2")),
                         base())
    assert [(c.prompt, c.cfg_scale, c.clip_skip) for c in engine.calls] == [
        ("a cat and another cat, vivid colours", 3.0, 2), ("a cat and another cat, vivid colours", 4.0, 2)]
    engine.calls.clear()
    # A1111's UniPC order axis: the setting uni_pc_order per cell
    services.scripts.run("x/y/z plot", xyz(("UniPC Order", "1, 3")), base(sampler_name="UniPC"))
    assert [c.uni_pc_order for c in engine.calls] == [1, 3]
    engine.calls.clear()
    # A1111's sampler parameter and CFG skipping axes (axis 13 is Sigma Churn, by number as A1111's clients)
    services.scripts.run("x/y/z plot", xyz((13, "0, 2.5"), ("Skip Early CFG", "0.1"),
                                           ("Negative Guidance minimum sigma", "1.5")),
                         base(sampler_name="Euler"))
    assert [(c.s_churn, c.skip_early_cond, c.s_min_uncond) for c in engine.calls] == [
        (0.0, 0.1, 1.5), (2.5, 0.1, 1.5)]
    engine.calls.clear()
    services.scripts.run("x/y/z plot", xyz(("Sigma min", "0.5"), ("Sigma max", "10"), ("Sigma noise", "0.9")),
                         base(sampler_name="Heun"))
    assert [(c.s_tmin, c.s_tmax, c.s_noise) for c in engine.calls] == [(0.5, 10.0, 0.9)]


@pytest.mark.parametrize(("args", "words"), [
    (xyz(("Token merging ratio", "0.5")), "'Token merging ratio' cannot be used"),
    (xyz(("Sigma Churn", "-1")), "Sigma Churn -1"),
    (xyz(("Sampler", "Euler, Nope")), "Sampler: sampler 'Nope' not found"),
    (xyz(("Steps", "1-x")), "X values (Steps): '1-x' is not a whole number"),
    (xyz(("Steps", "20000")), "Steps 20000: steps: Input should be less than or equal to 10000"),
    (xyz(("Prompt S/R", "horse, dog")), "Prompt S/R did not find 'horse'"),
    (xyz(("Checkpoint name", "missing-model")), "Checkpoint name: checkpoint 'missing-model' not found"),
    (xyz(("VAE", "nope.pt")), "VAE: VAE 'nope.pt' not found"),
    (xyz(("Styles", "nope")), "style 'nope' not found"),
    (xyz(("Size", "64 by 64")), "WIDTHxHEIGHT"),
    (xyz(("Size", "68x64")), "Size 68x64: width: must be a multiple of 8"),
    (xyz((99, "1")), "axis number 99 is out of range"),
    (xyz(("Wobble", "1")), "unknown axis 'Wobble'"),
    (xyz(("Steps", "")), "give at least one value"),
    (xyz(("RNG source", "Mersenne")), "'Mersenne' is not one of CPU, GPU, NV"),
    (xyz(("Steps", "1")) + [1], "takes at most 18 values"),
    (xyz(("Steps", "1"), margin_size="wide"), "script_args[16] (margin_size): a number"),
])
def test_bad_arguments_are_named_and_nothing_runs(scripted, args: list[Any], words: str) -> None:
    services, engine = scripted
    with pytest.raises((ScriptError, GenerationError)) as info:
        services.scripts.submit("X/Y/Z plot", args, base())
    assert words in str(info.value), str(info.value)
    assert engine.calls == []


def test_unknown_script_names_the_known_ones(scripted) -> None:
    services, _ = scripted
    with pytest.raises(ScriptError, match="script 'sd upscail' not found; txt2img scripts: Prompt matrix"):
        services.scripts.submit("sd upscail", [], base())
    with pytest.raises(ScriptError, match="'SD upscale' is not available in txt2img"):
        services.scripts.submit("SD upscale", [], base())


def test_too_many_images_are_refused_before_anything_runs(scripted) -> None:
    services, engine = scripted
    services.options.update({"script_max_images": 5})
    with pytest.raises(ScriptError, match=r"would make 6 images \(3x2x1 cells x 1 per cell\); at most 5"):
        services.scripts.submit("x/y/z plot", xyz((1, "1-3"), (6, "5, 7")), base())
    with pytest.raises(ScriptError, match="would make 12 images"):
        services.scripts.submit("x/y/z plot", xyz((1, "1-3")), base(batch_size=2, n_iter=2))
    assert engine.calls == []


def test_interrupt_keeps_the_cells_done(tmp_path: Path, checkpoint_file: Path) -> None:
    services, engine = start_services(tmp_path, checkpoint_file, engine=FakeEngine(step_delay=0.03))
    try:
        job = services.scripts.submit("x/y/z plot", xyz((1, "1-6")), base(steps=3))
        while len(engine.calls) < 3:
            time.sleep(0.01)
        assert job.progress.job_count == 6
        services.generation.interrupt(job.id)
        result = job.wait(30)
        assert result.interrupted and job.progress.state == "interrupted"
        done = len(result.paths)
        assert 2 <= done < 6 and all(Path(path).exists() for path in result.paths)
        grid = result.images[0]
        for seed in range(1, 7):
            found = box_of(grid, colour_for(seed, base().prompt))
            assert (found is not None) == (seed <= done)  # the cells not made are left black
        assert result.grid_path and Path(result.grid_path).exists()
    finally:
        services.worker.close()


def test_img2img_cells_use_the_init_image(scripted) -> None:
    services, engine = scripted
    init = Image.new("RGB", (64, 64), (255, 0, 0))
    params = Img2ImgParams(prompt="a cat", steps=2, width=64, height=64, seed=3)
    result = services.scripts.run("x/y/z plot", xyz(("Denoising", "0, 1")), params, init_images=[init])
    assert [call.denoising_strength for call in engine.calls] == [0.0, 1.0]
    assert box_of(result.images[0], (255, 0, 0)) is not None  # strength 0 gives the init image back
    assert "X Type: Denoising" in result.infotexts[0]


class WidthAxisExtension:
    """An extension adding an axis and a script through the same hooks the built-ins use."""

    @hookimpl
    def register_xyz_axes(self) -> list[XyzAxis]:
        def apply(params: Any, value: Any, _values: Any) -> Any:
            return params.model_copy(update={"width": value})

        return [XyzAxis("Width (ext)", "int", apply)]

    @hookimpl
    def register_scripts(self) -> list[ScriptSpec]:
        def prepare(call: Any) -> PreparedScript:
            twice = [call.params, call.params.model_copy(update={"seed": call.params.seed + 1})]

            def run(context: Any) -> Any:
                results = [context.generate(params) for params in twice]
                results[0].images += results[1].images
                return results[0]

            return PreparedScript(run=run, planned=tuple(twice), job_count=2)

        return [ScriptSpec("Twice", ("txt2img",), (ScriptArg("unused", "Unused", 0),), prepare)]


def test_extensions_add_axes_and_scripts_through_hooks(scripted) -> None:
    services, engine = scripted
    services.plugins.register(WidthAxisExtension(), "width-axis")
    labels = [axis.label for axis in services.scripts.environment().xyz_axes("txt2img")]
    assert labels[-1] == "Width (ext)" and labels.index("Width (ext)") > labels.index("Size")
    services.scripts.run("x/y/z plot", xyz((len(labels) - 1, "64, 128")), base())
    assert [call.width for call in engine.calls] == [64, 128]
    assert "Twice" in [spec.title for spec in services.scripts.scripts("txt2img")]
    assert len(services.scripts.run("twice", [], base()).images) == 2
    with pytest.raises(ScriptError, match="width: must be a multiple of 8"):
        services.scripts.submit("x/y/z plot", xyz((len(labels) - 1, "68")), base())

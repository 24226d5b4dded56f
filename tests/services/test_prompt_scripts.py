"""Prompt matrix and prompts from file through the script service (real wiring, fake engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sdweb.images.labelled_grid import INACTIVE_COLOUR
from sdweb.params import GenerationParams
from sdweb.scripting import ScriptError
from sdweb.services.generation import GenerationError
from sdweb.services.scripts.prompts_from_file import parse_line
from tests.fakes import colour_for
from tests.services.scripts_support import box_of, checkpoint_file, scripted

__all__ = ["checkpoint_file", "scripted"]  # fixtures


def base(**changes: Any) -> GenerationParams:
    values: dict[str, Any] = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 11}
    values.update(changes)
    return GenerationParams(**values)


# -- prompt matrix -------------------------------------------------------------------------------

def test_prompt_matrix_makes_every_combination_as_a_labelled_grid(scripted) -> None:
    services, engine = scripted
    result = services.scripts.run("Prompt matrix", [], base(prompt="a cat | in a hat | on a mat"))
    prompts = ["a cat", "a cat, in a hat", "a cat, on a mat", "a cat, in a hat, on a mat"]
    assert [call.prompt for call in engine.calls] == prompts
    assert {call.seed for call in engine.calls} == {11}
    grid, *images = result.images
    assert len(images) == 4 and result.prompts[1:] == prompts
    # Columns: without / with "in a hat"; rows: without / with "on a mat".
    boxes = [box_of(grid, colour_for(11, prompt)) for prompt in prompts]
    assert boxes[0][0] < boxes[1][0] and boxes[0][1] == boxes[1][1]
    assert boxes[2][0] == boxes[0][0] and boxes[2][1] == boxes[0][1] + 64
    # The part a column leaves out is grey (struck through); the part it has is black.
    top = boxes[0][1]
    without = np.asarray(grid.crop((boxes[0][0], 0, boxes[0][2], top)))
    with_hat = np.asarray(grid.crop((boxes[1][0], 0, boxes[1][2], top)))
    assert np.all(without == INACTIVE_COLOUR, axis=-1).any() and not (without.max(axis=-1) < 60).any()
    assert (with_hat.max(axis=-1) < 60).any()
    assert result.grid_path and Path(result.grid_path).name.startswith("prompt_matrix-")
    assert len(result.paths) == 4


def test_prompt_matrix_options(scripted) -> None:
    services, engine = scripted
    services.scripts.run("prompt matrix", [True, True, "negative", "space", 0],
                         base(negative_prompt="blurry | dark"))
    made = [(call.negative_prompt, call.seed) for call in engine.calls]
    assert made == [("blurry", 11), ("dark blurry", 12)]


def test_prompt_matrix_needs_parts(scripted) -> None:
    services, engine = scripted
    with pytest.raises(ScriptError, match="the positive prompt has no '\\|'"):
        services.scripts.submit("Prompt matrix", [], base())
    with pytest.raises(ScriptError, match="prompt_type.*one of positive, negative"):
        services.scripts.submit("Prompt matrix", [False, False, "sideways"], base(prompt="a | b"))
    assert engine.calls == []


# -- prompts from file ---------------------------------------------------------------------------

LINES = """a red fox

--prompt "a blue whale" --negative_prompt blurry ugly --steps 7 --seed 3 --cfg_scale 4.5 --width 128 \
--height 64
--prompt a green frog --sampler_name "DPM++ 2M" --scheduler Karras --n_iter 2 --batch_size 2 --seed 40
--prompt 'a quiet "owl"' --subseed 9 --subseed_strength 0.5 --tiling true --styles vivid --sampler_index 0
"""


def test_each_line_is_a_request_with_its_options(scripted) -> None:
    services, engine = scripted
    from sdweb.prompts.styles import PromptStyle

    services.styles.save(PromptStyle("vivid", "{prompt}, vivid", ""))
    result = services.scripts.run("prompts from file or textbox", [False, False, "start", LINES],
                                  base(prompt=""))
    fox, whale, frog, owl = engine.calls
    assert (fox.prompt, fox.seed, fox.steps) == ("a red fox", 11, 2)
    assert (whale.prompt, whale.negative_prompt, whale.steps, whale.seed, whale.cfg_scale) == (
        "a blue whale", "blurry ugly", 7, 3, 4.5)
    assert (whale.width, whale.height) == (128, 64)
    assert (frog.sampler_name, frog.scheduler, frog.n_iter, frog.batch_size) == ("DPM++ 2M", "Karras", 2, 2)
    assert owl.prompt == 'a quiet "owl", vivid' and owl.subseed == 9 and owl.subseed_strength == 0.5
    assert owl.tiling and owl.sampler_name == services.samplers().names()[0]
    assert len(result.images) == 1 + 1 + 4 + 1 and len(result.paths) == 7
    assert result.seeds[2:6] == [40, 41, 42, 43]
    with Image.open(result.paths[1]) as image:
        info = image.info["parameters"]
    assert info.startswith("a blue whale\nNegative prompt: blurry ugly\nSteps: 7") and "Seed: 3," in info


def test_line_prompts_join_the_tab_prompt_and_seeds_iterate(scripted) -> None:
    services, engine = scripted
    services.scripts.run("Prompts from file or textbox", [True, False, "end", "a fox\na dog"],
                         base(prompt="photo of", negative_prompt="", batch_size=2))
    made = [(call.prompt, call.seed) for call in engine.calls]
    assert made == [("photo of a fox", 11), ("photo of a dog", 13)]
    engine.calls.clear()
    services.scripts.run("Prompts from file or textbox", [False, True, "start", "a fox\na dog"],
                         base(prompt="photo", seed=-1))
    first, second = engine.calls
    assert first.prompt == "a fox photo" and first.seed == second.seed != -1


@pytest.mark.parametrize(("text", "words"), [
    ("a fox\n--stepz 3", "line 2: unknown option --stepz"),
    ("--prompt x --steps ten", "line 1: --steps 'ten': must be a whole number"),
    ("--prompt x --steps 20000", "line 1: steps: Input should be less than or equal to 10000"),
    ("--prompt x --outpath_samples /tmp", "line 1: --outpath_samples is not supported"),
    ("--prompt x --sampler_name Nope", "line 1: sampler 'Nope' not found"),
    ('--prompt "unclosed', "check the quotes"),
    ("--prompt x --steps", "--steps needs a value"),
    ("--prompt x --sd_model missing", "line 1: checkpoint 'missing' not found"),
    ("   \n\n", "give at least one prompt"),
])
def test_bad_lines_are_named_before_anything_runs(scripted, text: str, words: str) -> None:
    services, engine = scripted
    with pytest.raises((ScriptError, GenerationError)) as info:
        services.scripts.submit("prompts from file or textbox", [False, False, "start", text], base())
    assert words in str(info.value)
    assert engine.calls == []


def test_plain_lines_and_options_are_read_as_a1111_does() -> None:
    assert parse_line("a cat, in a hat") == {"prompt": "a cat, in a hat"}
    assert parse_line("--prompt a cat --steps 3") == {"prompt": "a cat", "steps": 3}
    assert parse_line("--negative_prompt 'bad hands' --cfg_scale 7") == {"negative_prompt": "bad hands",
                                                                         "cfg_scale": 7.0}

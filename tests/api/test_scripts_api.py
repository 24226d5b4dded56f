"""A1111's scripts through POST /txt2img and /img2img (script_name + positional script_args), with the
fake engine (a flat colour per seed and prompt): X/Y/Z plot, prompt matrix, prompts from file, loopback,
SD upscale; /scripts and /script-info; bad names and arguments as 4xx naming them; restore_faces."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.api.conftest import ApiServer
from tests.api.test_img2img import b64, decode
from tests.fakes import colour_for

SMALL = {"steps": 2, "width": 64, "height": 64, "seed": 5, "prompt": "a cat on a cat"}


def xyz_args(x: tuple[Any, str], y: tuple[Any, str] = (0, ""), **flags: Any) -> list[Any]:
    args: list[Any] = [x[0], x[1], [], y[0], y[1], [], 0, "", [], True, False, False, False, False, False,
                       False, 0, False]
    for index, value in flags.items():
        args[int(index.removeprefix("at"))] = value
    return args


def run(api: ApiServer, route: str, script: str, args: list[Any], **fields: Any) -> dict[str, Any]:
    response = api.post(route, json={**SMALL, "script_name": script, "script_args": args, **fields})
    assert response.status_code == 200, response.text
    body = response.json()
    body["info"] = json.loads(body["info"])
    return body


def where(image: Image.Image, colour: tuple[int, int, int]) -> tuple[int, int] | None:
    pixels = np.asarray(image.convert("RGB"))
    ys, xs = np.nonzero(np.all(pixels == colour, axis=-1))
    return (int(xs.min()), int(ys.min())) if len(xs) else None


def test_xyz_plot_answers_a_labelled_grid_with_a1111_axis_numbers(api: ApiServer) -> None:
    body = run(api, "txt2img", "X/Y/Z plot", xyz_args((1, "1, 2, 3"), (7, "cat, dog")))
    (grid,) = (decode(image) for image in body["images"])
    cells = {(seed, animal): where(grid, colour_for(seed, f"a {animal} on a {animal}"))
             for seed in (1, 2, 3) for animal in ("cat", "dog")}
    assert all(cell is not None for cell in cells.values())
    assert cells[(1, "cat")][0] < cells[(2, "cat")][0] < cells[(3, "cat")][0]  # X: seeds, columns
    assert cells[(1, "dog")][1] == cells[(1, "cat")][1] + 64  # Y: prompt S/R, rows
    left, top = cells[(1, "cat")]
    assert left > 0 and top > 0 and grid.size == (left + 3 * 64, top + 2 * 64)  # legends on top / left
    assert sorted(call.prompt for call in api.engine.calls) == ["a cat on a cat"] * 3 + ["a dog on a dog"] * 3
    info = body["info"]
    assert "Script: X/Y/Z plot" in info["infotexts"][0] and "X Type: Seed" in info["infotexts"][0]
    assert grid.info["parameters"] == info["infotexts"][0]


def test_xyz_plot_sub_images_follow_the_grid(api: ApiServer) -> None:
    body = run(api, "txt2img", "x/y/z plot", xyz_args((4, "1-2"), at10=True))
    assert len(body["images"]) == 3 and len(body["info"]["infotexts"]) == 3
    assert [call.steps for call in api.engine.calls] == [1, 2]


def test_prompt_matrix(api: ApiServer) -> None:
    body = run(api, "txt2img", "prompt matrix", [], prompt="a fox | red | small")
    assert len(body["images"]) == 1 + 4
    assert [call.prompt for call in api.engine.calls] == ["a fox", "a fox, red", "a fox, small",
                                                          "a fox, red, small"]


def test_prompts_from_file_applies_each_lines_options(api: ApiServer) -> None:
    lines = 'a fox\n--prompt "a whale" --steps 3 --seed 42 --cfg_scale 4.5 --width 128'
    body = run(api, "txt2img", "prompts from file or textbox", [False, False, "start", lines], prompt="")
    fox, whale = api.engine.calls
    assert (fox.prompt, fox.steps, fox.seed) == ("a fox", 2, 5)
    assert (whale.prompt, whale.steps, whale.seed) == ("a whale", 3, 42)
    assert (whale.cfg_scale, whale.width) == (4.5, 128)
    assert decode(body["images"][1]).size == (128, 64)
    assert body["info"]["all_seeds"] == [5, 42]


def test_sd_upscale_and_loopback_in_img2img(api: ApiServer) -> None:
    source = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (64, 1, 3)), "RGB")
    body = run(api, "img2img", "SD upscale", [None, 32, "Lanczos", 2.0], init_images=[b64(source)],
               denoising_strength=0.0)
    upscaled = decode(body["images"][0]).convert("RGB")
    assert upscaled.size == (128, 128)
    expected = np.asarray(source.resize((128, 128), Image.Resampling.LANCZOS), np.int16)
    assert np.abs(np.asarray(upscaled, np.int16) - expected).max() <= 2
    assert "SD upscale upscaler: Lanczos" in body["info"]["infotexts"][0]
    api.engine.calls.clear()
    body = run(api, "img2img", "loopback", [2, 0.2, "Linear", "None"], init_images=[b64(source)],
               denoising_strength=0.6)
    assert [round(call.denoising_strength, 6) for call in api.engine.calls] == [0.6, 0.2]
    assert len(body["images"]) == 3  # the row grid, then both loops


def test_scripts_are_listed_and_described(api: ApiServer) -> None:
    listed = api.get("scripts").json()
    assert {"x/y/z plot", "prompt matrix", "prompts from file or textbox"} <= set(listed["txt2img"])
    assert {"sd upscale", "loopback"} <= set(listed["img2img"]) and "sd upscale" not in listed["txt2img"]
    infos = api.get("script-info").json()
    xyz = next(item for item in infos if item["name"] == "x/y/z plot" and not item["is_img2img"])
    labels = [arg["label"] for arg in xyz["args"]]
    assert len(labels) == 18 and labels[:3] == ["X type", "X values", "X values"]
    assert labels[9:13] == ["Draw legend", "Include Sub Images", "Include Sub Grids", "Keep -1 for seeds"]
    assert xyz["args"][0]["value"] == 1 and xyz["args"][0]["choices"][4] == "Steps"
    upscale = next(item for item in infos if item["name"] == "sd upscale")
    assert upscale["is_img2img"] and upscale["args"][2]["choices"][:3] == ["None", "Lanczos", "Nearest"]


@pytest.mark.parametrize(("route", "script", "args", "status", "words"), [
    ("txt2img", "x/y/z plot", xyz_args((99, "1")), 422, ["X/Y/Z plot", "script_args[0] (x_type)", "99"]),
    ("txt2img", "x/y/z plot", xyz_args((9, "Euler, Nope")), 422, ["Sampler", "Nope"]),
    ("txt2img", "x/y/z plot", xyz_args((4, "1-2")) + [0], 422, ["at most 18 values"]),
    ("txt2img", "prompts from file or textbox", [False, False, "start", "--steps x"], 422, ["line 1"]),
    ("txt2img", "sd upscale", [], 422, ["sd upscale"]),
])
def test_bad_script_requests_are_refused_naming_the_problem(
        api: ApiServer, route: str, script: str, args: list[Any], status: int, words: list[str]) -> None:
    response = api.post(route, json={**SMALL, "script_name": script, "script_args": args})
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert all(word in detail for word in words), detail
    assert api.engine.calls == []


def test_restore_faces_without_a_restorer_returns_the_image_and_says_why(api: ApiServer) -> None:
    response = api.post("txt2img", json={**SMALL, "restore_faces": True})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["restore_faces"] is True and info["face_restoration_model"] is None
    (warning,) = info["warnings"]
    assert warning.startswith("face restoration was skipped: no CodeFormer model in")
    assert "Codeformer" in warning
    image = decode(response.json()["images"][0]).convert("RGB")
    assert image.getpixel((0, 0)) == colour_for(5, "a cat on a cat")


def test_extras_face_restoration_without_a_restorer_says_why(api: ApiServer) -> None:
    picture = b64(Image.new("RGB", (32, 32), (10, 20, 30)))
    response = api.post("extra-single-image", json={"image": picture, "codeformer_visibility": 1.0,
                                                     "upscaling_resize": 1})
    assert response.status_code == 200, response.text
    assert "face restoration was skipped: no CodeFormer model in" in response.json()["html_info"]
    assert decode(response.json()["image"]).convert("RGB").getpixel((0, 0)) == (10, 20, 30)

"""POST /sdapi/v1/img2img with A1111's "Poor man's outpainting" script: the init image padded on the chosen
sides, the new area inpainted, A1111's script_args order and defaults, clear 422s for bad arguments."""

from __future__ import annotations

import json

import pytest
from PIL import Image, ImageChops

from tests.api.conftest import ApiServer
from tests.api.test_img2img import GREEN, SMALL, b64, decode

SCRIPT = "Poor man's outpainting"


def outpaint(api: ApiServer, *args, **fields) -> dict:
    response = api.post("img2img", json={**SMALL, "init_images": [b64(GREEN)], "script_name": SCRIPT,
                                         "script_args": list(args), **fields})
    assert response.status_code == 200, response.text
    return response.json()


def test_the_picture_grows_on_the_chosen_sides_and_stays_in_place(api: ApiServer) -> None:
    body = outpaint(api, 16, 4, 1, ["left", "right"], denoising_strength=1.0)
    image = decode(body["images"][0]).convert("RGB")
    assert image.size == (64, 48)  # GREEN is 32x48: 16 more on the left and on the right
    # The picture's own pixels (inside the 4-pixel overlap) are the original's; the new area was repainted.
    assert ImageChops.difference(image.crop((20, 0, 44, 48)), GREEN.crop((4, 0, 28, 48))).getbbox() is None
    assert image.getpixel((2, 20)) != GREEN.getpixel((0, 0))
    mask = api.engine.masks[-1]
    assert mask.size == (64, 48) and mask.getbbox() == (0, 0, 64, 48)
    assert mask.getpixel((19, 10)) == 255 and mask.getpixel((20, 10)) == 0  # new area + overlap of 4
    call = api.engine.calls[-1]
    assert (call.width, call.height, call.inpaint_full_res, call.inpainting_fill, call.mask_blur) == (
        64, 48, False, 1, 4)
    assert "Mask blur: 4" in json.loads(body["info"])["infotexts"][0]


def test_missing_script_args_take_a1111s_defaults(api: ApiServer) -> None:
    outpaint(api)
    call = api.engine.calls[-1]
    # 128 pixels on every side, mask blur 4, masked content "fill".
    assert (call.width, call.height, call.mask_blur, call.inpainting_fill) == (288, 304, 4, 0)


def test_masked_content_may_be_named_and_direction_may_be_one_string(api: ApiServer) -> None:
    outpaint(api, 8, 0, "latent noise", "down")
    call = api.engine.calls[-1]
    assert (call.width, call.height, call.inpainting_fill) == (32, 56, 2)


@pytest.mark.parametrize(("args", "extra", "words"), [
    (["many"], {}, ["script_args[0]", "pixels"]),
    ([16, 99], {}, ["script_args[1]", "mask_blur"]),
    ([16, 4, "lava"], {}, ["script_args[2]", "inpainting_fill"]),
    ([16, 4, 0, ["sideways"]], {}, ["'sideways'", "left, right, up, down"]),
    ([16, 4, 0, []], {}, ["at least one"]),
    ([16, 4, 0, ["left"], 1], {}, ["at most 4"]),
    ([16], {"mask": b64(Image.new("L", (32, 48), 255))}, ["mask", "its own mask"]),
    ([16], {"init_images": [b64(GREEN), b64(GREEN)]}, ["one init image"]),
    ([1024], {}, ["at most 2048"]),
])
def test_bad_script_arguments_are_a_422_naming_them(api: ApiServer, args, extra, words) -> None:
    response = api.post("img2img", json={**SMALL, "init_images": [b64(GREEN)], "script_name": SCRIPT,
                                         "script_args": args, **extra})
    assert response.status_code == 422, response.text
    assert all(word in response.json()["detail"] for word in words), response.json()["detail"]
    assert api.engine.calls == []


def test_unknown_scripts_are_refused_and_the_script_is_listed(api: ApiServer) -> None:
    response = api.post("img2img", json={**SMALL, "init_images": [b64(GREEN)], "script_name": "wobble plot"})
    assert response.status_code == 422 and "wobble plot" in response.json()["detail"]
    response = api.post("txt2img", json={**SMALL, "script_name": SCRIPT})
    assert response.status_code == 422  # an img2img script
    assert api.get("scripts").json()["img2img"][0] == "poor man's outpainting"


def test_script_info_describes_the_arguments_in_a1111s_order(api: ApiServer) -> None:
    (info,) = [item for item in api.get("script-info").json() if item["name"] == "poor man's outpainting"]
    assert (info["name"], info["is_img2img"], info["is_alwayson"]) == ("poor man's outpainting", True, False)
    assert [arg["label"] for arg in info["args"]] == ["Pixels to expand", "Mask blur", "Masked content",
                                                      "Outpainting direction"]
    assert [arg["value"] for arg in info["args"]][:2] == [128, 4]

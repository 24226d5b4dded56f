"""What A1111 v1.10 accepts, accepted here the same way (issue 16), over HTTP with the fake engine.

Sizes rounded down to a multiple of 8, fractional integers truncated, no bounds A1111 lacks, 64-bit seeds
reduced as torch reduces them, unknown names falling back as A1111's do, unknown styles and img2img's
txt2img fields ignored, firstphase_width/height, mask_blur_x/y, the pixel budget; and the answers:
FastAPI's list for invalid fields, A1111's values for other errors, the grid first with return_grid,
images in samples_format. Whatever was changed is said in ``info.warnings``.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image

from sdweb.images.metadata import read_image_metadata
from tests.api.conftest import ApiServer, detail_text
from tests.fakes import colour_for

SMALL = {"steps": 2, "width": 64, "height": 64}


def post(api: ApiServer, route: str = "txt2img", **fields: Any) -> dict[str, Any]:
    response = api.post(route, json={**SMALL, **fields})
    assert response.status_code == 200, response.text
    body = response.json()
    body["info"] = json.loads(body["info"])
    return body


def warnings(body: dict[str, Any]) -> str:
    return " | ".join(body["info"].get("warnings", []))


def image(b64: str) -> Image.Image:
    picture = Image.open(io.BytesIO(base64.b64decode(b64)))
    picture.load()
    return picture


def png_b64(size: tuple[int, int] = (64, 64), colour: Any = (0, 200, 0), mode: str = "RGB") -> str:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# -- 1. sizes -----------------------------------------------------------------------------------------


def test_any_size_is_rounded_down_to_a_multiple_of_8_and_said(api: ApiServer) -> None:
    body = post(api, width=500, height=333)
    assert image(body["images"][0]).size == (496, 328)
    assert (api.engine.calls[-1].width, api.engine.calls[-1].height) == (496, 328)
    assert "width: 500 is not a multiple of 8; the image is 496" in warnings(body)
    assert "height: 333" in warnings(body)
    assert body["parameters"]["width"] == 500  # the request is echoed as sent, as A1111 does
    img2img = post(api, "img2img", init_images=[png_b64()], width=100, height=72)
    assert image(img2img["images"][0]).size == (96, 72) and "width: 100" in warnings(img2img)


def test_large_sizes_meet_the_pixel_budget_setting_not_a_fixed_side(api: ApiServer) -> None:
    assert image(post(api, width=4096, height=64)["images"][0]).size == (4096, 64)  # over 2048: fine
    response = api.post("txt2img", json={**SMALL, "width": 2048, "height": 2048, "batch_size": 8})
    assert response.status_code == 422
    assert all(
        word in response.json()["detail"]
        for word in ("2048x2048 x 8", "32.0 megapixels", "budget of 16", "api_max_megapixels")
    )
    # hires fix's final size counts too
    response = api.post(
        "txt2img", json={**SMALL, "width": 1024, "height": 1024, "enable_hr": True, "hr_scale": 4.5}
    )
    assert response.status_code == 422 and "hires fix" in response.json()["detail"]
    assert api.engine.calls[-1].width == 4096  # neither reached the engine
    assert api.post("options", json={"api_max_megapixels": 64}).status_code == 200
    post(api, width=1024, height=1024, enable_hr=True, hr_scale=4.5)
    assert api.engine.calls[-1].hr_scale == 4.5


# -- 2. numbers ---------------------------------------------------------------------------------------


def test_fractional_numbers_in_integer_fields_are_truncated_as_a1111(api: ApiServer) -> None:
    body = post(api, steps=2.5, batch_size=2.9, enable_hr=True, hr_second_pass_steps=23.07, seed=7.0)
    call = api.engine.calls[-1]
    assert (call.steps, call.batch_size, call.hr_second_pass_steps, call.seed) == (2, 2, 23, 7)
    assert "steps: 2.5 is not a whole number; used 2" in warnings(body)
    assert "hr_second_pass_steps: 23.07" in warnings(body) and "seed" not in warnings(body)


def test_values_a1111_has_no_bounds_for_are_accepted(api: ApiServer) -> None:
    for fields in ({"cfg_scale": 0}, {"cfg_scale": 35}, {"cfg_scale": -2.5}, {"steps": 200}, {"eta": 1.5}):
        body = post(api, **fields)
        call = api.engine.calls[-1]
        name, value = next(iter(fields.items()))
        assert getattr(call, name) == value and not body["info"]["warnings"]


def test_64_bit_seeds_are_used_and_others_reduced_as_torch_reduces_them(api: ApiServer) -> None:
    body = post(api, seed=2**63 + 11, subseed=2**64 - 1)
    assert body["info"]["all_seeds"] == [2**63 + 11] and api.engine.calls[-1].subseed == 2**64 - 1
    assert f"Seed: {2**63 + 11}," in body["info"]["infotexts"][0] and not body["info"]["warnings"]
    body = post(api, seed=2**64 + 5, subseed=-7)
    assert (api.engine.calls[-1].seed, api.engine.calls[-1].subseed) == (5, 2**64 - 7)
    assert "seed: 18446744073709551621 is outside" in warnings(body) and "subseed: -7" in warnings(body)
    assert post(api, seed=-1)["info"]["seed"] >= 0  # -1 still means random


def test_values_that_cannot_run_stay_a_422_naming_the_field(api: ApiServer) -> None:
    for fields, field in [
        ({"steps": 0}, "steps"),
        ({"width": 4}, "width"),
        ({"eta": -1}, "eta"),
        ({"cfg_scale": "lots"}, "cfg_scale"),
        ({"n_iter": 0}, "n_iter"),
    ]:
        response = api.post("txt2img", json={**SMALL, **fields})
        assert response.status_code == 422, (fields, response.text)
        assert field in detail_text(response.json())
    assert api.engine.calls == []


# -- 3. names -----------------------------------------------------------------------------------------


def test_unknown_sampler_and_schedule_type_fall_back_as_a1111_and_say_so(api: ApiServer) -> None:
    body = post(api, sampler_name="Wobbly sampler", scheduler="Wobbly schedule")
    call = api.engine.calls[-1]
    assert (call.sampler_name, call.scheduler) == ("DPM++ 2M", "Automatic")  # A1111's first sampler
    text = warnings(body)
    assert "sampler 'Wobbly sampler' is not available here; used 'DPM++ 2M'" in text and "Euler a" in text
    assert "schedule type 'Wobbly schedule' is not available here; used 'Automatic'" in text
    body = post(api, enable_hr=True, hr_sampler_name="Nope")
    assert api.engine.calls[-1].hr_sampler_name == "" and "used the first pass's 'Euler'" in warnings(body)


@pytest.mark.parametrize(
    ("sampler", "scheduler", "expected"),
    [
        ("euler_ancestral", "normal", ("Euler a", "Normal")),
        ("dpmpp_2m", "karras", ("DPM++ 2M", "Karras")),
        ("dpmpp_2m_sde_gpu", "exponential", ("DPM++ 2M SDE", "Exponential")),
        ("euler", "sgm_uniform", ("Euler", "SGM Uniform")),
        ("ddim", "ddim_uniform", ("DDIM", "DDIM")),
    ],
)
def test_comfyui_spellings_mean_the_a1111_names(
    api: ApiServer, sampler: str, scheduler: str, expected: tuple[str, str]
) -> None:
    body = post(api, sampler_name=sampler, scheduler=scheduler)
    call = api.engine.calls[-1]
    assert call.sampler_name == expected[0] and "sampler_name" not in warnings(body)
    if expected[1] in api.services.samplers().compatible_schedules(expected[0]):
        assert call.scheduler == expected[1] and not body["info"]["warnings"]
    else:  # a schedule type this engine does not have (yet): Automatic, as A1111 falls back, said
        text = warnings(body)  # names what was asked for (or the A1111 label it means)
        assert call.scheduler == "Automatic" and (f"'{scheduler}'" in text or f"'{expected[1]}'" in text)


def test_unknown_styles_are_ignored_and_known_ones_applied(api: ApiServer) -> None:
    from sdweb.prompts.styles import PromptStyle

    api.services.styles.save(PromptStyle(name="cinematic", prompt="{prompt}, film grain", negative_prompt=""))
    body = post(api, prompt="a harbour", styles=["cinematic", "None", "gone"])
    assert api.engine.calls[-1].prompt == "a harbour, film grain"
    assert body["info"]["styles"] == ["cinematic"]
    assert "styles: 'None', 'gone' not found; ignored" in warnings(body)


def test_img2img_ignores_txt2img_fields_as_a1111(api: ApiServer) -> None:
    body = post(
        api,
        "img2img",
        init_images=[png_b64()],
        enable_hr=True,
        hr_scale=2,
        hr_upscaler="Latent",
        firstphase_width=32,
        denoising_strength=0.4,
    )
    call = api.engine.calls[-1]
    assert not call.enable_hr and (call.width, call.denoising_strength) == (64, 0.4)
    assert "enable_hr, firstphase_width, hr_upscaler: txt2img fields, ignored by img2img" in warnings(body)


def test_firstphase_size_is_the_first_pass_as_in_a1111_1_10(api: ApiServer) -> None:
    body = post(api, width=1024, height=1024, firstphase_width=256, firstphase_height=192)
    assert image(body["images"][0]).size == (256, 192)
    assert "firstphase_width/firstphase_height: the image is 256x192" in warnings(body)
    body = post(
        api, width=1024, height=1024, firstphase_width=256, firstphase_height=192, enable_hr=True, hr_scale=2
    )
    call = api.engine.calls[-1]
    assert (call.width, call.height, call.enable_hr, call.hr_scale) == (
        256,
        192,
        True,
        2.0,
    )  # 512x384 at last
    assert "the first pass is 256x192" in warnings(body)


def test_mask_blur_x_and_y_may_differ(api: ApiServer) -> None:
    mask = png_b64((64, 64), 255, "L")
    body = post(api, "img2img", init_images=[png_b64()], mask=mask, mask_blur_x=2, mask_blur_y=8)
    call = api.engine.calls[-1]
    assert (call.mask_blur, call.mask_blur_y) == (2, 8)
    assert "Mask blur" not in body["info"]["infotexts"][0]  # A1111 writes it only when both are alike
    post(api, "img2img", init_images=[png_b64()], mask=mask, mask_blur=6, mask_blur_x=2, mask_blur_y=8)
    assert (api.engine.calls[-1].mask_blur, api.engine.calls[-1].mask_blur_y) == (6, None)  # mask_blur wins


# -- 5. answers ---------------------------------------------------------------------------------------


def test_invalid_fields_get_fastapis_list_as_from_a1111(api: ApiServer) -> None:
    response = api.post("txt2img", json={**SMALL, "width": "wide", "prompt": "x" * 30_000})
    assert response.status_code == 422
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], list)
    locations = {tuple(item["loc"]) for item in body["detail"]}
    assert locations == {("body", "width"), ("body", "prompt")}
    assert all({"loc", "msg", "type"} <= set(item) for item in body["detail"])
    assert len(response.content) < 5_000  # long inputs are cut, not echoed


def test_other_errors_carry_a1111s_values(api: ApiServer) -> None:
    response = api.post("txt2img", json={**SMALL, "override_settings": {"sd_model_checkpoint": "nope"}})
    assert response.status_code == 404
    body = response.json()
    assert body["error"] == "HTTPException" and body["body"] == ""
    assert "nope" in body["detail"] and body["errors"] == f"404: {body['detail']}"
    response = api.get("no-such-route")
    assert response.json()["error"] == "HTTPException" and response.json()["errors"].startswith("404: ")


def test_saved_batches_answer_the_grid_first_as_a1111_with_return_grid(api: ApiServer) -> None:
    body = post(api, seed=10, batch_size=2, save_images=True, prompt="kites")
    assert len(body["images"]) == 3 and body["info"]["index_of_first_image"] == 1
    grid, first, second = (image(b64) for b64 in body["images"])
    assert grid.size == (128, 64) and grid.getpixel((0, 0)) == colour_for(10, "kites")
    assert grid.getpixel((64, 0)) == colour_for(11, "kites") and second.getpixel((0, 0)) == colour_for(
        11, "kites"
    )
    assert len(body["info"]["infotexts"]) == 3 and body["info"]["all_seeds"] == [10, 11]
    assert first.info["parameters"] == body["info"]["infotexts"][1]
    unsaved = post(api, batch_size=2)
    assert len(unsaved["images"]) == 2 and unsaved["info"]["index_of_first_image"] == 0


def test_return_grid_off_sends_no_grid(start_api: Callable[..., ApiServer]) -> None:
    api = start_api(config={"return_grid": False})  # an A1111 config.json with the grid switched off
    body = post(api, batch_size=2, save_images=True)
    assert len(body["images"]) == 2 and body["info"]["index_of_first_image"] == 0


@pytest.mark.parametrize(("fmt", "pil_format"), [("jpg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
def test_api_images_follow_samples_format_as_a1111(api: ApiServer, fmt: str, pil_format: str) -> None:
    assert api.post("options", json={"samples_format": fmt}).status_code == 200
    body = post(api, prompt="a boat", seed=3)
    picture = image(body["images"][0])
    assert picture.format == pil_format
    assert read_image_metadata(picture).parameters == body["info"]["infotexts"][0]

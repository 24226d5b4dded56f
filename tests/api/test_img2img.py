"""POST /sdapi/v1/img2img and the Extras routes over HTTP: A1111's field names, defaults and shapes,
init images reaching the engine, saving, and the 4xx answers for bad images and values."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tests.api.conftest import ApiServer, detail_text
from tests.fakes import colour_for
from tests.images.test_metadata import _png_claiming_size

SMALL = {"steps": 4, "width": 64, "height": 64, "seed": 5}


def b64(image: Image.Image, parameters: str | None = None) -> str:
    buffer = io.BytesIO()
    info = PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text, validate=True)))
    image.load()
    return image


GREEN = Image.new("RGB", (32, 48), (0, 200, 0))


def img2img(api: ApiServer, **fields) -> dict:
    response = api.post("img2img", json={**SMALL, "init_images": [b64(GREEN)], **fields})
    assert response.status_code == 200, response.text
    return response.json()


# -- img2img ------------------------------------------------------------------------------------------


def test_defaults_and_shapes_are_a1111s(api: ApiServer) -> None:
    body = img2img(api)
    (encoded,) = body["images"]
    image = decode(encoded)
    assert image.size == (64, 64)
    assert "Denoising strength: 0.75" in image.info["parameters"]
    info = json.loads(body["info"])
    assert info["denoising_strength"] == 0.75 and info["all_seeds"] == [5]
    assert body["parameters"]["init_images"] is None  # echoed only with include_init_images
    assert body["parameters"]["denoising_strength"] == 0.75
    # The engine got the decoded init image and an img2img request.
    assert api.engine.init_images[-1][0].size == (32, 48)
    assert api.engine.calls[-1].denoising_strength == 0.75


def test_strength_zero_gives_the_init_image_and_one_the_seeds_image(api: ApiServer) -> None:
    kept = decode(img2img(api, denoising_strength=0)["images"][0])
    assert kept.getpixel((10, 10)) == (0, 200, 0)
    replaced = decode(img2img(api, denoising_strength=1, prompt="p")["images"][0])
    assert replaced.getpixel((10, 10)) == colour_for(5, "p")


def test_several_init_images_make_the_batch_and_can_be_echoed(api: ApiServer) -> None:
    red, blue = (Image.new("RGB", (64, 64), colour) for colour in ((255, 0, 0), (0, 0, 255)))
    body = img2img(api, init_images=[b64(red), b64(blue)], batch_size=2, denoising_strength=0,
                   include_init_images=True)
    assert [decode(item).getpixel((0, 0)) for item in body["images"]] == [(255, 0, 0), (0, 0, 255)]
    assert json.loads(body["info"])["all_seeds"] == [5, 6]
    assert len(body["parameters"]["init_images"]) == 2


def test_saved_images_go_to_img2img_images(api: ApiServer) -> None:
    img2img(api, save_images=True)
    outputs = Path(api.services.images.images_dir("img2img"))
    saved = list(outputs.rglob("*.png"))
    assert len(saved) == 1 and saved[0].name.endswith("-5.png")


@pytest.mark.parametrize(("fields", "status", "words"), [
    ({"init_images": ["not base64 at all!"]}, 400, ["init_images[0]", "base64"]),
    ({"init_images": [base64.b64encode(b"hello").decode()]}, 400, ["init_images[0]", "not an image"]),
    ({"init_images": [base64.b64encode(_png_claiming_size(60_000, 60_000)).decode()]}, 400,
     ["init_images[0]", "pixels"]),
    ({"init_images": []}, 422, ["init_images", "at least one"]),
    ({"init_images": None}, 422, ["init_images", "at least one"]),
    ({"denoising_strength": 1.5}, 422, ["denoising_strength"]),
    ({"denoising_strength": -0.1}, 422, ["denoising_strength"]),
    ({"resize_mode": 4}, 422, ["resize_mode"]),
    ({"latent_mask": "iVBORw0KGgo="}, 422, ["latent_mask", "not supported yet"]),
    ({"mask": "%%%"}, 400, ["mask[0]", "base64"]),
    ({"mask": b64(Image.new("L", (10, 10), 255))}, 400, ["mask is 10x10", "32x48"]),
    ({"mask": b64(Image.new("L", (32, 48), 255)), "mask_blur": 100}, 422, ["mask_blur"]),
    ({"mask": b64(Image.new("L", (32, 48), 255)), "inpainting_fill": 4}, 422, ["inpainting_fill"]),
    ({"initial_noise_multiplier": 1.2}, 422, ["initial_noise_multiplier"]),
    ({"batch_size": 1, "init_images": [b64(GREEN)] * 2}, 400, ["2 init images for a batch size of 1"]),
])
def test_bad_requests_get_a_4xx_naming_the_problem(api: ApiServer, fields, status, words) -> None:
    response = api.post("img2img", json={**SMALL, "init_images": [b64(GREEN)], **fields})
    assert response.status_code == status, response.text
    detail = detail_text(response.json())
    for word in words:
        assert word in detail, detail
    assert api.engine.init_images == []  # nothing reached the engine


def test_inpainting_changes_only_the_masked_part_and_says_so(api: ApiServer) -> None:
    mask = Image.new("L", (32, 48), 0)
    mask.paste(255, (0, 0, 16, 48))  # the left half
    body = img2img(api, mask=b64(mask), denoising_strength=1, width=64, height=96, prompt="p",
                   mask_blur=6, inpaint_full_res_padding=8)
    image = decode(body["images"][0])
    assert image.getpixel((8, 20)) == colour_for(5, "p") and image.getpixel((56, 20)) == (0, 200, 0)
    text = image.info["parameters"]
    assert "Denoising strength: 1, " in text
    assert "Mask blur: 6, Inpaint area: Only masked, Masked area padding: 8, Version" in text
    call = api.engine.calls[-1]
    assert (call.mask_blur, call.inpaint_full_res, call.inpaint_full_res_padding) == (6, True, 8)
    assert api.engine.masks[-1].size == (32, 48)
    body = img2img(api, mask=b64(mask), inpaint_full_res=False, inpainting_mask_invert=1, inpainting_fill=1)
    text = decode(body["images"][0]).info["parameters"]
    assert "Mask blur: 4, Mask mode: Inpaint not masked, Version" in text
    assert api.engine.calls[-1].inpainting_fill == 1 and api.engine.calls[-1].inpainting_mask_invert


def test_progress_names_the_img2img_job(start_api) -> None:
    from tests.fakes import FakeEngine

    api = start_api(engine=FakeEngine(step_delay=0.05))
    import threading

    done: list[int] = []
    thread = threading.Thread(target=lambda: done.append(
        api.post("img2img", json={**SMALL, "steps": 40, "init_images": [b64(GREEN)],
                                  "force_task_id": "job-1"}).status_code))
    thread.start()
    try:
        seen = set()
        for _ in range(200):
            state = api.get("progress", params={"id_task": "job-1"})
            if state.status_code == 200:
                seen.add(state.json()["state"]["job"])
            if "img2img" in seen or done:
                break
            threading.Event().wait(0.02)
        assert "img2img" in seen
    finally:
        thread.join(30)
    assert done == [200]


# -- extras ---------------------------------------------------------------------------------------


def test_upscalers_lists_the_builtins(api: ApiServer) -> None:
    assert [item["name"] for item in api.get("upscalers").json()] == ["None", "Lanczos", "Nearest"]


def test_extra_single_image_scales_by_and_to_exact_sizes(api: ApiServer) -> None:
    source = Image.new("RGB", (50, 30), (10, 20, 30))
    body = api.post("extra-single-image", json={"image": b64(source, "a cat\nSteps: 20, Seed: 1"),
                                                "upscaler_1": "Lanczos", "upscaling_resize": 3}).json()
    image = decode(body["image"])
    assert image.size == (150, 90)
    assert image.info["parameters"] == "a cat\nSteps: 20, Seed: 1"  # the source's infotext is kept
    assert "Postprocess upscale by: 3" in body["html_info"] and "Lanczos" in body["html_info"]
    body = api.post("extra-single-image", json={"image": b64(source), "upscaler_1": "Nearest",
                                                "resize_mode": 1, "upscaling_resize_w": 77,
                                                "upscaling_resize_h": 77}).json()
    assert decode(body["image"]).size == (77, 77)
    body = api.post("extra-single-image", json={"image": b64(source), "resize_mode": 1,
                                                "upscaler_1": "Lanczos", "upscaling_resize_w": 100,
                                                "upscaling_resize_h": 100, "upscaling_crop": False}).json()
    assert decode(body["image"]).size == (167, 100)


def test_extra_batch_images_upscales_each(api: ApiServer) -> None:
    images = [{"data": b64(Image.new("RGB", size)), "name": f"{i}.png"}
              for i, size in enumerate([(10, 10), (20, 8)])]
    body = api.post("extra-batch-images", json={"imageList": images, "upscaler_1": "Lanczos",
                                                "upscaling_resize": 2}).json()
    assert [decode(item).size for item in body["images"]] == [(20, 20), (40, 16)]


@pytest.mark.parametrize(("path", "fields", "status", "words"), [
    ("extra-single-image", {"image": "%%%"}, 400, ["image[0]", "base64"]),
    ("extra-single-image", {"upscaler_1": "Wobbly 3x"}, 400, ["Wobbly 3x", "known: None, Lanczos"]),
    ("extra-single-image", {"upscaler_1": "Lanczos", "upscaling_resize": 20}, 422, ["at most 8"]),
    ("extra-single-image", {"upscaler_1": "Lanczos", "upscaling_resize": 8,
                            "image": b64(Image.new("RGB", (2000, 10)))}, 422, ["at most 8192"]),
    ("extra-single-image", {"upscaler_1": "Lanczos", "resize_mode": 5}, 422, ["resize_mode"]),
    ("extra-single-image", {"gfpgan_visibility": 1.5}, 422, ["gfpgan_visibility", "between 0 and 1"]),
    ("extra-batch-images", {"imageList": [{"data": "aGVsbG8=", "name": "x.png"}]}, 400, ["imageList[0]"]),
])
def test_bad_extras_requests_get_a_4xx(api: ApiServer, path, fields, status, words) -> None:
    body = {"image": b64(Image.new("RGB", (8, 8))), **fields} if path == "extra-single-image" else fields
    response = api.post(path, json=body)
    assert response.status_code == status, response.text
    for word in words:
        assert word in detail_text(response.json())


def test_extra_noise_from_override_settings_reaches_the_job_and_its_infotext(api: ApiServer) -> None:
    body = img2img(api, override_settings={"img2img_extra_noise": 0.25})
    assert api.engine.calls[-1].img2img_extra_noise == 0.25
    assert "Extra noise: 0.25" in json.loads(body["info"])["infotexts"][0]
    plain = img2img(api)
    assert api.engine.calls[-1].img2img_extra_noise == 0.0
    assert "Extra noise" not in json.loads(plain["info"])["infotexts"][0]

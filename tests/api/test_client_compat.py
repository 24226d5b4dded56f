"""Real clients' requests, as they send them, through the real server (uvicorn + the real services).

Each case names the client whose code builds the payload (SillyTavern's stable-diffusion extension,
Open WebUI's image router, the ``webuiapi`` Python package, the AIYA Discord bot) and what a user of
that client would notice: the request is served (A1111 v1.10 serves it), and what we had to coerce or
ignore is said in ``info.warnings``. The A1111 behaviours these depend on have their own tests in
test_a1111_leniency.py.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.api.conftest import ApiServer

SILLYTAVERN = "SillyTavern (public/scripts/extensions/stable-diffusion)"
OPEN_WEBUI = "Open WebUI (backend/open_webui/routers/images.py)"
WEBUIAPI = "webuiapi (mix1009/sdwebuiapi)"
AIYA = "AIYA Discord bot (Kilvoctu/aiyabot)"


def png_b64(colour: tuple[int, int, int] = (0, 160, 0), size: tuple[int, int] = (64, 64)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decoded(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64.split(",", 1)[-1])))
    image.load()
    return image


def info_of(response: httpx.Response) -> dict[str, Any]:
    return json.loads(response.json()["info"])


def warnings_of(response: httpx.Response) -> str:
    return " | ".join(info_of(response).get("warnings", []))


# -- what each client sends (copied from the client's code, with values a user of it would have) ---


def sillytavern_txt2img(**changes: Any) -> dict[str, Any]:
    """generateAutoImage(): its defaults (sampler DDIM, ComfyUI's scheduler name "normal", the
    Forge/SD.Next fields it adds for other backends; no seed when the seed is -1)."""
    payload = {
        "prompt": "a lighthouse at dusk, masterpiece",
        "negative_prompt": "lowres, blurry",
        "sampler_name": "DDIM",
        "scheduler": "normal",
        "steps": 20,
        "cfg_scale": 7,
        "width": 512,
        "height": 512,
        "restore_faces": False,
        "enable_hr": False,
        "hr_upscaler": "Latent",
        "hr_scale": 1.0,
        "hr_additional_modules": [],
        "denoising_strength": 0.7,
        "hr_second_pass_steps": 0,
        "override_settings": {"CLIP_stop_at_last_layers": 1},
        "override_settings_restore_afterwards": True,
        "clip_skip": 1,
        "save_images": True,
        "send_images": True,
        "do_not_save_grid": False,
        "do_not_save_samples": False,
    }
    payload.update(changes)
    return payload


def open_webui_txt2img(**changes: Any) -> dict[str, Any]:
    """image_generations(): prompt, n, the IMAGE_SIZE setting split, and the optional settings."""
    payload: dict[str, Any] = {
        "prompt": "a cat in a space suit",
        "batch_size": 1,
        "width": 768,
        "height": 432,
        "steps": 20,
        "negative_prompt": "",
        "cfg_scale": 7.0,
        "sampler_name": "Euler a",
        "scheduler": "karras",
    }
    payload.update(changes)
    return payload


def webuiapi_txt2img(**changes: Any) -> dict[str, Any]:
    """WebUIApi(sampler="Euler a", steps=20).txt2img(prompt=...): every field it always sends."""
    payload = {
        "enable_hr": False,
        "hr_scale": 2,
        "hr_upscaler": "Latent",
        "hr_second_pass_steps": 0,
        "hr_resize_x": 0,
        "hr_resize_y": 0,
        "denoising_strength": 0.7,
        "firstphase_width": 0,
        "firstphase_height": 0,
        "prompt": "a red bicycle",
        "styles": [],
        "seed": -1,
        "subseed": -1,
        "subseed_strength": 0.0,
        "seed_resize_from_h": 0,
        "seed_resize_from_w": 0,
        "batch_size": 1,
        "n_iter": 1,
        "steps": 20,
        "cfg_scale": 7.0,
        "width": 512,
        "height": 512,
        "restore_faces": False,
        "tiling": False,
        "do_not_save_samples": False,
        "do_not_save_grid": False,
        "negative_prompt": "",
        "eta": 1.0,
        "s_churn": 0,
        "s_tmax": 0,
        "s_tmin": 0,
        "s_noise": 1,
        "override_settings": {},
        "override_settings_restore_afterwards": True,
        "sampler_name": "Euler a",
        "sampler_index": "Euler a",
        "script_name": None,
        "script_args": [],
        "send_images": True,
        "save_images": False,
        "alwayson_scripts": {},
    }
    payload.update(changes)
    return payload


def webuiapi_img2img(**changes: Any) -> dict[str, Any]:
    """WebUIApi.img2img(images=[image], prompt=...): b64_img() sends a data: URL."""
    payload = {
        "init_images": ["data:image/png;base64," + png_b64()],
        "resize_mode": 0,
        "denoising_strength": 0.75,
        "mask_blur": 4,
        "inpainting_fill": 0,
        "inpaint_full_res": True,
        "inpaint_full_res_padding": 0,
        "inpainting_mask_invert": 0,
        "initial_noise_multiplier": 1,
        "prompt": "a green field",
        "styles": [],
        "seed": -1,
        "subseed": -1,
        "subseed_strength": 0,
        "seed_resize_from_h": 0,
        "seed_resize_from_w": 0,
        "batch_size": 1,
        "n_iter": 1,
        "steps": 20,
        "cfg_scale": 7.0,
        "image_cfg_scale": 1.5,
        "width": 64,
        "height": 64,
        "restore_faces": False,
        "tiling": False,
        "do_not_save_samples": False,
        "do_not_save_grid": False,
        "negative_prompt": "",
        "eta": 1.0,
        "s_churn": 0,
        "s_tmax": 0,
        "s_tmin": 0,
        "s_noise": 1,
        "override_settings": {},
        "override_settings_restore_afterwards": True,
        "sampler_name": "Euler a",
        "sampler_index": "Euler a",
        "include_init_images": False,
        "script_name": None,
        "script_args": [],
        "send_images": True,
        "save_images": False,
        "alwayson_scripts": {},
    }
    payload.update(changes)
    return payload


def aiya_payload(**changes: Any) -> dict[str, Any]:
    """StableCog.dream(): sampler_index, the style menu's "None", seed resize 0, no denoising strength."""
    payload = {
        "prompt": "a castle on a hill",
        "negative_prompt": "ugly",
        "steps": 25,
        "width": 512,
        "height": 768,
        "cfg_scale": 7.0,
        "sampler_index": "Euler a",
        "seed": 1234,
        "seed_resize_from_h": 0,
        "seed_resize_from_w": 0,
        "denoising_strength": None,
        "n_iter": 1,
        "batch_size": 1,
        "styles": ["None"],
        "override_settings": {"CLIP_stop_at_last_layers": 1},
    }
    payload.update(changes)
    return payload


# -- the checks -----------------------------------------------------------------------------------


def served(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text


def one_image(size: tuple[int, int]) -> Callable[[ApiServer, httpx.Response], None]:
    def check(api: ApiServer, response: httpx.Response) -> None:
        served(response)
        images = response.json()["images"]
        assert len(images) == 1 and decoded(images[0]).size == size

    return check


def sillytavern_defaults(api: ApiServer, response: httpx.Response) -> None:
    one_image((512, 512))(api, response)
    call = api.engine.calls[-1]
    assert call.sampler_name == "DDIM" and call.clip_skip == 1
    schedules = api.services.samplers().compatible_schedules("DDIM")
    if "Normal" in schedules:  # ComfyUI's "normal" is A1111's "Normal" where the engine has it
        assert call.scheduler == "Normal"
    else:
        assert call.scheduler == "Automatic" and "'normal'" in warnings_of(response).lower()
    assert "hr_additional_modules" not in response.json()["parameters"]  # Forge's field: ignored


def sillytavern_hires(api: ApiServer, response: httpx.Response) -> None:
    one_image((496, 696))(api, response)  # 500x700 rounded down (the fake engine makes no second pass)
    call = api.engine.calls[-1]
    assert (call.width, call.height, call.hr_second_pass_steps) == (496, 696, 23)
    assert (call.sampler_name, call.enable_hr, call.hr_scale) == ("Euler a", True, 1.5)
    warnings = warnings_of(response)
    assert "hr_second_pass_steps: 23.07" in warnings and "width: 500" in warnings


def open_webui_checks(api: ApiServer, response: httpx.Response) -> None:
    one_image((768, 432))(api, response)
    call = api.engine.calls[-1]
    assert call.sampler_name == "Euler a" and call.steps == 20
    if "Karras" in api.services.samplers().compatible_schedules("Euler a"):
        assert call.scheduler == "Karras"
    else:  # A1111 runs Euler a with Karras; an engine without that pairing falls back and says so
        assert call.scheduler == "Automatic" and "Karras" in warnings_of(response)


def webuiapi_defaults(api: ApiServer, response: httpx.Response) -> None:
    one_image((512, 512))(api, response)
    call = api.engine.calls[-1]
    assert (call.sampler_name, call.steps, call.eta, call.seed_resize_from_w) == ("Euler a", 20, 1.0, 0)
    assert not info_of(response)["warnings"]  # nothing needed changing


def webuiapi_hires_model_upscaler(api: ApiServer, response: httpx.Response) -> None:
    one_image((64, 64))(api, response)
    assert api.engine.calls[-1].hr_upscaler == "Lanczos"
    assert "RealESRGAN_x4plus.pth" in warnings_of(response) and "models/ESRGAN" in warnings_of(response)


def webuiapi_img2img_checks(api: ApiServer, response: httpx.Response) -> None:
    one_image((64, 64))(api, response)
    assert api.engine.init_images[-1][0].getpixel((0, 0)) == (0, 160, 0)
    assert response.json()["parameters"]["init_images"] is None  # include_init_images false, as A1111


def webuiapi_extras(api: ApiServer, response: httpx.Response) -> None:
    served(response)
    body = response.json()
    assert decoded(body["image"]).size == (128, 128)
    assert "Lanczos" in body["html_info"] and "RealESRGAN_x4plus.pth" in body["html_info"]


def aiya_plain(api: ApiServer, response: httpx.Response) -> None:
    one_image((512, 768))(api, response)
    call = api.engine.calls[-1]
    assert (call.sampler_name, call.seed, call.styles) == ("Euler a", 1234, ())
    assert "styles: 'None' not found" in warnings_of(response)


def aiya_hires(api: ApiServer, response: httpx.Response) -> None:
    one_image((512, 768))(api, response)
    call = api.engine.calls[-1]
    assert (call.enable_hr, call.hr_second_pass_steps, call.denoising_strength) == (True, 12, 0.45)


def aiya_img2img(api: ApiServer, response: httpx.Response) -> None:
    one_image((512, 768))(api, response)
    assert api.engine.calls[-1].denoising_strength == 0.45


def ping(api: ApiServer, response: httpx.Response) -> None:
    served(response)
    assert response.json() == {}


@dataclass(frozen=True)
class ClientCase:
    client: str
    what: str
    path: str  # from the server's root
    payload: dict[str, Any] | None
    check: Callable[[ApiServer, httpx.Response], None]
    method: str = "POST"
    marks: tuple[Any, ...] = field(default=())


CASES = [
    ClientCase(SILLYTAVERN, "connection check", "/internal/ping", None, ping, method="GET"),
    ClientCase(
        SILLYTAVERN,
        "txt2img with its defaults",
        "/sdapi/v1/txt2img",
        sillytavern_txt2img(),
        sillytavern_defaults,
    ),
    ClientCase(
        SILLYTAVERN,
        "hires fix with slider values, a ComfyUI sampler name, a free size",
        "/sdapi/v1/txt2img",
        sillytavern_txt2img(
            sampler_name="euler_ancestral",
            scheduler="simple",
            width=500,
            height=700,
            enable_hr=True,
            hr_scale=1.5,
            hr_second_pass_steps=23.07,
            denoising_strength=0.55,
            seed=77,
        ),
        sillytavern_hires,
    ),
    ClientCase(
        OPEN_WEBUI,
        "txt2img with its AUTOMATIC1111_* settings",
        "/sdapi/v1/txt2img",
        open_webui_txt2img(),
        open_webui_checks,
    ),
    ClientCase(
        WEBUIAPI, "txt2img() with every default", "/sdapi/v1/txt2img", webuiapi_txt2img(), webuiapi_defaults
    ),
    ClientCase(
        WEBUIAPI,
        "txt2img(enable_hr=True, hr_upscaler=HiResUpscaler.ESRGAN_4x)",
        "/sdapi/v1/txt2img",
        webuiapi_txt2img(enable_hr=True, hr_upscaler="R-ESRGAN 4x+", width=64, height=64),
        webuiapi_hires_model_upscaler,
    ),
    ClientCase(
        WEBUIAPI,
        "img2img() with a data: URL image",
        "/sdapi/v1/img2img",
        webuiapi_img2img(),
        webuiapi_img2img_checks,
    ),
    ClientCase(
        WEBUIAPI,
        "extra_single_image(upscaler_1=Upscaler.ESRGAN_4x)",
        "/sdapi/v1/extra-single-image",
        {
            "resize_mode": 0,
            "show_extras_results": True,
            "gfpgan_visibility": 0,
            "codeformer_visibility": 0,
            "codeformer_weight": 0,
            "upscaling_resize": 2,
            "upscaling_resize_w": 512,
            "upscaling_resize_h": 512,
            "upscaling_crop": True,
            "upscaler_1": "R-ESRGAN 4x+",
            "upscaler_2": "None",
            "extras_upscaler_2_visibility": 0,
            "upscale_first": False,
            "image": "data:image/png;base64," + png_b64(),
        },
        webuiapi_extras,
    ),
    ClientCase(AIYA, "/draw with the default style 'None'", "/sdapi/v1/txt2img", aiya_payload(), aiya_plain),
    ClientCase(
        AIYA,
        "/draw with highres fix (steps / 2 second-pass steps)",
        "/sdapi/v1/txt2img",
        aiya_payload(
            enable_hr=True,
            hr_upscaler="Latent",
            hr_scale=1,
            hr_second_pass_steps=25 / 2,
            denoising_strength=0.45,
        ),
        aiya_hires,
    ),
    ClientCase(
        AIYA,
        "/draw with an init image",
        "/sdapi/v1/img2img",
        aiya_payload(init_images=["data:image/png;base64," + png_b64()], denoising_strength=0.45),
        aiya_img2img,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{case.client.split(' (')[0]}: {case.what}" for case in CASES])
def test_a_real_client_request_is_served(api: ApiServer, case: ClientCase) -> None:
    url = api.base_url + case.path
    response = api.client.get(url) if case.method == "GET" else api.client.post(url, json=case.payload)
    case.check(api, response)


def test_open_webui_sets_the_model_as_it_does(api: ApiServer) -> None:
    """Open WebUI (set_image_model with AUTOMATIC1111): GET options, change sd_model_checkpoint, POST the
    whole dict back; then get_image_model reads it again."""
    options = api.get("options").json()
    title = api.get("sd-models").json()[0]["title"]
    options["sd_model_checkpoint"] = title
    assert api.post("options", json={"sd_model_checkpoint": title}).status_code == 200
    assert api.get("options").json()["sd_model_checkpoint"] == title


def test_open_webui_posts_back_the_whole_options_dict(start_api: Callable[..., ApiServer]) -> None:
    """Open WebUI posts back everything GET /options gave, keys of A1111 features we lack included."""
    api = start_api(config={"sd_checkpoint_cache": 0, "img2img_background_color": "#ffffff"})
    options = api.get("options").json()
    options["sd_model_checkpoint"] = api.get("sd-models").json()[0]["title"]
    response = api.post("options", json=options)
    assert response.status_code == 200, response.text


def test_aiya_selects_the_model_before_drawing(api: ApiServer) -> None:
    """AIYA posts {"sd_model_checkpoint": <model>} to /options, then draws."""
    title = api.get("sd-models").json()[0]["title"]
    assert api.post("options", json={"sd_model_checkpoint": title}).status_code == 200
    response = api.post("txt2img", json=aiya_payload())
    aiya_plain(api, response)
    assert api.engine.calls[-1].checkpoint == title

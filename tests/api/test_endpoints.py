"""The other /sdapi/v1 routes: options, listings, png-info, model actions, auth and 501s."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tests.api.conftest import ApiServer
from tests.fakes import write_fake_checkpoint


def png_b64(text: str | None = None, **chunks: str) -> str:
    info = PngInfo()
    if text is not None:
        info.add_text("parameters", text)
    for key, value in chunks.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode()


# -- options --------------------------------------------------------------------------------------


def test_options_round_trip_and_persist(api: ApiServer) -> None:
    options = api.get("options").json()
    assert options["CLIP_stop_at_last_layers"] == 1 and options["samples_format"] == "png"
    response = api.post("options", json={"CLIP_stop_at_last_layers": 2, "jpeg_quality": 90})
    assert response.status_code == 200
    assert api.get("options").json()["CLIP_stop_at_last_layers"] == 2
    assert '"jpeg_quality": 90' in api.services.settings.paths.config_file.read_text()
    txt2img = api.post("txt2img", json={"steps": 1, "width": 64, "height": 64}).json()
    assert "Clip skip: 2" in json.loads(txt2img["info"])["infotexts"][0]


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"CLIP_stop_at_last_layers": 99}, ["CLIP_stop_at_last_layers", "12"]),
        ({"samples_format": "bmp"}, ["samples_format"]),
        ({"sd_vae": "../../../../etc/"}, ["sd_vae", "Automatic"]),
        ({"jpeg_quality": "high"}, ["jpeg_quality"]),
    ],
)
def test_bad_option_values_are_refused_naming_the_option(api: ApiServer, changes, words) -> None:
    response = api.post("options", json=changes)
    assert response.status_code == 400
    for word in words:
        assert word in response.json()["detail"]


def test_options_update_is_all_or_nothing(api: ApiServer) -> None:
    response = api.post("options", json={"CLIP_stop_at_last_layers": 3, "jpeg_quality": 1000})
    assert response.status_code == 400 and "jpeg_quality" in response.json()["detail"]
    assert api.get("options").json()["CLIP_stop_at_last_layers"] == 1


def test_setting_sd_model_checkpoint_switches_the_model(api: ApiServer) -> None:
    folder = api.services.settings.paths.ckpt_dirs[0]
    write_fake_checkpoint(folder, "second-model.safetensors")
    assert api.post("refresh-checkpoints").status_code == 200
    models = api.get("sd-models").json()
    assert len(models) == 2
    second = next(item for item in models if item["model_name"] == "second-model")
    assert api.post("options", json={"sd_model_checkpoint": second["title"]}).status_code == 200
    assert api.engine.loaded[-1] == second["title"]
    assert api.get("options").json()["sd_model_checkpoint"] == second["title"]
    assert api.services.models.selected_title() == second["title"]


# -- listings ---------------------------------------------------------------------------------------


def test_listings_have_a1111_shapes(api: ApiServer) -> None:
    samplers = api.get("samplers").json()
    names = [item["name"] for item in samplers]
    assert "Euler" in names and "Euler a" in names and "DPM++ 2M" in names
    assert all(set(item) == {"name", "aliases", "options"} for item in samplers)
    schedulers = api.get("schedulers").json()
    assert {"name": "karras", "label": "Karras"}.items() <= next(
        item for item in schedulers if item["label"] == "Karras").items()
    (model,) = api.get("sd-models").json()
    assert set(model) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert model["model_name"] == "fake-model" and model["filename"].endswith("fake-model.safetensors")
    assert api.get("sd-vae").json() == []
    assert [item["name"] for item in api.get("upscalers").json()] == ["None", "Lanczos", "Nearest"]
    assert api.get("embeddings").json() == {"loaded": {}, "skipped": {}}
    assert api.get("loras").json() == []
    for empty in ("hypernetworks", "realesrgan-models"):
        assert api.get(empty).json() == []
    assert [item["name"] for item in api.get("face-restorers").json()] == ["CodeFormer", "GFPGAN"]
    assert api.get("latent-upscale-modes").json()[0] == {"name": "Latent"}
    assert api.get("scripts").json() == {
        "txt2img": ["controlnet", "prompt matrix", "prompts from file or textbox", "x/y/z plot"],
        "img2img": ["poor man's outpainting", "controlnet", "prompt matrix", "prompts from file or textbox",
                    "x/y/z plot",
                    "loopback", "sd upscale"]}
    assert api.get("extensions").json() == []
    assert api.get("prompt-styles").json() == []
    memory = api.get("memory").json()
    assert memory["ram"]["total"] > memory["ram"]["used"] > 0
    assert "error" in memory["cuda"]


def test_vae_listing_and_refresh(api: ApiServer) -> None:
    vae_dir = api.services.settings.paths.vae_dir
    (vae_dir / "my-vae.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    assert api.post("refresh-vae").status_code == 200
    assert [item["model_name"] for item in api.get("sd-vae").json()] == ["my-vae.safetensors"]


def test_model_actions(api: ApiServer) -> None:
    assert api.post("reload-checkpoint").status_code == 200
    assert api.engine.loaded  # reloaded the selected model
    assert api.post("unload-checkpoint").status_code == 200
    assert api.engine.loaded == []
    for action in ("refresh-loras", "refresh-embeddings"):
        assert api.post(action).status_code == 200


def test_cmd_flags_never_show_passwords(start_api) -> None:
    api = start_api(gradio_auth=(("admin", "hunter2-secret"),))
    response = api.get("cmd-flags", auth=("admin", "hunter2-secret"))
    assert response.status_code == 200
    assert "hunter2-secret" not in response.text
    assert response.json()["gradio_auth"] == "<set>"


def test_prompt_styles_are_listed_and_applied(api: ApiServer) -> None:
    from sdweb.prompts.styles import PromptStyle

    api.services.styles.save(PromptStyle(name="cinematic", prompt="{prompt}, film grain",
                                         negative_prompt="cartoon"))
    assert api.get("prompt-styles").json() == [
        {"name": "cinematic", "prompt": "{prompt}, film grain", "negative_prompt": "cartoon"}]
    body = api.post("txt2img", json={"prompt": "a harbour", "styles": ["cinematic"], "steps": 1,
                                     "width": 64, "height": 64}).json()
    info = json.loads(body["info"])
    assert info["prompt"] == "a harbour, film grain" and info["negative_prompt"] == "cartoon"
    assert info["styles"] == ["cinematic"]


# -- png-info -------------------------------------------------------------------------------------


def test_png_info_reads_infotext_and_other_chunks(api: ApiServer) -> None:
    text = "a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x768"
    body = api.post("png-info", json={"image": png_b64(text, workflow="{}")}).json()
    assert body["info"] == text
    assert body["items"] == {"workflow": "{}"}
    assert body["parameters"]["Prompt"] == "a cat" and body["parameters"]["Seed"] == "5"
    assert body["parameters"]["Size-1"] == "512"


def test_png_info_parameters_carry_the_keys_an_old_a1111_version_implies(api: ApiServer) -> None:
    """As A1111's parse_generation_parameters: "Automatic backward compatibility" adds them (when on)."""
    text = "a [cat:dog:0.5]\nSteps: 20, Sampler: PLMS, CFG scale: 7, Seed: 5, Size: 512x768, Version: v1.5.1"
    parameters = api.post("png-info", json={"image": png_b64(text)}).json()["parameters"]
    assert parameters["Old prompt editing timelines"] is True and parameters["Pad conds v0"] is True
    assert parameters["Downcast alphas_cumprod"] is True
    assert api.post("options", json={"auto_backcompat": False}).status_code == 200
    parameters = api.post("png-info", json={"image": png_b64(text)}).json()["parameters"]
    assert "Downcast alphas_cumprod" not in parameters and parameters["Version"] == "v1.5.1"


def test_png_info_adds_the_controlnet_extension_keys_per_unit_field(api: ApiServer) -> None:
    text = ('a cat\nSteps: 20, Sampler: Euler a, Seed: 5, Size: 512x768, ControlNet 0: "Module: canny, '
            'Model: control_v11p_sd15_canny [d14c016b], Weight: 0.75, Processor Res: 384, '
            'Pixel Perfect: True, Control Mode: My prompt is more important"')
    parameters = api.post("png-info", json={"image": png_b64(text)}).json()["parameters"]
    assert parameters["ControlNet 0"].startswith("Module: canny, Model: control_v11p")  # as written
    assert (parameters["ControlNet 0 module"], parameters["ControlNet 0 model"]) == (
        "canny", "control_v11p_sd15_canny [d14c016b]")
    assert parameters["ControlNet 0 weight"] == 0.75 and parameters["ControlNet 0 processor_res"] == 384
    assert parameters["ControlNet 0 pixel_perfect"] is True and parameters["ControlNet 0 enabled"] is True
    assert parameters["ControlNet 0 control_mode"] == "My prompt is more important"
    assert parameters["ControlNet 0 resize_mode"] == "Crop and Resize"  # not in the line: the default


def test_png_info_accepts_data_urls_and_images_without_metadata(api: ApiServer) -> None:
    body = api.post("png-info", json={"image": "data:image/png;base64," + png_b64()}).json()
    assert body == {"info": "", "items": {}, "parameters": {}}


def test_png_info_round_trips_a_txt2img_image(api: ApiServer) -> None:
    generated = api.post("txt2img", json={"steps": 1, "width": 64, "height": 64, "seed": 77}).json()
    body = api.post("png-info", json={"image": generated["images"][0]}).json()
    assert body["parameters"]["Seed"] == "77" and body["parameters"]["Steps"] == "1"


@pytest.mark.parametrize("payload", ["not base64 at all!!", base64.b64encode(b"hello").decode(), "",
                                     "data:text/plain;base64,aGVsbG8="])
def test_png_info_broken_input_is_a_400(api: ApiServer, payload: str) -> None:
    response = api.post("png-info", json={"image": payload})
    assert response.status_code == 400
    assert response.json()["detail"].startswith("image: ")


# -- unknown routes ---------------------------------------------------------------------------------


def test_unknown_route_and_wrong_method_are_json_errors(api: ApiServer) -> None:
    response = api.get("no-such-route")
    assert response.status_code == 404 and "no-such-route" in response.json()["detail"]
    response = api.get("txt2img")
    assert response.status_code == 405 and "GET" in response.json()["detail"]


def test_openapi_documents_every_route(api: ApiServer) -> None:
    paths = httpx.get(api.base_url + "/openapi.json").json()["paths"]
    for route in ("txt2img", "png-info", "progress", "options", "sd-models", "memory", "extensions"):
        assert f"/sdapi/v1/{route}" in paths


# -- auth --------------------------------------------------------------------------------------------


def test_api_auth_is_required_when_configured(start_api) -> None:
    api = start_api(api_auth=(("alice", "s3cret"), ("bob", "pässwörd")))
    response = api.get("sd-models")
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Basic")
    assert response.json()["detail"]
    assert api.get("sd-models", auth=("alice", "wrong")).status_code == 401
    assert api.get("sd-models", auth=("mallory", "s3cret")).status_code == 401
    assert api.get("sd-models", auth=("alice", "s3cret")).status_code == 200
    assert api.get("sd-models", auth=("bob", "pässwörd")).status_code == 200
    assert api.get("sd-models", headers={"Authorization": "Basic %%%"}).status_code == 401
    assert api.post("txt2img", json={"steps": 1, "width": 64, "height": 64}).status_code == 401
    assert api.engine.calls == []


def test_ui_credentials_cover_the_api_when_it_has_none(start_api) -> None:
    api = start_api(gradio_auth=(("admin", "pw"),))
    assert api.get("options").status_code == 401
    assert api.get("options", auth=("admin", "pw")).status_code == 200


def test_api_is_open_without_any_credentials(api: ApiServer) -> None:
    assert api.get("options").status_code == 200


# -- text that cannot be written as UTF-8 --------------------------------------------------------------


@pytest.mark.parametrize(("path", "raw", "field"), [
    ("txt2img", b'{"prompt": "a \\ud800 cat", "steps": 1, "width": 64, "height": 64}', "prompt"),
    ("txt2img", b'{"override_settings": {"sd_vae": ["\\udc00"]}}', "override_settings.sd_vae.0"),
    ("options", b'{"sd_vae": "\\ud800"}', "sd_vae"),
    ("png-info", b'{"image": "\\udfff"}', "image"),
])
def test_unpaired_surrogates_are_refused_not_stored(api: ApiServer, path: str, raw: bytes,
                                                    field: str) -> None:
    response = api.post(path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"].startswith(f"{field}: contains an unpaired UTF-16 surrogate")
    assert api.get("options").status_code == 200  # nothing unwritable reached the settings file
    assert api.engine.calls == []


def test_surrogate_pairs_and_non_latin_text_are_fine(api: ApiServer) -> None:
    raw = ('{"prompt": "\\ud83d\\ude00 ein Fuchs im Schnee, 雪の中の狐", '
           '"steps": 1, "width": 64, "height": 64}')
    response = api.post("txt2img", content=raw.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 200
    infotext = json.loads(response.json()["info"])["infotexts"][0]
    assert infotext.startswith("\U0001f600 ein Fuchs im Schnee, 雪の中の狐")
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert image.info["parameters"] == infotext  # iTXt chunk for non-Latin-1 text

"""POST /sdapi/v1/options on a shared server: every option knows what it may hold, changes are all or
nothing, bad values are refused naming the option and its allowed values, clients may post back the
whole dict they read, and config.json's bad values never stop the server (issues 13.1, 13.2, 16.4)."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from tests.api.conftest import ApiServer
from tests.fakes import write_fake_checkpoint


def detail(response) -> str:  # noqa: ANN001
    return str(response.json()["detail"])


def config_of(api: ApiServer) -> Path:
    return api.services.settings.paths.config_file


def test_a_bad_vae_is_refused_and_txt2img_keeps_working(api: ApiServer) -> None:
    """The issue's report: one request with sd_vae '../../../../etc/' broke every txt2img after it."""
    response = api.post("options", json={"sd_vae": "../../../../etc/"})
    assert response.status_code == 400
    text = detail(response)
    assert "sd_vae" in text and "Automatic" in text and "None" in text and "models/VAE" in text
    assert str(api.services.settings.paths.root) not in text  # no absolute server path to a client
    assert api.get("options").json()["sd_vae"] == "Automatic"
    assert api.post("txt2img", json={"steps": 1, "width": 64, "height": 64}).status_code == 200


def test_a_listed_vae_is_accepted_and_an_unlisted_one_names_the_choices(api: ApiServer) -> None:
    vae_dir = api.services.settings.paths.vae_dir
    (vae_dir / "kl-f8.safetensors").write_bytes(b"not read when listing")
    assert api.post("refresh-vae").status_code == 200
    assert api.post("options", json={"sd_vae": "kl-f8.safetensors"}).status_code == 200
    assert api.get("options").json()["sd_vae"] == "kl-f8.safetensors"
    response = api.post("options", json={"sd_vae": "other.pt"})
    assert response.status_code == 400 and "kl-f8.safetensors" in detail(response)
    assert api.post("options", json={"sd_vae": "None"}).status_code == 200


def test_every_bad_value_is_named_and_nothing_is_stored(api: ApiServer) -> None:
    before = api.get("options").json()
    response = api.post("options", json={"CLIP_stop_at_last_layers": 2, "jpeg_quality": 1000,
                                         "samples_format": "bmp", "return_grid": "yes"})
    assert response.status_code == 400
    text = detail(response)
    for words in (["jpeg_quality", "between 1 and 100"], ["samples_format", "png", "webp"],
                  ["return_grid", "true or false"]):
        assert all(word in text for word in words), text
    assert api.get("options").json() == before
    assert not config_of(api).exists()


def test_open_webui_round_trip_keeps_keys_we_lack(start_api: Callable[..., ApiServer]) -> None:
    """GET -> change one key -> POST everything back (Open WebUI's image settings)."""
    api = start_api(config={"sd_checkpoint_cache": 0, "img2img_background_color": "#ffffff"})
    options = api.get("options").json()
    options["CLIP_stop_at_last_layers"] = 2
    options["a1111_only_feature"] = {"nested": [1, 2]}
    response = api.post("options", json=options)
    assert response.status_code == 200, response.text
    after = api.get("options").json()
    assert after["CLIP_stop_at_last_layers"] == 2
    assert after["a1111_only_feature"] == {"nested": [1, 2]} and after["sd_checkpoint_cache"] == 0
    stored = json.loads(config_of(api).read_text(encoding="utf-8"))
    assert stored["img2img_background_color"] == "#ffffff"
    assert stored["a1111_only_feature"]["nested"] == [1, 2]


def test_posting_back_unchanged_values_writes_nothing(api: ApiServer) -> None:
    options = api.get("options").json()
    assert api.post("options", json=options).status_code == 200
    assert not config_of(api).exists()
    assert api.engine.loaded == []  # posting back the checkpoint in use loads nothing


def test_a1111_keys_clients_use_exist(api: ApiServer) -> None:
    options = api.get("options").json()
    for key in ("send_seed", "send_size", "eta_noise_seed_delta", "img2img_color_correction", "return_grid",
                "enable_pnginfo", "outdir_samples", "outdir_txt2img_samples", "outdir_img2img_samples",
                "outdir_grids", "outdir_txt2img_grids", "outdir_img2img_grids", "samples_format",
                "live_previews_image_format", "show_progress_every_n_steps", "sd_checkpoint_hash"):
        assert key in options, key
    assert api.post("options", json={"show_progress_every_n_steps": -1}).status_code == 200
    assert api.post("options", json={"live_previews_image_format": "webp"}).status_code == 200
    assert api.post("options", json={"eta_noise_seed_delta": 31337}).status_code == 200  # ENSD is applied
    response = api.post("options", json={"eta_noise_seed_delta": -1})
    assert response.status_code == 400 and "eta_noise_seed_delta" in detail(response)


def test_sd_model_checkpoint_names_the_model_from_the_start(api: ApiServer) -> None:
    title = api.get("sd-models").json()[0]["title"]
    assert api.get("options").json()["sd_model_checkpoint"] == title  # before anything was loaded
    folder = api.services.settings.paths.ckpt_dirs[0]
    write_fake_checkpoint(folder, "second.safetensors")
    assert api.post("refresh-checkpoints").status_code == 200
    second = next(item for item in api.get("sd-models").json() if item["model_name"] == "second")
    assert api.post("options", json={"sd_model_checkpoint": "second"}).status_code == 200
    assert api.get("options").json()["sd_model_checkpoint"] == second["title"]
    response = api.post("options", json={"sd_model_checkpoint": "../../etc/passwd"})
    assert response.status_code == 404 and "sd_model_checkpoint" in detail(response)
    assert api.get("options").json()["sd_model_checkpoint"] == second["title"]


def _has_parameters(b64: str) -> bool:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    return "parameters" in image.info


def test_enable_pnginfo_off_writes_no_parameters(api: ApiServer) -> None:
    request = {"steps": 1, "width": 64, "height": 64, "save_images": True}
    first = api.post("txt2img", json=request).json()
    assert _has_parameters(first["images"][0])
    assert api.post("options", json={"enable_pnginfo": False}).status_code == 200
    second = api.post("txt2img", json=request).json()
    assert not _has_parameters(second["images"][0])
    saved = sorted((api.services.settings.paths.outputs_dir / "txt2img-images").rglob("*.png"))
    assert len(saved) == 2
    assert "parameters" in Image.open(saved[0]).info and "parameters" not in Image.open(saved[1]).info


def test_return_grid_off_sends_no_grid(api: ApiServer) -> None:
    request = {"steps": 1, "width": 64, "height": 64, "save_images": True, "batch_size": 2}
    assert len(api.post("txt2img", json=request).json()["images"]) == 3
    assert api.post("options", json={"return_grid": False}).status_code == 200
    response = api.post("txt2img", json=request).json()
    assert len(response["images"]) == 2 and json.loads(response["info"])["index_of_first_image"] == 0


# -- config.json ------------------------------------------------------------------------------------


def test_bad_values_in_config_json_are_ignored_reported_and_kept(
    start_api: Callable[..., ApiServer], caplog: pytest.LogCaptureFixture
) -> None:
    config = {"sd_vae": "../../../../etc/", "jpeg_quality": 1000, "CLIP_stop_at_last_layers": 2,
              "outdir_txt2img_samples": "../../escape", "sd_checkpoint_cache": 3}
    with caplog.at_level(logging.WARNING, logger="sdweb.config"):
        api = start_api(config=config)
    text = caplog.text
    assert "sd_vae" in text and "jpeg_quality" in text and "outdir_txt2img_samples" in text
    written = config_of(api).read_bytes()
    options = api.get("options").json()
    assert options["sd_vae"] == "Automatic" and options["jpeg_quality"] == 80
    assert options["CLIP_stop_at_last_layers"] == 2 and options["sd_checkpoint_cache"] == 3
    assert options["outdir_txt2img_samples"] == "outputs/txt2img-images"
    response = api.post("txt2img", json={"steps": 1, "width": 64, "height": 64, "save_images": True})
    assert response.status_code == 200
    assert config_of(api).read_bytes() == written  # not rewritten until the user saves
    assert api.post("options", json={"jpeg_quality": 90}).status_code == 200
    stored = json.loads(config_of(api).read_text(encoding="utf-8"))
    assert stored["jpeg_quality"] == 90 and stored["sd_vae"] == "../../../../etc/"  # kept, still unused


def test_an_unreadable_config_json_is_not_fatal_nor_touched(start_api: Callable[..., ApiServer]) -> None:
    api0 = start_api(config={})
    path = config_of(api0)
    path.write_text('{"jpeg_quality": 9', encoding="utf-8")  # a truncated file
    from sdweb.config import OptionsStore
    from sdweb.option_catalog import BUILTIN_OPTIONS

    store = OptionsStore(path, BUILTIN_OPTIONS)
    assert store.get("jpeg_quality") == 80
    assert path.read_text(encoding="utf-8") == '{"jpeg_quality": 9'
    store.update({"jpeg_quality": 70})
    assert path.with_suffix(".json.bad").read_text(encoding="utf-8") == '{"jpeg_quality": 9'


# -- output folders (13.2) --------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["/tmp/sdweb-elsewhere", "../escape", "..\\..\\escape", "C:\\Windows",
                                   "\\\\host\\share", "a\u0000b", "~/x"])
def test_output_folders_outside_the_data_folder_are_refused(api: ApiServer, value: str) -> None:
    response = api.post("options", json={"outdir_txt2img_samples": value})
    assert response.status_code == 400, response.text
    assert "outdir_txt2img_samples" in detail(response)
    assert api.get("options").json()["outdir_txt2img_samples"] == "outputs/txt2img-images"


def test_an_output_folder_symlinked_outside_is_refused(api: ApiServer, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, api.services.settings.paths.root / "link")
    response = api.post("options", json={"outdir_txt2img_grids": "link/grids"})
    assert response.status_code == 400 and "outdir_txt2img_grids" in detail(response)


def test_output_folders_are_used_relative_to_the_data_folder(api: ApiServer) -> None:
    root = api.services.settings.paths.root
    assert api.post("options", json={"outdir_txt2img_samples": "mine/images",
                                     "outdir_txt2img_grids": "mine\\grids"}).status_code == 200
    request = {"steps": 1, "width": 64, "height": 64, "save_images": True, "batch_size": 2}
    assert api.post("txt2img", json=request).status_code == 200
    assert len(list((root / "mine" / "images").rglob("*.png"))) == 2
    assert len(list((root / "mine" / "grids").rglob("grid-*.png"))) == 1
    assert not list((root / "outputs").rglob("*.png"))


def test_absolute_output_folders_need_the_launch_flag(start_api: Callable[..., ApiServer],
                                                      tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    api = start_api(allow_outdir_anywhere=True)
    assert api.post("options", json={"outdir_samples": str(elsewhere)}).status_code == 200
    request = {"steps": 1, "width": 64, "height": 64, "save_images": True}
    assert api.post("txt2img", json=request).status_code == 200
    assert len(list(elsewhere.rglob("*.png"))) == 1
    assert api.get("cmd-flags").json()["allow_outdir_anywhere"] is True


def test_additional_modules_must_be_listed_files(api: ApiServer) -> None:
    folder = api.services.settings.paths.text_encoder_dir
    response = api.post("options", json={"forge_additional_modules": ["../../etc/passwd"]})
    assert response.status_code == 400
    assert "forge_additional_modules" in detail(response) and "models/text_encoder" in detail(response)
    assert str(folder) not in response.text
    assert api.post("options", json={"forge_additional_modules": []}).status_code == 200


def test_numbers_sent_as_text_are_taken(api: ApiServer) -> None:
    """Some clients send every value as text; A1111 stores it and uses it as a number."""
    response = api.post("options", json={"CLIP_stop_at_last_layers": "2", "eta_ancestral": "0.5"})
    assert response.status_code == 200, response.text
    options = api.get("options").json()
    assert options["CLIP_stop_at_last_layers"] == 2 and options["eta_ancestral"] == 0.5
    for bad in ("two", "nan", "inf", "2.5"):
        response = api.post("options", json={"CLIP_stop_at_last_layers": bad})
        assert response.status_code == 400 and "CLIP_stop_at_last_layers" in detail(response), bad


def test_img2img_uses_its_own_output_folder(api: ApiServer) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 120, 200)).save(buffer, format="PNG")
    init = base64.b64encode(buffer.getvalue()).decode("ascii")
    root = api.services.settings.paths.root
    assert api.post("options", json={"outdir_img2img_samples": "mine/i2i"}).status_code == 200
    response = api.post("img2img", json={"init_images": [init], "steps": 1, "width": 64, "height": 64,
                                         "denoising_strength": 0.5, "save_images": True})
    assert response.status_code == 200, response.text
    assert len(list((root / "mine" / "i2i").rglob("*.png"))) == 1
    assert api.post("options", json={"outdir_samples": "all"}).status_code == 200  # A1111: overrides both
    drawn = api.post("txt2img", json={"steps": 1, "width": 64, "height": 64, "save_images": True})
    assert drawn.status_code == 200
    assert len(list((root / "all").rglob("*.png"))) == 1


def test_keys_we_lack_are_kept_within_bounds(api: ApiServer) -> None:
    response = api.post("options", json={"some_a1111_key": "x" * 70_000})
    assert response.status_code == 400 and "some_a1111_key" in detail(response)
    response = api.post("options", json={f"junk_{index}": index for index in range(2001)})
    assert response.status_code == 400 and "2,000" in detail(response)
    assert not config_of(api).exists()


def test_any_config_json_value_is_survivable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from sdweb.config import OptionsStore
    from sdweb.option_catalog import BUILTIN_OPTIONS

    path = tmp_path / "config.json"
    weird = {"sd_model_checkpoint": None, "outdir_txt2img_samples": 5, "jpeg_quality": "high",
             "forge_additional_modules": "not a list", "samples_save": "yes", "eta_ancestral": "nan",
             "outdir_grids": "a\u0000b", "sd_vae": "x.pt"}
    path.write_text(json.dumps(weird), encoding="utf-8")
    store = OptionsStore(path, BUILTIN_OPTIONS)

    def broken(value: object) -> object:
        raise OSError("the VAE folder is unreadable")

    store.bind("sd_vae", check=broken)  # a check that fails for its own reasons: still not fatal
    assert store.get("jpeg_quality") == 80 and store.get("samples_save") is True
    assert set(store.ignored()) == set(weird)
    assert json.loads(path.read_text(encoding="utf-8")) == weird

"""POST /sdapi/v1/txt2img over HTTP: A1111 defaults, seeds, images with infotext, info keys, saving,
override_settings, infotext, and the 4xx answers for requests we refuse."""

from __future__ import annotations

import base64
import io
import json
import logging

import pytest
from PIL import Image

from tests.api.conftest import ApiServer, detail_text
from tests.fakes import colour_for

SMALL = {"steps": 2, "width": 64, "height": 64}

INFO_KEYS = {
    "prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed", "all_seeds", "subseed",
    "all_subseeds", "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps",
    "batch_size", "restore_faces", "sd_model_name", "sd_model_hash", "sd_vae_name", "sd_vae_hash",
    "seed_resize_from_w", "seed_resize_from_h", "denoising_strength", "extra_generation_params",
    "index_of_first_image", "infotexts", "styles", "job_timestamp", "clip_skip", "version",
}


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
    image.load()
    return image


def txt2img(api: ApiServer, **fields) -> dict:
    response = api.post("txt2img", json={**SMALL, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def test_defaults_are_a1111s_and_the_image_carries_its_infotext(api: ApiServer) -> None:
    body = txt2img(api, prompt="a red fox", seed=7, steps=None)  # null means "the default"
    call = api.engine.calls[0]
    assert (call.steps, call.sampler_name, call.scheduler, call.cfg_scale) == (50, "Euler", "Automatic", 7.0)
    assert len(body["images"]) == 1
    assert not body["images"][0].startswith("data:")
    image = decode(body["images"][0])
    assert image.format == "PNG" and image.size == (64, 64)
    assert image.getpixel((0, 0)) == colour_for(7, "a red fox")
    infotext = image.info["parameters"]
    assert infotext.startswith("a red fox\n")
    assert ("Steps: 50, Sampler: Euler, Schedule type: Automatic, CFG scale: 7, Seed: 7, Size: 64x64"
            in infotext)
    assert "Model hash: 0123456789" in infotext
    # the request is echoed with A1111's defaults filled in
    parameters = body["parameters"]
    assert parameters["prompt"] == "a red fox" and parameters["sampler_index"] == "Euler"
    assert parameters["save_images"] is False and parameters["send_images"] is True
    assert parameters["override_settings_restore_afterwards"] is True


def test_info_is_a_json_string_with_a1111_keys_and_batch_seeds(api: ApiServer) -> None:
    body = txt2img(api, prompt="kites", seed=100, batch_size=2, n_iter=2, negative_prompt="fog")
    info = json.loads(body["info"])
    assert INFO_KEYS <= set(info)
    assert info["all_seeds"] == [100, 101, 102, 103] and info["seed"] == 100
    assert info["all_prompts"] == ["kites"] * 4 and info["all_negative_prompts"] == ["fog"] * 4
    assert info["sd_model_hash"] == "0123456789" and info["sd_model_name"] == "fake-model"
    assert len(info["infotexts"]) == 4 and info["index_of_first_image"] == 0
    assert info["version"] == api.services.version
    for b64, seed, infotext in zip(body["images"], info["all_seeds"], info["infotexts"], strict=True):
        image = decode(b64)
        assert image.getpixel((0, 0)) == colour_for(seed, "kites")
        assert image.info["parameters"] == infotext and f"Seed: {seed}," in infotext


def test_random_seed_is_reported(api: ApiServer) -> None:
    info = json.loads(txt2img(api, seed=-1)["info"])
    assert 0 <= info["seed"] <= 4_294_967_294
    assert info["all_seeds"] == [info["seed"]]


def test_images_are_saved_only_when_asked(api: ApiServer) -> None:
    outputs = api.services.settings.paths.outputs_dir
    txt2img(api, seed=1)
    assert list(outputs.rglob("*.png")) == []
    txt2img(api, seed=2, save_images=True)
    saved = list(outputs.rglob("*.png"))
    assert len(saved) == 1 and saved[0].name.endswith("-2.png")
    with Image.open(saved[0]) as image:
        assert "Seed: 2" in image.info["parameters"]


def test_send_images_false_answers_info_only(api: ApiServer) -> None:
    body = txt2img(api, seed=3, send_images=False)
    assert body["images"] == []
    assert json.loads(body["info"])["all_seeds"] == [3]


def test_sampler_aliases_and_pre_1_9_names(api: ApiServer) -> None:
    txt2img(api, sampler_name="k_euler_a")
    txt2img(api, sampler_index="DPM++ 2M Karras")  # pre-1.9 name carrying its schedule
    txt2img(api, sampler_name="", sampler_index="LMS", scheduler="", force_task_id="")  # "" is "not given"
    assert [call.sampler_name for call in api.engine.calls] == ["Euler a", "DPM++ 2M", "LMS"]
    assert [call.scheduler for call in api.engine.calls] == ["Automatic", "Karras", "Automatic"]


def test_override_settings_clip_skip_is_per_request(api: ApiServer) -> None:
    body = txt2img(api, seed=5, override_settings={"CLIP_stop_at_last_layers": 2})
    assert "Clip skip: 2" in json.loads(body["info"])["infotexts"][0]
    assert api.engine.calls[0].clip_skip == 2
    assert api.get("options").json()["CLIP_stop_at_last_layers"] == 1  # restored afterwards

    txt2img(api, override_settings={"CLIP_stop_at_last_layers": 3},
            override_settings_restore_afterwards=False)
    assert api.get("options").json()["CLIP_stop_at_last_layers"] == 3


def test_override_settings_that_would_change_the_image_are_refused(api: ApiServer) -> None:
    response = api.post("txt2img", json={**SMALL, "override_settings": {"token_merging_ratio": 0.5}})
    assert response.status_code == 422 and "token_merging_ratio" in response.json()["detail"]
    response = api.post("txt2img", json={**SMALL, "override_settings": {"CLIP_stop_at_last_layers": 40}})
    assert response.status_code == 422
    assert "override_settings.CLIP_stop_at_last_layers" in response.json()["detail"]
    # settings that do not change the image are accepted (and ignored)
    txt2img(api, override_settings={"samples_format": "jpg", "some_a1111_only_setting": True})
    assert api.engine.calls and len(api.engine.calls) == 1


def test_unipc_settings_come_from_override_settings_the_infotext_or_the_options(api: ApiServer) -> None:
    txt2img(api, sampler_name="UniPC", override_settings={"uni_pc_order": 2.0, "uni_pc_variant": "bh2"})
    call = api.engine.calls[-1]
    assert (call.uni_pc_order, call.uni_pc_variant, call.uni_pc_skip_type) == (2, "bh2", "time_uniform")
    assert api.get("options").json()["uni_pc_order"] == 3  # restored afterwards
    infotext = "a fox\nSteps: 3, Sampler: UniPC, CFG scale: 5, Seed: 1, Size: 64x64, UniPC skip type: logSNR"
    txt2img(api, infotext=infotext, override_settings={})
    assert api.engine.calls[-1].uni_pc_skip_type == "logSNR"
    response = api.post("txt2img", json={**SMALL, "override_settings": {"uni_pc_variant": "bh3"}})
    assert response.status_code == 422 and "uni_pc_variant" in response.json()["detail"]
    # ComfyUI's "uni_pc_bh2" (SillyTavern sends one name to both) is UniPC with variant bh2
    txt2img(api, sampler_name="uni_pc_bh2")
    assert (api.engine.calls[-1].sampler_name, api.engine.calls[-1].uni_pc_variant) == ("UniPC", "bh2")
    txt2img(api, sampler_name="uni_pc")
    assert (api.engine.calls[-1].sampler_name, api.engine.calls[-1].uni_pc_variant) == ("UniPC", "bh1")
    assert api.post("options", json={"uni_pc_lower_order_final": False}).status_code == 200
    txt2img(api, sampler_name="UniPC")
    assert api.engine.calls[-1].uni_pc_lower_order_final is False


def test_infotext_fills_unset_fields(api: ApiServer) -> None:
    infotext = ("a fox in snow\nNegative prompt: blurry\n"
                "Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5, Seed: 42, Size: 64x64, "
                "Clip skip: 2, Model hash: 0123456789, Model: fake-model")
    body = txt2img(api, infotext=infotext, steps=2)
    call = api.engine.calls[0]
    assert (call.prompt, call.negative_prompt) == ("a fox in snow", "blurry")
    assert (call.seed, call.cfg_scale) == (42, 5.0) and call.checkpoint.startswith("fake-model.safetensors")
    assert (call.sampler_name, call.scheduler, call.clip_skip) == ("DPM++ 2M", "Karras", 2)
    assert call.steps == 2  # the request's own value wins
    assert "Seed: 42" in json.loads(body["info"])["infotexts"][0]


def test_infotext_noise_fields_are_applied_not_left_to_the_settings(api: ApiServer) -> None:
    """ENSD and RNG of an A1111 image are honoured; without an RNG key, A1111's default GPU noise."""
    base = "a fox\nSteps: 3, Sampler: Euler a, CFG scale: 5, Seed: 1, Size: 64x64"
    txt2img(api, infotext=f"{base}, ENSD: 31337, RNG: CPU")
    call = api.engine.calls[-1]
    assert (call.eta_noise_seed_delta, call.rng, call.sampler_path) == (31337, "CPU", "A1111")
    assert api.post("options", json={"eta_noise_seed_delta": 5, "randn_source": "CPU"}).status_code == 200
    txt2img(api, infotext=base)
    call = api.engine.calls[-1]
    # no ENSD key: none was used; no RNG key: GPU noise, reproduced by NV where there is no CUDA
    assert call.eta_noise_seed_delta == 0 and call.rng == api.services.pasted_gpu_rng()
    txt2img(api, infotext=f"{base}, RNG: NV, Sampler path: diffusers", override_settings={})
    assert (api.engine.calls[-1].rng, api.engine.calls[-1].sampler_path) == ("NV", "diffusers")


def test_an_old_a1111_infotext_brings_the_compatibility_settings_of_its_version(api: ApiServer) -> None:
    """A1111's "Automatic backward compatibility" (auto_backcompat): a 1.5.1 infotext with prompt editing
    is remade on the old timelines and fp16 alphas_cumprod, and the new image says so."""
    infotext = ("a [red:blue:0.5] fox\nSteps: 3, Sampler: DDIM, CFG scale: 5, Seed: 1, Size: 64x64, "
                "Version: v1.5.1")
    body = txt2img(api, infotext=infotext, save_images=True)
    call = api.engine.calls[-1]
    assert (call.use_old_scheduling, call.use_downcasted_alpha_bar, call.pad_cond_uncond_v0) == (
        True, True, True)
    saved = list(api.services.settings.paths.outputs_dir.rglob("*.png"))
    assert len(saved) == 1
    with Image.open(saved[0]) as image:
        on_disk = image.info["parameters"]
    assert decode(body["images"][0]).info["parameters"] == on_disk
    for key in ("Old prompt editing timelines: True", "Downcast alphas_cumprod: True", "Pad conds v0: True"):
        assert key in on_disk
    txt2img(api, infotext=infotext.replace("v1.5.1", "v1.7.0-225-g1234abcd"))
    call = api.engine.calls[-1]
    assert (call.use_old_scheduling, call.use_downcasted_alpha_bar, call.pad_cond_uncond_v0) == (
        False, False, False)
    assert api.post("options", json={"auto_backcompat": False}).status_code == 200
    body = txt2img(api, infotext=infotext)
    call = api.engine.calls[-1]
    assert (call.use_old_scheduling, call.use_downcasted_alpha_bar) == (False, False)
    assert "Downcast alphas_cumprod" not in decode(body["images"][0]).info["parameters"]


def test_sampler_parameters_and_cfg_skipping_are_honoured_and_written(api: ApiServer) -> None:
    """A1111's request fields s_churn, s_tmin, s_tmax, s_noise, s_min_uncond (and the settings of those
    names, skip_early_cond, s_min_uncond_all) reach the engine and the saved image's infotext."""
    body = txt2img(api, sampler_name="Euler", s_churn=0.5, s_tmin=0.1, s_tmax=0, s_noise=1.003,
                   s_min_uncond=2.5)
    call = api.engine.calls[-1]
    assert (call.s_churn, call.s_tmin, call.s_tmax, call.s_noise, call.s_min_uncond) == (
        0.5, 0.1, 0.0, 1.003, 2.5)
    written = decode(body["images"][0]).info["parameters"]
    for pair in ("Sigma churn: 0.5", "Sigma tmin: 0.1", "Sigma noise: 1.003", "NGMS: 2.5"):
        assert pair in written
    assert "Sigma tmax" not in written  # 0: infinity, the default
    # Unset fields are the settings; override_settings and a pasted infotext set them for one request.
    assert api.post("options", json={"s_churn": 1.5, "skip_early_cond": 0.25}).status_code == 200
    txt2img(api, sampler_name="Euler")
    call = api.engine.calls[-1]
    assert (call.s_churn, call.skip_early_cond, call.s_noise, call.s_min_uncond_all) == (
        1.5, 0.25, 1.0, False)
    txt2img(api, sampler_name="Euler", override_settings={"s_churn": 0.0, "s_min_uncond_all": True})
    assert (api.engine.calls[-1].s_churn, api.engine.calls[-1].s_min_uncond_all) == (0.0, True)
    infotext = ("a fox\nSteps: 3, Sampler: Heun, CFG scale: 5, Seed: 1, Size: 64x64, Sigma churn: 0.7, "
                "Skip Early CFG: 0.1")
    body = txt2img(api, infotext=infotext)
    call = api.engine.calls[-1]
    assert (call.sampler_name, call.s_churn, call.skip_early_cond, call.s_min_uncond) == (
        "Heun", 0.7, 0.1, 0.0)
    written = decode(body["images"][0]).info["parameters"]
    assert "Sigma churn: 0.7" in written and "Skip Early CFG: 0.1" in written
    response = api.post("txt2img", json={**SMALL, "s_churn": -0.5})
    assert response.status_code == 422 and "s_churn" in response.json()["detail"]
    assert "override_settings" not in response.json()["detail"]  # the request's own field is named
    response = api.post("txt2img", json={**SMALL, "override_settings": {"skip_early_cond": 2}})
    assert response.status_code == 422 and "override_settings.skip_early_cond" in response.json()["detail"]


def test_override_settings_ensd_and_rng_apply_to_the_request(api: ApiServer) -> None:
    txt2img(api, override_settings={"eta_noise_seed_delta": 31337, "randn_source": "NV"})
    call = api.engine.calls[-1]
    assert (call.eta_noise_seed_delta, call.rng) == (31337, "NV")
    assert api.get("options").json()["eta_noise_seed_delta"] == 0  # restored afterwards


def test_infotext_with_a_setting_we_cannot_apply_is_refused_naming_it(api: ApiServer) -> None:
    infotext = ("a fox\nSteps: 3, Sampler: DPM2, CFG scale: 5, Seed: 1, Size: 64x64, "
                "Token merging ratio: 0.5")
    response = api.post("txt2img", json={**SMALL, "infotext": infotext})
    assert response.status_code == 422 and "Token merging ratio" in response.json()["detail"]


def test_infotext_schedule_settings_reach_the_request_and_its_infotext(api: ApiServer) -> None:
    infotext = ("a fox\nSteps: 3, Sampler: Euler, Schedule type: Karras, CFG scale: 5, Seed: 1, Size: 64x64, "
                "Discard penultimate sigma: True, Schedule rho: 5.5, Schedule max sigma: 10, "
                "SGM noise multiplier: True")
    response = api.post("txt2img", json={**SMALL, "infotext": infotext})
    assert response.status_code == 200, response.text
    call = api.engine.calls[-1]
    assert (call.always_discard_next_to_last_sigma, call.rho, call.sigma_max) == (True, 5.5, 10.0)
    assert (call.sgm_noise_multiplier, call.sigma_min) == (True, 0.0)
    written = json.loads(response.json()["info"])["infotexts"][0]
    for pair in ("Schedule rho: 5.5", "Schedule max sigma: 10", "Discard penultimate sigma: True",
                 "SGM noise multiplier: True"):
        assert pair in written


def test_infotext_using_a_hires_fix_checkpoint_is_refused(api: ApiServer) -> None:
    infotext = ("a fox\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 1, Size: 64x64, Hires upscale: 2, "
                "Hires checkpoint: other")
    response = api.post("txt2img", json={**SMALL, "infotext": infotext})
    assert response.status_code == 422 and "hires fix checkpoint" in response.json()["detail"]
    assert api.engine.calls == []


@pytest.mark.parametrize(
    ("fields", "status", "words"),
    [
        ({"width": 4}, 422, ["width", "greater than or equal to 8"]),
        ({"width": 8192, "height": 8192}, 422, ["8192x8192", "megapixels", "api_max_megapixels"]),
        ({"steps": 20_000}, 422, ["steps", "10000"]),
        ({"steps": 0}, 422, ["steps"]),
        ({"batch_size": 65}, 422, ["batch_size", "64"]),
        ({"n_iter": 0}, 422, ["n_iter"]),
        ({"cfg_scale": "lots"}, 422, ["cfg_scale"]),
        ({"seed": "abc"}, 422, ["seed"]),
        ({"prompt": "x" * 1_000_000}, 422, ["prompt"]),
        ({"enable_hr": True, "hr_upscaler": "Wobbly"}, 400, ["Wobbly"]),
        ({"enable_hr": True, "hr_checkpoint_name": "x"}, 422, ["hr_checkpoint_name", "not supported yet"]),
        ({"script_name": "wobble plot"}, 422, ["wobble plot"]),
        ({"alwayson_scripts": {"ADetailer": {"args": []}}}, 422, ["ADetailer"]),
        ({"override_settings": {"sd_model_checkpoint": "missing.safetensors"}}, 404,
         ["Model not found", "missing.safetensors"]),
    ],
)
def test_bad_requests_get_a_4xx_json_error_naming_the_problem(api: ApiServer, fields, status, words) -> None:
    response = api.post("txt2img", json={**SMALL, **fields})
    assert response.status_code == status, response.text
    body = response.json()
    if isinstance(body["detail"], list):  # a field the schema refuses: FastAPI's list, as A1111's
        assert set(body) == {"detail"} and {"loc", "msg", "type"} <= set(body["detail"][0])
    else:  # A1111's HTTPException shape
        assert body["error"] == "HTTPException" and body["body"] == ""
        assert body["errors"] == f"{status}: {body['detail']}"
    for word in words:
        assert word in detail_text(body)
    assert len(response.content) < 20_000  # a 1 MB prompt is not echoed back
    assert api.engine.calls == []
    assert api.get("sd-models").status_code == 200  # still serving


def test_malformed_json_is_a_422_naming_the_body(api: ApiServer) -> None:
    response = api.post("txt2img", content=b'{"prompt": "cat",', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"
    response = api.post("txt2img", content=b"[1, 2]", headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_unknown_fields_are_ignored_and_logged(api: ApiServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sdweb.api.request_params"):
        txt2img(api, prompt="x", my_custom_field=1, do_not_save_grid=True)
    assert "my_custom_field" in caplog.text and "do_not_save_grid" in caplog.text
    assert "my_custom_field" not in txt2img(api)["parameters"]


def test_unknown_model_is_refused_and_the_current_one_stays(api: ApiServer) -> None:
    before = api.services.models.selected_title()
    response = api.post("txt2img", json={**SMALL, "override_settings": {"sd_model_checkpoint": "nope"}})
    assert response.status_code == 404
    assert api.services.models.selected_title() == before
    response = api.post("options", json={"sd_model_checkpoint": "nope"})
    assert response.status_code == 404 and "nope" in response.json()["detail"]
    assert api.services.models.selected_title() == before


def test_override_checkpoint_is_per_request(api: ApiServer) -> None:
    from tests.fakes import write_fake_checkpoint

    write_fake_checkpoint(api.services.settings.paths.ckpt_dirs[0], "second-model.safetensors")
    assert api.post("refresh-checkpoints").status_code == 200
    before = api.services.models.selected_title()
    txt2img(api, override_settings={"sd_model_checkpoint": "second-model"})
    assert api.engine.calls[0].checkpoint.startswith("second-model.safetensors")
    assert api.services.models.selected_title() == before  # restored afterwards
    txt2img(api, override_settings={"sd_model_checkpoint": "second-model"},
            override_settings_restore_afterwards=False)
    assert api.services.models.selected_title().startswith("second-model.safetensors")


def test_force_task_id_is_the_job_id_and_cannot_be_reused(api: ApiServer) -> None:
    txt2img(api, force_task_id="my-task-1")
    progress = api.get("progress", params={"id_task": "my-task-1"}).json()
    assert progress["progress"] == 1.0 and progress["state"]["job_id"] == "my-task-1"
    response = api.post("txt2img", json={**SMALL, "force_task_id": "my-task-1"})
    assert response.status_code == 400 and "my-task-1" in response.json()["detail"]


def test_engine_failure_is_a_json_error_and_the_server_keeps_serving(api: ApiServer) -> None:
    api.engine.fail_with = RuntimeError("CUDA out of memory")
    response = api.post("txt2img", json=SMALL)
    assert response.status_code == 507
    assert "out of memory" in response.json()["detail"]
    api.engine.fail_with = None
    txt2img(api)

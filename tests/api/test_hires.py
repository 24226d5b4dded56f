"""Hires fix over POST /sdapi/v1/txt2img: A1111's fields reach the engine, the infotext carries both
passes, an infotext with hires keys turns it on, the second pass's own prompt and sampler are used and
written, and a second-pass checkpoint of its own is refused."""

from __future__ import annotations

import json

from tests.api.conftest import ApiServer, detail_text

SMALL = {"steps": 3, "width": 64, "height": 64, "seed": 3}


def test_hires_fields_reach_the_engine_and_the_infotext(api: ApiServer) -> None:
    response = api.post("txt2img", json={**SMALL, "enable_hr": True, "hr_scale": 1.5,
                                         "hr_upscaler": "lanczos", "hr_second_pass_steps": 6,
                                         "denoising_strength": 0.4,
                                         "hr_sampler_name": "Use same sampler", "hr_prompt": ""})
    assert response.status_code == 200, response.text
    call = api.engine.calls[-1]
    assert (call.enable_hr, call.hr_scale, call.hr_upscaler, call.hr_second_pass_steps,
            call.denoising_strength) == (True, 1.5, "Lanczos", 6, 0.4)
    info = json.loads(response.json()["info"])
    assert info["denoising_strength"] == 0.4
    assert "Denoising strength: 0.4, " in info["infotexts"][0]
    assert "Hires upscale: 1.5, Hires steps: 6, Hires upscaler: Lanczos" in info["infotexts"][0]


def test_hires_defaults_are_a1111s_and_off_means_off(api: ApiServer) -> None:
    assert api.post("txt2img", json={**SMALL, "enable_hr": True}).status_code == 200
    call = api.engine.calls[-1]
    assert (call.hr_scale, call.hr_upscaler, call.hr_second_pass_steps, call.denoising_strength) == (
        2.0, "Latent", 0, 0.75)
    assert api.post("txt2img", json={**SMALL, "hr_scale": 3}).status_code == 200
    assert api.engine.calls[-1].enable_hr is False
    assert json.loads(api.post("txt2img", json=SMALL).json()["info"])["denoising_strength"] is None


def test_an_infotext_with_hires_keys_turns_hires_fix_on(api: ApiServer) -> None:
    infotext = ("a fox\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 1, Size: 64x64, "
                "Denoising strength: 0.3, Hires resize: 128x96, Hires steps: 7, "
                "Hires upscaler: Latent (nearest)")
    response = api.post("txt2img", json={"infotext": infotext})
    assert response.status_code == 200, response.text
    call = api.engine.calls[-1]
    assert (call.enable_hr, call.hr_resize_x, call.hr_resize_y, call.hr_second_pass_steps, call.hr_upscaler,
            call.denoising_strength) == (True, 128, 96, 7, "Latent (nearest)", 0.3)


def test_bad_hires_values_are_refused_naming_the_field(api: ApiServer) -> None:
    for fields, words in [({"hr_scale": 17}, ["hr_scale"]),
                          ({"denoising_strength": 2}, ["denoising_strength"]),
                          ({"hr_checkpoint_name": "other.safetensors"}, ["hr_checkpoint_name"]),
                          ({"hr_upscaler": "Wobbly 3x"}, ["'Wobbly 3x' not found", "Latent"])]:
        response = api.post("txt2img", json={**SMALL, "enable_hr": True, **fields})
        assert response.status_code == (400 if "hr_upscaler" in fields else 422), response.text
        assert all(word in detail_text(response.json()) for word in words)
    assert api.engine.calls == []


def test_second_pass_prompt_and_sampler_reach_the_engine_and_the_infotext(api: ApiServer) -> None:
    response = api.post("txt2img", json={**SMALL, "prompt": "a fox", "negative_prompt": "blur",
                                         "enable_hr": True, "hr_prompt": "a fox, detailed fur",
                                         "hr_negative_prompt": "blur, noise",
                                         "hr_sampler_name": "k_dpmpp_2m", "hr_scheduler": "karras"})
    assert response.status_code == 200, response.text
    call = api.engine.calls[-1]
    assert (call.hr_prompt, call.hr_negative_prompt) == ("a fox, detailed fur", "blur, noise")
    assert (call.hr_sampler_name, call.hr_scheduler) == ("DPM++ 2M", "Karras")  # canonical names
    infotext = json.loads(response.json()["info"])["infotexts"][0]
    assert infotext.startswith("a fox\nNegative prompt: blur\n")  # the first pass's prompt stays the prompt
    assert ('Hires sampler: DPM++ 2M, Hires prompt: "a fox, detailed fur", '
            'Hires negative prompt: "blur, noise", Hires schedule type: Karras') in infotext


def test_use_same_sampler_and_empty_prompts_mean_the_first_passs(api: ApiServer) -> None:
    response = api.post("txt2img", json={**SMALL, "enable_hr": True, "hr_sampler_name": "Use same sampler",
                                         "hr_scheduler": "Use same scheduler", "hr_prompt": ""})
    assert response.status_code == 200, response.text
    call = api.engine.calls[-1]
    assert (call.hr_sampler_name, call.hr_scheduler, call.hr_prompt) == ("", "", "")
    assert "Hires sampler" not in json.loads(response.json()["info"])["infotexts"][0]


def test_an_infotext_with_a_hires_prompt_and_sampler_is_applied(api: ApiServer) -> None:
    infotext = ("a fox\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 1, Size: 64x64, Hires upscale: 1.5, "
                'Hires upscaler: Latent, Hires sampler: DPM++ 2M Karras, Hires prompt: "a wolf, moon"')
    response = api.post("txt2img", json={"infotext": infotext})
    assert response.status_code == 200, response.text
    call = api.engine.calls[-1]
    assert (call.enable_hr, call.hr_prompt, call.hr_sampler_name, call.hr_scheduler) == (
        True, "a wolf, moon", "DPM++ 2M", "Karras")

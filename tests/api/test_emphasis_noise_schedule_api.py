"""A1111's "Emphasis mode" and "Noise schedule for sampling" through the API: the options fill the request,
override_settings (A1111's option names) change them for one request, a pasted infotext's keys apply, and
a value A1111 has no mode for is a 422 naming the option."""

from __future__ import annotations

from tests.api.conftest import ApiServer

SMALL = {"steps": 2, "width": 64, "height": 64}


def _call(api: ApiServer, **fields):
    response = api.post("txt2img", json={**SMALL, **fields})
    assert response.status_code == 200, response.text
    return api.engine.calls[-1]


def test_the_settings_fill_the_request(api: ApiServer) -> None:
    call = _call(api, prompt="(a fox:1.2)")
    assert (call.emphasis, call.sd_noise_schedule) == ("Original", "Default")  # A1111's defaults
    assert api.post("options", json={"emphasis": "No norm", "sd_noise_schedule": "Zero Terminal SNR"}
                    ).status_code == 200
    call = _call(api, prompt="(a fox:1.2)")
    assert (call.emphasis, call.sd_noise_schedule) == ("No norm", "Zero Terminal SNR")


def test_override_settings_apply_for_one_request(api: ApiServer) -> None:
    call = _call(api, override_settings={"emphasis": "None", "sd_noise_schedule": "Zero Terminal SNR"})
    assert (call.emphasis, call.sd_noise_schedule) == ("None", "Zero Terminal SNR")
    options = api.get("options").json()
    assert (options["emphasis"], options["sd_noise_schedule"]) == ("Original", "Default")


def test_a_pasted_infotext_brings_its_emphasis_and_noise_schedule(api: ApiServer) -> None:
    base = "(a fox:1.2)\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 1, Size: 64x64"
    keys = "Emphasis: No norm, Noise Schedule: Zero Terminal SNR, Version: v1.10.1"
    call = _call(api, infotext=f"{base}, {keys}")
    assert (call.emphasis, call.sd_noise_schedule) == ("No norm", "Zero Terminal SNR")
    assert api.post("options", json={"emphasis": "Ignore"}).status_code == 200
    call = _call(api, infotext=f"{base}, Version: v1.10.1")  # absent: A1111's defaults where it was made
    assert (call.emphasis, call.sd_noise_schedule) == ("Original", "Default")


def test_an_unknown_mode_is_a_422_naming_the_field(api: ApiServer) -> None:
    for field in ("emphasis", "sd_noise_schedule"):
        response = api.post("txt2img", json={**SMALL, "override_settings": {field: "Loud"}})
        assert response.status_code == 422 and field in response.text

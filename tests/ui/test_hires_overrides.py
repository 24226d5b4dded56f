"""The txt2img Hires. fix accordion's own prompt and sampler: form -> request, infotext -> form, the
sampler lists ("Use same sampler" first), and the page building with them."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from sdweb.ui.app import build_ui
from sdweb.ui.fields import FORM_DEFAULTS, form_from_infotext, params_from_form
from sdweb.ui.sections.hires import hires_sampler_choices
from tests.fakes import make_services


def test_the_accordions_override_fields_reach_the_request() -> None:
    values = dict(FORM_DEFAULTS, prompt="a fox", enable_hr=True, hr_prompt="a fox, fur",
                  hr_negative_prompt="noise", hr_sampler_name="DDIM", hr_scheduler="Karras")
    params = params_from_form(values)
    assert (params.hr_prompt, params.hr_negative_prompt) == ("a fox, fur", "noise")
    assert (params.hr_sampler_name, params.hr_scheduler) == ("DDIM", "Karras")
    # The dropdowns' "Use same ..." choice is "", the request's "same as the first pass".
    same = params_from_form(dict(values, hr_sampler_name="", hr_scheduler="", hr_prompt=""))
    assert (same.hr_sampler_name, same.hr_scheduler, same.hr_prompt) == ("", "", "")


def test_png_info_send_to_txt2img_restores_every_hires_setting() -> None:
    text = ("a fox\nNegative prompt: blur\n"
            "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x384, Denoising strength: 0.45, "
            "Hires resize: 768x576, Hires steps: 8, Hires upscaler: Lanczos, "
            'Hires sampler: DPM++ 2M, Hires prompt: "a fox, fur", Hires negative prompt: noise, '
            "Hires schedule type: Karras, Version: v1.10.1")
    pasted = form_from_infotext(text)
    assert pasted.notes == []
    params = params_from_form(pasted.values)
    assert (params.enable_hr, params.denoising_strength, params.hr_second_pass_steps) == (True, 0.45, 8)
    assert (params.hr_resize_x, params.hr_resize_y, params.hr_upscaler) == (768, 576, "Lanczos")
    assert (params.hr_prompt, params.hr_negative_prompt) == ("a fox, fur", "noise")
    assert (params.hr_sampler_name, params.hr_scheduler) == ("DPM++ 2M", "Karras")


def test_a_paste_without_overrides_clears_old_ones() -> None:
    pasted = form_from_infotext("a dog\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 512x512")
    assert (pasted.values["hr_prompt"], pasted.values["hr_sampler_name"]) == ("", "")


def test_sampler_lists_offer_the_first_passs_first() -> None:
    samplers, schedules = hires_sampler_choices(["Euler", "DDIM"], ["Automatic", "Karras"])
    assert samplers == [("Use same sampler", ""), ("Euler", "Euler"), ("DDIM", "DDIM")]
    assert schedules[0] == ("Use same scheduler", "") and schedules[-1] == ("Karras", "Karras")


def test_the_page_has_the_override_controls(tmp_path: Path) -> None:
    services, _ = make_services(tmp_path)
    try:
        demo = build_ui(services)
        ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
        assert {"txt2img-hr-sampler", "txt2img-hr-scheduler", "txt2img-hr-prompt",
                "txt2img-hr-negative-prompt"} <= ids
        assert isinstance(demo, gr.Blocks)
    finally:
        services.worker.close()


def test_second_pass_settings_this_program_lacks_are_named_in_a_note() -> None:
    pasted = form_from_infotext("a dog\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 512x512, "
                                "Hires upscale: 2, Hires checkpoint: other_model, Hires CFG Scale: 4")
    assert pasted.values["enable_hr"] is True and pasted.values["hr_scale"] == 2
    assert any("Hires checkpoint 'other_model' is not supported" in note for note in pasted.notes)
    assert any("Hires CFG Scale" in note for note in pasted.notes)

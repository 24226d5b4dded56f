"""The shared form controls: the sampler dropdowns keep a user's pick, and both tabs get the same controls."""

from __future__ import annotations

from typing import Any

import gradio as gr

from sdweb.ui.controls import (
    MAX_SIDE,
    render_sampler_and_steps,
    render_size_sliders,
    sampler_dropdown_updates,
)
from sdweb.ui.fields import FORM_DEFAULTS


def _dropdowns() -> dict[str, Any]:
    return {"sampler_name": object(), "scheduler": object()}


def test_sampler_updates_keep_the_current_pick_when_it_is_offered() -> None:
    form = _dropdowns()
    updates = sampler_dropdown_updates(
        form, ["Euler", "DPM++ 2M"], ["Automatic", "Karras"], "DPM++ 2M", "Karras"
    )
    assert updates[form["sampler_name"]]["value"] == "DPM++ 2M"
    assert updates[form["sampler_name"]]["choices"] == ["Euler", "DPM++ 2M"]
    assert updates[form["scheduler"]]["value"] == "Karras"


def test_sampler_updates_show_the_first_choice_for_a_pick_that_is_gone() -> None:
    form = _dropdowns()
    updates = sampler_dropdown_updates(form, ["Euler"], ["Automatic"], "Gone sampler", "Gone schedule")
    assert updates[form["sampler_name"]]["value"] == "Euler"
    assert updates[form["scheduler"]]["value"] == "Automatic"


def test_sampler_updates_with_no_choices_keep_the_pick() -> None:
    form = _dropdowns()
    updates = sampler_dropdown_updates(form, [], [], "Euler", "Automatic")
    assert updates[form["sampler_name"]]["value"] == "Euler"
    assert updates[form["scheduler"]]["value"] == "Automatic"


def test_controls_carry_the_tab_prefix_in_their_elem_ids() -> None:
    form: dict[str, Any] = {}
    with gr.Blocks():
        render_sampler_and_steps(form, FORM_DEFAULTS, prefix="img2img")
        render_size_sliders(form, FORM_DEFAULTS, prefix="img2img")
    ids = {name: component.elem_id for name, component in form.items()}
    assert ids == {
        "sampler_name": "img2img-sampler",
        "scheduler": "img2img-scheduler",
        "steps": "img2img-steps",
        "width": "img2img-width",
        "height": "img2img-height",
    }
    assert form["width"].maximum == MAX_SIDE == 2048

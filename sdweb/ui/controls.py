"""Form controls that several tabs lay out the same way.

txt2img and img2img ask for the same generation parameters (sampler, steps, size, batch, CFG, seed);
the Gallery and History tabs page through their listings with the same page box. Each function here
makes one such group with the tab's ``elem_id`` prefix (``"txt2img"`` -> ``txt2img-steps``), so the
ranges and labels cannot drift apart between tabs. Layout (rows, columns, extra buttons) stays with
the caller: the functions place their components in whatever container is open when they are called.
Components that fill the request are put into ``form`` under their field name
(:data:`sdweb.ui.fields.FORM_FIELDS`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import gradio as gr

from sdweb.params import (
    A1111_COMPAT_INFOTEXT,
    CFG_SKIP_NUMBERS,
    EMPHASIS_MODES,
    NOISE_SCHEDULES,
    SCHEDULE_SETTINGS,
    SIGMA_INFOTEXT,
)
from sdweb.ui.fields import SWITCH_CHOICES

logger = logging.getLogger(__name__)

#: Largest width/height the forms allow (GenerationParams' bound).
MAX_SIDE = 2048


def render_sampler_and_steps(form: dict[str, Any], defaults: Mapping[str, Any], *, prefix: str) -> None:
    """A row with the sampler and schedule dropdowns, then the steps slider.

    The dropdowns start with only the default as a choice; the tab fills in the real list on load.
    """
    with gr.Row():
        form["sampler_name"] = gr.Dropdown(
            label="Sampling method",
            choices=[defaults["sampler_name"]],
            value=defaults["sampler_name"],
            elem_id=f"{prefix}-sampler",
        )
        form["scheduler"] = gr.Dropdown(
            label="Schedule type",
            choices=[defaults["scheduler"]],
            value=defaults["scheduler"],
            elem_id=f"{prefix}-scheduler",
        )
    form["steps"] = gr.Slider(
        1, 150, value=defaults["steps"], step=1, label="Sampling steps", elem_id=f"{prefix}-steps"
    )


def sampler_dropdown_updates(
    form: Mapping[str, Any], samplers: list[str], schedules: list[str], sampler: str, schedule: str
) -> dict[Any, Any]:
    """Updates that give the sampler and schedule dropdowns the real choices.

    The current pick is kept when it is still offered, otherwise the first choice is shown; an empty
    list keeps the pick as it was.
    """
    return {
        form["sampler_name"]: gr.update(
            choices=samplers,
            value=sampler if sampler in samplers else (samplers[0] if samplers else sampler),
        ),
        form["scheduler"]: gr.update(
            choices=schedules,
            value=schedule if schedule in schedules else (schedules[0] if schedules else schedule),
        ),
    }


def render_size_sliders(form: dict[str, Any], defaults: Mapping[str, Any], *, prefix: str) -> None:
    """The width and height sliders (multiples of 8 up to :data:`MAX_SIDE`)."""
    form["width"] = gr.Slider(
        64, MAX_SIDE, value=defaults["width"], step=8, label="Width", elem_id=f"{prefix}-width"
    )
    form["height"] = gr.Slider(
        64, MAX_SIDE, value=defaults["height"], step=8, label="Height", elem_id=f"{prefix}-height"
    )


def render_batch_sliders(form: dict[str, Any], defaults: Mapping[str, Any], *, prefix: str) -> None:
    """The batch count and batch size sliders."""
    form["n_iter"] = gr.Slider(
        1,
        100,
        value=defaults["n_iter"],
        step=1,
        label="Batch count",
        elem_id=f"{prefix}-batch-count",
    )
    form["batch_size"] = gr.Slider(
        1,
        16,
        value=defaults["batch_size"],
        step=1,
        label="Batch size",
        elem_id=f"{prefix}-batch-size",
    )


def render_cfg_slider(form: dict[str, Any], defaults: Mapping[str, Any], *, prefix: str) -> None:
    """The CFG scale slider."""
    form["cfg_scale"] = gr.Slider(
        1.0, 30.0, value=defaults["cfg_scale"], step=0.5, label="CFG Scale", elem_id=f"{prefix}-cfg"
    )


def render_denoising_slider(form: dict[str, Any], defaults: Mapping[str, Any], *, prefix: str) -> None:
    """The denoising strength slider (img2img's, and the second pass of txt2img's hires. fix)."""
    form["denoising_strength"] = gr.Slider(
        0.0,
        1.0,
        value=defaults["denoising_strength"],
        step=0.01,
        label="Denoising strength",
        elem_id=f"{prefix}-denoising",
    )


def render_seed_input(form: dict[str, Any], defaults: Mapping[str, Any], *, prefix: str) -> gr.Button:
    """The seed box and its dice button; return the button for the caller to wire.

    Call inside an open ``gr.Row``: a tab may add its own tool buttons after these two.
    """
    form["seed"] = gr.Number(
        value=defaults["seed"], precision=0, label="Seed", elem_id=f"{prefix}-seed", scale=5
    )
    return gr.Button("⚄", elem_classes="sdweb-tool", scale=0, elem_id=f"{prefix}-random-seed")


def render_variation_seed(form: dict[str, Any], defaults: Mapping[str, Any], *,
                          prefix: str) -> tuple[gr.Button, gr.Button]:
    """The "Variation seed" accordion (variation seed and strength, resize seed from width / height).

    Returns the variation seed's dice and reuse buttons for the caller to wire.
    """
    with gr.Accordion("Variation seed", open=False, elem_id=f"{prefix}-variation"):
        with gr.Row():
            form["subseed"] = gr.Number(value=defaults["subseed"], precision=0, label="Variation seed",
                                        elem_id=f"{prefix}-subseed", scale=5)
            random_subseed = gr.Button("⚄", elem_classes="sdweb-tool", scale=0,
                                       elem_id=f"{prefix}-random-subseed")
            reuse_subseed = gr.Button("♻️", elem_classes="sdweb-tool", scale=0,
                                      elem_id=f"{prefix}-reuse-subseed")
        form["subseed_strength"] = gr.Slider(0.0, 1.0, value=defaults["subseed_strength"], step=0.01,
                                             label="Variation strength", elem_id=f"{prefix}-subseed-strength")
        with gr.Row():
            form["seed_resize_from_w"] = gr.Slider(-1, 2048, value=defaults["seed_resize_from_w"], step=8,
                                                   label="Resize seed from width", info="-1: off",
                                                   elem_id=f"{prefix}-seed-resize-w")
            form["seed_resize_from_h"] = gr.Slider(-1, 2048, value=defaults["seed_resize_from_h"], step=8,
                                                   label="Resize seed from height", info="-1: off",
                                                   elem_id=f"{prefix}-seed-resize-h")
    return random_subseed, reuse_subseed


def render_override_settings(form: dict[str, Any], defaults: Mapping[str, Any], *, prefix: str) -> None:
    """The "Override settings" accordion: clip skip and A1111's noise settings an infotext carries (RNG
    source, ENSD, eta), the sampler implementation and A1111's compatibility settings (Old prompt
    editing timelines ...); each empty (or 0 for clip skip) means the setting.
    """
    with gr.Accordion("Override settings", open=False, elem_id=f"{prefix}-override-settings"):
        form["clip_skip"] = gr.Slider(0, 12, value=defaults["clip_skip"], step=1, label="Clip skip",
                                      info="0: use the Clip skip setting", elem_id=f"{prefix}-clip-skip")
        with gr.Row():
            form["rng"] = gr.Dropdown([("Setting", ""), "GPU", "CPU", "NV"], value=defaults["rng"],
                                      label="RNG", elem_id=f"{prefix}-rng")
            form["eta_noise_seed_delta"] = gr.Number(defaults["eta_noise_seed_delta"], precision=0,
                                                     label="ENSD", info="empty: the setting", minimum=0,
                                                     elem_id=f"{prefix}-ensd")
            form["eta"] = gr.Number(defaults["eta"], label="Eta", info="empty: the sampler's", minimum=0,
                                    elem_id=f"{prefix}-eta")
            form["sampler_path"] = gr.Dropdown([("Setting", ""), "A1111", "diffusers"],
                                               value=defaults["sampler_path"], label="Samplers",
                                               elem_id=f"{prefix}-sampler-path")
        # A1111's compatibility settings (Settings > Compatibility); a pasted infotext fills them.
        with gr.Row():
            for name, key in A1111_COMPAT_INFOTEXT.items():
                form[name] = gr.Dropdown(list(SWITCH_CHOICES), value=defaults[name], label=key,
                                         elem_id=f"{prefix}-{name.replace('_', '-')}")
        # A1111's schedule settings (Settings > Sampler parameters); empty: the setting.
        with gr.Row():
            for name, (key, _default) in SCHEDULE_SETTINGS.items():
                form[name] = gr.Number(defaults[name], label=key, info="empty: the setting", minimum=0,
                                       elem_id=f"{prefix}-{name.replace('_', '-')}")
        # A1111's sampler parameters and CFG skipping (Settings > Sampler parameters); empty: the setting.
        with gr.Row():
            for name, key in {**SIGMA_INFOTEXT, **CFG_SKIP_NUMBERS}.items():
                form[name] = gr.Number(defaults[name], label=key, info="empty: the setting", minimum=0,
                                       elem_id=f"{prefix}-{name.replace('_', '-')}")
            form["s_min_uncond_all"] = gr.Dropdown(list(SWITCH_CHOICES), value=defaults["s_min_uncond_all"],
                                                   label="NGMS all steps",
                                                   elem_id=f"{prefix}-s-min-uncond-all")
        with gr.Row():
            form["emphasis"] = gr.Dropdown([("Setting", ""), *EMPHASIS_MODES], value=defaults["emphasis"],
                                           label="Emphasis", elem_id=f"{prefix}-emphasis")
            form["sd_noise_schedule"] = gr.Dropdown([("Setting", ""), *NOISE_SCHEDULES],
                                                    value=defaults["sd_noise_schedule"],
                                                    label="Noise Schedule",
                                                    elem_id=f"{prefix}-sd-noise-schedule")


def render_page_number(*, elem_id: str) -> gr.Number:
    """The page box between a listing's back and forward buttons (submitting it jumps to that page)."""
    return gr.Number(
        value=1,
        precision=0,
        minimum=1,
        show_label=False,
        container=False,
        scale=0,
        min_width=80,
        elem_id=elem_id,
    )

"""The txt2img form <-> GenerationParams mapping that every "send to txt2img" path uses."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from sdweb.images.infotext import build_infotext
from sdweb.params import GenerationParams, format_validation_error
from sdweb.ui.fields import (
    CLIP_SKIP_FROM_SETTING,
    CONTROLNET_UNITS,
    FORM_DEFAULTS,
    FORM_FIELDS,
    form_from_infotext,
    form_from_params,
    params_from_form,
    pasted_backcompat,
)
from tests.fakes import make_services


def test_defaults_make_the_default_request() -> None:
    assert params_from_form(FORM_DEFAULTS) == GenerationParams()


def test_gradio_floats_and_empty_boxes_become_the_request_types() -> None:
    values = dict(
        FORM_DEFAULTS,
        steps=30.0,
        width=768.0,
        seed=1234.0,
        n_iter=2.0,
        clip_skip=2.0,
        styles=["a", "b"],
        checkpoint="",
        subseed=None,
    )
    params = params_from_form(values)
    assert params.steps == 30 and isinstance(params.steps, int)
    assert params.width == 768 and params.seed == 1234 and params.n_iter == 2
    assert params.clip_skip == 2
    assert params.styles == ("a", "b")
    assert params.checkpoint is None
    assert params.subseed == -1  # an emptied number box means the default


def test_clip_skip_zero_means_the_setting() -> None:
    assert params_from_form(dict(FORM_DEFAULTS, clip_skip=CLIP_SKIP_FROM_SETTING)).clip_skip is None


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("steps", 20_000, "steps"),
        ("width", 513, "multiple of 8"),
        ("seed", 2**64, "seed"),
        ("cfg_scale", float("nan"), "cfg_scale"),
    ],
)
def test_out_of_range_values_are_refused_with_a_message_naming_the_field(
    field: str, value: object, words: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        params_from_form(dict(FORM_DEFAULTS, **{field: value}))
    message = format_validation_error(caught.value)
    assert field in message and words in message


def test_every_form_field_round_trips() -> None:
    params = GenerationParams(
        prompt="a cat",
        negative_prompt="blurry",
        styles=("s1",),
        steps=33,
        cfg_scale=5.5,
        sampler_name="DPM++ 2M",
        scheduler="Karras",
        seed=42,
        subseed=7,
        subseed_strength=0.25,
        seed_resize_from_w=256,
        seed_resize_from_h=320,
        width=640,
        height=448,
        batch_size=2,
        n_iter=3,
        clip_skip=2,
        rng="NV",
        eta_noise_seed_delta=31337,
        eta=0.5,
        sampler_path="diffusers",
        checkpoint="model.safetensors [abc]",
    )
    values = form_from_params(params)
    assert set(values) == set(FORM_FIELDS)
    assert params_from_form(values) == params


def test_noise_settings_left_empty_mean_the_settings() -> None:
    values = dict(FORM_DEFAULTS)
    assert (values["rng"], values["sampler_path"]) == ("", "")
    params = params_from_form({**values, "eta_noise_seed_delta": None, "eta": None})
    assert (params.rng, params.eta_noise_seed_delta) == (None, None)
    assert (params.eta, params.sampler_path) == (None, None)


def test_pasting_an_a1111_infotext_carries_its_noise_and_names_what_cannot_be_applied() -> None:
    text = ("a fox\nSteps: 4, Sampler: DPM2 a, CFG scale: 6, Seed: 9, Size: 64x64, ENSD: 31337, "
            "Token merging ratio: 0.5, Discard penultimate sigma: True, Schedule rho: 5, Version: v1.10.1")
    pasted = form_from_infotext(text, gpu_rng="NV")
    values = pasted.values
    # no RNG key: A1111's GPU noise, reproduced with NV where there is no CUDA
    assert (values["rng"], values["eta_noise_seed_delta"], values["sampler_path"]) == ("NV", 31337, "A1111")
    assert any("Token merging ratio" in note for note in pasted.notes)
    # A1111's schedule settings are applied (form switches and numbers), not named
    assert not any("Discard penultimate sigma" in note or "rho" in note for note in pasted.notes)
    params = params_from_form(values)
    assert (params.rng, params.eta_noise_seed_delta) == ("NV", 31337)
    assert (params.always_discard_next_to_last_sigma, params.rho, params.beta_dist_alpha) == (True, 5.0, 0.6)
    with_rng = form_from_infotext(text.replace("ENSD: 31337", "RNG: CPU, Eta: 0.4"), gpu_rng="GPU").values
    # A1111's UniPC settings are settings here: a paste names the ones that differ from A1111's defaults
    unipc = form_from_infotext("a fox\nSteps: 4, Sampler: UniPC, CFG scale: 6, Seed: 9, Size: 64x64, "
                               "UniPC order: 2, UniPC variant: bh1", gpu_rng="NV")
    assert [note for note in unipc.notes if "UniPC" in note] == [
        "UniPC order '2': set it in Settings > Sampler parameters (uni_pc_order) to make the same image"]
    assert (with_rng["rng"], with_rng["eta_noise_seed_delta"], with_rng["eta"]) == ("CPU", 0, 0.4)
    # A1111's sampler parameters and CFG skipping fill the Override settings' boxes; absent ones their
    # defaults (off where the image was made), so the paste does not depend on this machine's settings.
    churn = form_from_infotext("a fox\nSteps: 4, Sampler: Euler, CFG scale: 6, Seed: 9, Size: 64x64, "
                               "Sigma churn: 0.5, NGMS: 2, NGMS all steps: True", gpu_rng="NV")
    assert not [note for note in churn.notes if "Sigma" in note or "NGMS" in note]
    params = params_from_form(churn.values)
    assert (params.s_churn, params.s_noise, params.s_min_uncond, params.s_min_uncond_all,
            params.skip_early_cond) == (0.5, 1.0, 2.0, True, 0.0)
    fresh = params_from_form(FORM_DEFAULTS)
    assert (fresh.s_churn, fresh.s_min_uncond, fresh.s_min_uncond_all) == (None, None, None)  # the settings


def test_pasting_an_old_a1111_infotext_turns_on_the_compatibility_settings_its_version_had(
        tmp_path: Path) -> None:
    """A1111's "Automatic backward compatibility": a 1.5.1 picture with prompt editing was made on the old
    timelines and fp16 alphas_cumprod; the paste fills the Override settings' compatibility dropdowns."""
    text = ("a [cat:dog:0.5]\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64, "
            "Version: v1.5.1")
    pasted = form_from_infotext(text, gpu_rng="NV")
    assert (pasted.values["use_old_scheduling"], pasted.values["use_downcasted_alpha_bar"]) == ("on", "on")
    assert pasted.notes == ["Version v1.5.1: Old prompt editing timelines, Downcast alphas_cumprod turned "
                            "on, as that A1111 version did (Settings > Compatibility > Automatic backward "
                            "compatibility)"]
    assert pasted.values["pad_cond_uncond_v0"] == "off"  # not DDIM / PLMS: A1111 1.5 did not pad it either
    params = params_from_form(pasted.values)
    assert (params.use_old_scheduling, params.use_downcasted_alpha_bar, params.pad_cond_uncond_v0) == (
        True, True, False)
    off = form_from_infotext(text, gpu_rng="NV", backcompat=False)
    assert (off.values["use_old_scheduling"], off.values["use_downcasted_alpha_bar"]) == ("off", "off")
    assert off.notes == []
    # a fresh form leaves them to the settings
    assert FORM_DEFAULTS["use_old_scheduling"] == ""
    assert params_from_form(FORM_DEFAULTS).use_old_scheduling is None
    services, _engine = make_services(tmp_path)
    assert pasted_backcompat(services) is True
    services.options.update({"auto_backcompat": False})
    assert pasted_backcompat(services) is False


def test_form_from_params_keeps_the_dropdown_when_no_checkpoint_is_known() -> None:
    assert "checkpoint" not in form_from_params(GenerationParams())
    assert form_from_params(GenerationParams(), checkpoint_title="x [1]")["checkpoint"] == "x [1]"


def _infotext(params: GenerationParams, *, model_hash: str, model_name: str) -> str:
    return build_infotext(
        params,
        seed=params.seed,
        subseed=params.subseed,
        prompt=params.prompt,
        negative_prompt=params.negative_prompt,
        model_name=model_name,
        model_hash=model_hash,
        vae_name=None,
        vae_hash=None,
        clip_skip=params.clip_skip or 1,
        rng="CPU",
        extra={},
        version="test",
    )


def test_pasted_infotext_fills_every_field_and_picks_the_checkpoint_by_hash(tmp_path: Path) -> None:
    services, _ = make_services(tmp_path)
    try:
        info = services.models.list_checkpoints()[0]
        info = services.models.registry.ensure_hash(info)
        params = GenerationParams(
            prompt="a lighthouse\nat dusk",
            negative_prompt="fog",
            steps=12,
            cfg_scale=6.5,
            sampler_name="DPM++ 2M",
            scheduler="Karras",
            seed=987,
            subseed=55,
            subseed_strength=0.3,
            width=576,
            height=384,
            clip_skip=2,
        )
        pasted = form_from_infotext(
            _infotext(params, model_hash=info.shorthash, model_name="renamed"), services.models
        )
        assert pasted.notes == []
        assert pasted.values["checkpoint"] == info.title
        restored = params_from_form(pasted.values)
        for name in (
            "prompt",
            "negative_prompt",
            "steps",
            "cfg_scale",
            "sampler_name",
            "scheduler",
            "seed",
            "subseed",
            "subseed_strength",
            "width",
            "height",
            "clip_skip",
        ):
            assert getattr(restored, name) == getattr(params, name), name
    finally:
        services.worker.close()


def test_unknown_checkpoint_hash_leaves_the_dropdown_alone_and_says_so(tmp_path: Path) -> None:
    services, _ = make_services(tmp_path)
    try:
        text = _infotext(
            GenerationParams(prompt="x", seed=1), model_hash="ffffffffff", model_name="elsewhere"
        )
        pasted = form_from_infotext(text, services.models)
        assert "checkpoint" not in pasted.values
        assert any("ffffffffff" in note and "not on disk" in note for note in pasted.notes)
        assert pasted.values["prompt"] == "x" and pasted.values["seed"] == 1
    finally:
        services.worker.close()


def test_infotext_with_values_a_request_cannot_take_keeps_the_prompt_and_says_why() -> None:
    pasted = form_from_infotext("a dog\nSteps: 20000, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 512x512")
    assert pasted.values["prompt"] == "a dog"
    assert pasted.notes and "steps" in pasted.notes[0].lower()


def test_hires_fix_controls_reach_the_request() -> None:
    values = dict(
        FORM_DEFAULTS,
        enable_hr=True,
        hr_upscaler="Lanczos",
        hr_second_pass_steps=5.0,
        denoising_strength=0.4,
        hr_scale=1.5,
        hr_resize_x=768.0,
        hr_resize_y=0.0,
    )
    params = params_from_form(values)
    assert params.enable_hr is True
    assert params.hr_upscaler == "Lanczos"
    assert params.hr_second_pass_steps == 5 and isinstance(params.hr_second_pass_steps, int)
    assert params.denoising_strength == 0.4
    assert params.hr_scale == 1.5
    assert (params.hr_resize_x, params.hr_resize_y) == (768, 0)
    assert form_from_params(params)["hr_upscaler"] == "Lanczos"


def test_pasting_a_hires_infotext_turns_hires_fix_on_with_its_values() -> None:
    text = (
        "a castle\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x384, "
        "Denoising strength: 0.45, Hires upscale: 1.5, Hires resize: 768x640, Hires steps: 8, "
        "Hires upscaler: Latent (bicubic)"
    )
    pasted = form_from_infotext(text)
    assert pasted.notes == []
    params = params_from_form(pasted.values)
    assert params.enable_hr is True
    assert params.denoising_strength == 0.45
    assert params.hr_scale == 1.5
    assert (params.hr_resize_x, params.hr_resize_y) == (768, 640)
    assert params.hr_second_pass_steps == 8
    assert params.hr_upscaler == "Latent (bicubic)"


def test_an_infotext_without_hires_leaves_hires_fix_off() -> None:
    pasted = form_from_infotext("a dog\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 512x512")
    assert params_from_form(pasted.values).enable_hr is False


def test_out_of_range_hires_values_take_the_default_with_a_note() -> None:
    text = "a dog\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 512x512, Hires upscale: 17"
    pasted = form_from_infotext(text)
    assert pasted.values["hr_scale"] == 2.0  # the default, not 17
    assert any("hr_scale" in note and "out of range" in note for note in pasted.notes)
    assert pasted.values["enable_hr"] is True


def test_pasted_controlnet_lines_go_to_the_controlnet_section_as_units() -> None:
    text = ('a house\nSteps: 2, Sampler: Euler, Seed: 1, Size: 64x64, ControlNet 0: "Module: canny, Model: '
            'control_v11p_sd15_canny [d14c016b], Weight: 0.5, Control Mode: Balanced, Frobnicate: 3"')
    pasted = form_from_infotext(text)
    assert pasted.values["prompt"] == "a house" and pasted.values["steps"] == 2
    [unit] = pasted.values[CONTROLNET_UNITS]
    assert (unit.index, unit.values["module"], unit.values["weight"]) == (0, "canny", 0.5)
    assert pasted.notes == ["ControlNet 0: Frobnicate '3' is not supported here; left out"]
    # An infotext without ControlNet lines says no unit was used (the section turns them off).
    assert form_from_infotext("a house\nSteps: 2, Seed: 1").values[CONTROLNET_UNITS] == []

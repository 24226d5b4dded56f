"""The img2img tab's pure pieces: reading uploads, building the request, sizes, what "send" carries."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from sdweb.params import Img2ImgParams
from sdweb.ui.components.uploads import UploadError, read_upload
from sdweb.ui.fields import FORM_DEFAULTS, img2img_params_from_form
from sdweb.ui.tabs.img2img import values_for_img2img
from sdweb.ui.tabs.img2img_inputs import img2img_request, size_for_upload


def _png(path: Path, size: tuple[int, int] = (96, 64), mode: str = "RGB") -> str:
    Image.new(mode, size, "red" if mode == "RGB" else 255).save(path)
    return str(path)


def test_form_values_make_an_img2img_request_with_the_inpaint_fields() -> None:
    values = dict(
        FORM_DEFAULTS,
        prompt="a boat",
        denoising_strength=0.3,
        resize_mode=2.0,
        mask_blur=8.0,
        inpainting_fill=1,
        inpaint_full_res=False,
        inpaint_full_res_padding=32.0,
        inpainting_mask_invert=True,
    )
    params = img2img_params_from_form(values)
    assert isinstance(params, Img2ImgParams)
    assert params.prompt == "a boat" and params.denoising_strength == 0.3
    assert params.resize_mode == 2 and isinstance(params.resize_mode, int)
    assert (params.mask_blur, params.inpainting_fill, params.inpaint_full_res) == (8, 1, False)
    assert params.inpaint_full_res_padding == 32 and params.inpainting_mask_invert is True


def test_defaults_make_the_default_img2img_request() -> None:
    assert img2img_params_from_form(FORM_DEFAULTS) == Img2ImgParams()


def test_denoising_outside_0_1_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="denoising_strength"):
        img2img_params_from_form(dict(FORM_DEFAULTS, denoising_strength=1.5))


def test_request_carries_the_uploaded_image_and_mask(tmp_path: Path) -> None:
    image = _png(tmp_path / "init.png")
    mask = _png(tmp_path / "mask.png", mode="L")
    params, images, got_mask = img2img_request(dict(FORM_DEFAULTS, prompt="x"), image, mask)
    assert params.prompt == "x"
    assert [im.size for im in images] == [(96, 64)]
    assert got_mask is not None and got_mask.size == (96, 64)
    _, _, no_mask = img2img_request(FORM_DEFAULTS, image, None)
    assert no_mask is None


def test_missing_or_broken_uploads_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="Upload an image for img2img first"):
        img2img_request(FORM_DEFAULTS, None, None)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    with pytest.raises(UploadError, match="Cannot read the mask"):
        img2img_request(FORM_DEFAULTS, _png(tmp_path / "ok.png"), str(broken))


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    Image.new("1", (20_000, 20_000)).save(path)  # small file, 400 megapixels
    with pytest.raises(UploadError, match="Cannot read the upload"):
        read_upload(str(path), "the upload")


@pytest.mark.parametrize(
    ("size", "expected"),
    [((512, 512), (512, 512)), ((501, 333), (504, 336)), ((4096, 2048), (2048, 1024)), ((30, 20), (64, 64))],
)
def test_an_upload_suggests_its_own_size_within_the_limits(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert size_for_upload(*size) == expected


def test_sending_a_result_carries_its_prompt_seed_and_size_but_not_hires_denoising() -> None:
    text = (
        "a castle\nNegative prompt: fog\nSteps: 12, Sampler: Euler a, CFG scale: 6, Seed: 42, "
        "Size: 512x384, Denoising strength: 0.2, Hires upscale: 2, Hires upscaler: Latent"
    )
    values, notes = values_for_img2img(text)
    assert notes == []
    assert values["prompt"] == "a castle" and values["negative_prompt"] == "fog"
    assert (values["seed"], values["steps"], values["width"], values["height"]) == (42, 12, 512, 384)
    assert "denoising_strength" not in values and "enable_hr" not in values
    assert values_for_img2img("") == ({}, [])


def test_sending_fills_the_tab_clears_the_old_mask_and_switches_to_it() -> None:
    import gradio as gr

    from sdweb.ui.tabs.img2img import TAB_ID, Img2ImgTab

    with gr.Blocks(), gr.Tabs() as tabs, gr.Tab("img2img"):
        image, mask = gr.Image(), gr.Image()
        form = {"prompt": gr.Textbox(), "seed": gr.Number()}
        message = gr.HTML()
    tab = Img2ImgTab(image=image, mask=mask, form=form, tabs=tabs, message=message)
    updates = tab.fill("/outputs/x.png", {"prompt": "a cat", "seed": 3, "unknown": 1}, ["a note"])
    assert updates[image] == "/outputs/x.png" and updates[mask] is None
    assert updates[form["prompt"]] == "a cat" and updates[form["seed"]] == 3
    assert updates[tabs].selected == TAB_ID
    assert "Image sent to img2img. a note." in updates[message]


NOISE_INFOTEXT = (
    "a foggy pier\nNegative prompt: blur\nSteps: 9, Sampler: Euler a, CFG scale: 5, Seed: 77, Size: 96x64, "
    "Variation seed: 5, Variation seed strength: 0.25, Seed resize from: 128x96, Clip skip: 2, RNG: CPU, "
    "ENSD: 31337, Eta: 0.5, Sampler path: diffusers"
)


def test_sending_carries_the_seed_extras_and_noise_settings_as_txt2img() -> None:
    values, notes = values_for_img2img(NOISE_INFOTEXT)
    assert notes == []
    assert (values["subseed"], values["subseed_strength"]) == (5, 0.25)
    assert (values["seed_resize_from_w"], values["seed_resize_from_h"]) == (128, 96)
    assert values["clip_skip"] == 2
    assert (values["rng"], values["eta_noise_seed_delta"], values["eta"]) == ("CPU", 31337, 0.5)
    assert values["sampler_path"] == "diffusers"
    # no RNG key: A1111's GPU noise, which the server says how to reproduce here
    without = NOISE_INFOTEXT.replace("RNG: CPU, ", "")
    assert values_for_img2img(without, gpu_rng="NV")[0]["rng"] == "NV"


def test_the_noise_settings_reach_the_img2img_request() -> None:
    values = dict(FORM_DEFAULTS, **values_for_img2img(NOISE_INFOTEXT)[0])
    params = img2img_params_from_form(values)
    assert (params.rng, params.eta_noise_seed_delta, params.eta, params.sampler_path) == (
        "CPU", 31337, 0.5, "diffusers")
    assert (params.subseed, params.subseed_strength, params.clip_skip) == (5, 0.25, 2)
    # the form's "Setting" choices leave them to the settings
    assert img2img_params_from_form(FORM_DEFAULTS).rng is None


def test_img2img_and_txt2img_lay_out_the_same_seed_extras_and_override_settings() -> None:
    import gradio as gr

    from sdweb.ui import controls

    made: dict[str, dict[str, object]] = {}
    for prefix in ("txt2img", "img2img"):
        form: dict[str, object] = {}
        with gr.Blocks():
            controls.render_variation_seed(form, FORM_DEFAULTS, prefix=prefix)
            controls.render_override_settings(form, FORM_DEFAULTS, prefix=prefix)
        made[prefix] = form
    assert set(made["img2img"]) == set(made["txt2img"]) == {
        "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h", "clip_skip", "rng",
        "eta_noise_seed_delta", "eta", "sampler_path",
        # A1111's compatibility settings, which a pasted (old) infotext fills
        "use_old_scheduling", "use_downcasted_alpha_bar", "pad_cond_uncond", "pad_cond_uncond_v0",
        # A1111's sampler / schedule settings, which a pasted infotext fills too
        "always_discard_next_to_last_sigma", "sgm_noise_multiplier", "sigma_min", "sigma_max", "rho",
        "beta_dist_alpha", "beta_dist_beta", "img2img_extra_noise",
        # A1111's sampler parameters and CFG skipping
        "s_churn", "s_tmin", "s_tmax", "s_noise", "s_min_uncond", "skip_early_cond", "s_min_uncond_all",
        # A1111's "Emphasis mode" and "Noise schedule for sampling"
        "emphasis", "sd_noise_schedule"}
    assert made["img2img"]["eta_noise_seed_delta"].elem_id == "img2img-ensd"  # type: ignore[attr-defined]

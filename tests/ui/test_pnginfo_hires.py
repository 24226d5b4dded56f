"""PNG Info -> Send to txt2img with a hires fix image: every hires setting comes back, the second pass's own
prompt and sampler included (the round trip a user makes to remake an image)."""

from __future__ import annotations

from pathlib import Path

from sdweb.params import GenerationParams
from sdweb.ui.fields import form_from_infotext, params_from_form
from sdweb.ui.tabs.pnginfo import read_png_info
from tests.fakes import make_services

HIRES = dict(enable_hr=True, hr_scale=1.5, hr_upscaler="Lanczos", hr_second_pass_steps=7,
             denoising_strength=0.35, hr_prompt="a castle, crisp stone", hr_negative_prompt="fog, blur",
             hr_sampler_name="DDIM")


def test_a_saved_hires_image_restores_every_hires_field(tmp_path: Path) -> None:
    services, _ = make_services(tmp_path)
    try:
        asked = GenerationParams(prompt="a castle", negative_prompt="fog", steps=3, width=64, height=64,
                                 seed=21, sampler_name="Euler", **HIRES)
        result = services.generation.generate(asked)
        shown = read_png_info(result.paths[0])  # the file on disk, as the PNG Info tab reads it
        pasted = form_from_infotext(shown.parameters, services.models)
        restored = params_from_form(pasted.values)
    finally:
        services.worker.close()
    for name, value in HIRES.items():
        assert getattr(restored, name) == value, name
    assert (restored.prompt, restored.seed, restored.width) == ("a castle", 21, 64)


def test_hires_resize_comes_back_as_the_two_sizes(tmp_path: Path) -> None:
    text = ("a castle\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 2, Size: 64x64, "
            "Denoising strength: 0.5, Hires resize: 128x96, Hires upscaler: Latent")
    restored = params_from_form(form_from_infotext(text).values)
    assert (restored.enable_hr, restored.hr_resize_x, restored.hr_resize_y) == (True, 128, 96)

"""Hires fix requests through GenerationService: both passes' parameters in the infotext, A1111's keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdweb.params import GenerationParams
from tests.fakes import FakeEngine, make_services


@pytest.fixture()
def services(tmp_path: Path):
    services, _engine = make_services(tmp_path, engine=FakeEngine())
    yield services
    services.worker.close()


def test_hires_keys_follow_a1111s_order(services) -> None:
    params = GenerationParams(prompt="a castle", steps=3, width=64, height=64, seed=9, enable_hr=True,
                              hr_scale=2, hr_second_pass_steps=10, hr_upscaler="Latent",
                              denoising_strength=0.55)
    (text,) = services.generation.generate(params).infotexts
    line = text.splitlines()[-1]
    assert "Size: 64x64" in line  # the first pass size, as A1111 writes it
    assert "Denoising strength: 0.55" in line
    assert line.index("Model:") < line.index("Denoising strength") < line.index("Hires upscale: 2,")
    assert "Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent" in line


def test_hires_resize_replaces_the_scale_and_no_steps_means_none_written(services) -> None:
    params = GenerationParams(prompt="x", steps=3, width=64, height=64, seed=9, enable_hr=True,
                              hr_resize_x=128, hr_resize_y=96, hr_upscaler="Lanczos")
    (text,) = services.generation.generate(params).infotexts
    assert "Hires resize: 128x96, Hires upscaler: Lanczos" in text
    assert "Hires upscale:" not in text and "Hires steps" not in text


def test_without_hires_nothing_is_written(services) -> None:
    (text,) = services.generation.generate(GenerationParams(prompt="x", steps=3, width=64, height=64,
                                                            seed=9)).infotexts
    assert "Hires" not in text and "Denoising strength" not in text

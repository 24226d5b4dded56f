"""Hires fix's own prompt and sampler through GenerationService: checked before queueing, styled as the
first pass's, written in the infotext as A1111 writes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdweb.params import GenerationParams
from sdweb.prompts.styles import PromptStyle
from sdweb.services.generation import GenerationError
from tests.fakes import FakeEngine, make_services

SMALL = dict(steps=3, width=64, height=64, seed=9, enable_hr=True, sampler_name="Euler")


@pytest.fixture()
def services(tmp_path: Path):
    services, _engine = make_services(tmp_path, engine=FakeEngine())
    yield services
    services.worker.close()


def test_an_unknown_second_pass_sampler_is_refused_before_queueing(services) -> None:
    with pytest.raises(GenerationError, match="hires fix second pass.*Wobbly"):
        services.generation.submit(GenerationParams(**SMALL, hr_sampler_name="Wobbly"))
    with pytest.raises(GenerationError, match="hires fix second pass.*schedule type 'Wobbly'"):
        services.generation.submit(GenerationParams(**SMALL, hr_scheduler="Wobbly"))


def test_overrides_are_written_in_the_infotext(services) -> None:
    params = GenerationParams(**SMALL, prompt="a castle", hr_prompt="a castle, detailed",
                              hr_sampler_name="DDIM")
    result = services.generation.generate(params)
    (text,) = result.infotexts
    assert text.startswith("a castle\n")
    assert 'Hires upscaler: Latent, Hires sampler: DDIM, Hires prompt: "a castle, detailed", Version' in text


def test_styles_apply_to_the_second_pass_prompt_too(services) -> None:
    services.styles.save(PromptStyle(name="sharp", prompt="{prompt}, sharp focus",
                                     negative_prompt="jpeg artifacts"))
    params = GenerationParams(**SMALL, prompt="a castle", hr_prompt="a tower", styles=("sharp",))
    result = services.generation.generate(params)
    assert result.params.prompt == "a castle, sharp focus"
    assert result.params.hr_prompt == "a tower, sharp focus"
    assert result.params.hr_negative_prompt == ""  # left empty: the (styled) first-pass negative prompt

"""Fixtures for the engine tests: tiny random-weight pipelines, a model wrapper, the built-in samplers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from sdweb.engine.samplers import builtin
from sdweb.engine.samplers.registry import SamplerRegistry
from sdweb.params import GenerationParams
from tests.fixtures.checkpoints import tiny_sd1_components, tiny_sd2v_components, tiny_sdxl_components


@dataclass
class TinyInfo:
    model_name: str = "tiny-sd1"
    shorthash: str = "0123456789"
    title: str = "tiny-sd1.safetensors [0123456789]"


@dataclass
class TinyModel:
    """The LoadedModel attributes the loop reads."""

    pipe: Any
    family: str = "sd1"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    info: TinyInfo = field(default_factory=TinyInfo)
    vae_name: str | None = None
    vae_hash: str | None = None


@pytest.fixture(scope="session")
def sd1_pipe() -> StableDiffusionPipeline:
    return StableDiffusionPipeline(**tiny_sd1_components())


@pytest.fixture(scope="session")
def sd2v_pipe() -> StableDiffusionPipeline:
    return StableDiffusionPipeline(**tiny_sd2v_components())


@pytest.fixture(scope="session")
def sdxl_pipe() -> StableDiffusionXLPipeline:
    return StableDiffusionXLPipeline(**tiny_sdxl_components())


@pytest.fixture()
def sd1_model(sd1_pipe: StableDiffusionPipeline) -> TinyModel:
    return TinyModel(pipe=sd1_pipe)


@pytest.fixture(scope="session")
def samplers() -> SamplerRegistry:
    return SamplerRegistry.from_plugin_results(
        [("builtin-samplers", builtin.register_samplers())],
        [("builtin-samplers", builtin.register_schedules())],
    )


def tiny_params(**changes: Any) -> GenerationParams:
    """A resolved request small enough for the tiny model: 64x64, 2 steps."""
    values: dict[str, Any] = dict(prompt="a photo of a cat", negative_prompt="blurry", steps=2, width=64,
                                  height=64, seed=1234, subseed=99, clip_skip=1, rng="CPU",
                                  sampler_name="Euler", scheduler="Automatic", cfg_scale=7.0)
    values.update(changes)
    return GenerationParams(**values)

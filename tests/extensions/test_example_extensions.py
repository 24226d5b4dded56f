"""The two extensions shipped in extensions/ load through the real loader and do what they say."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from sdweb.config import PROJECT_ROOT
from sdweb.extensions.manager import ExtensionManager
from sdweb.plugin_api import SamplerSpec, UITab

EXAMPLES = ("example-sampler", "example-tab")


@pytest.fixture
def loaded(extensions_dir: Path, make_manager: Callable[..., ExtensionManager]) -> ExtensionManager:
    for name in EXAMPLES:
        shutil.copytree(PROJECT_ROOT / "extensions" / name, extensions_dir / name)
    manager = make_manager()
    manager.load_all()
    return manager


def test_both_examples_load_without_errors(loaded: ExtensionManager) -> None:
    infos = {info.name: info for info in loaded.list()}

    assert sorted(infos) == sorted(EXAMPLES)
    for info in infos.values():
        assert info.loaded and info.load_error is None and info.version and info.description


def example_sampler(manager: ExtensionManager) -> SamplerSpec:
    ((plugin_name, (spec,)),) = manager.host.collect("register_samplers")
    assert plugin_name == "example-sampler" and spec.name == "Euler (example)"
    assert spec.sample_fn is not None
    return spec


def karras_sigmas(n: int, sigma_min: float = 0.03, sigma_max: float = 14.6, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    inv_max, inv_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (inv_max + ramp * (inv_min - inv_max)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def test_example_sampler_reaches_a_known_clean_image(loaded: ExtensionManager) -> None:
    spec = example_sampler(loaded)
    target = torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    sigmas = karras_sigmas(10)
    x = torch.randn(2, 2, generator=generator, dtype=torch.float64) * sigmas[0]
    steps: list[tuple[int, float]] = []

    def callback(i: int, x_now: torch.Tensor, x0: torch.Tensor) -> None:
        steps.append((i, float((x_now - target).abs().max())))

    result = spec.sample_fn(lambda x, sigma: target, x, sigmas, generator=generator, callback=callback)

    assert torch.allclose(result, target, atol=1e-9)
    assert [i for i, _ in steps] == list(range(10))
    distances = [distance for _, distance in steps]
    assert distances == sorted(distances, reverse=True)  # closer after every step


def test_example_sampler_turns_noise_into_samples_of_the_data_distribution(loaded: ExtensionManager) -> None:
    # Data ~ N(0, s^2): the exact denoiser is x * s^2 / (s^2 + sigma^2). Sampling from pure noise must
    # give samples whose spread is s, not the noise level.
    spec = example_sampler(loaded)
    data_std = 0.5
    generator = torch.Generator().manual_seed(1)
    sigmas = karras_sigmas(100)
    noise = torch.randn(20_000, generator=generator, dtype=torch.float64)

    def denoise(x: torch.Tensor, sigma: Any) -> torch.Tensor:
        return x * data_std**2 / (data_std**2 + sigma**2)

    samples = spec.sample_fn(denoise, noise * sigmas[0], sigmas, generator=generator, callback=None)

    assert float(samples.std()) == pytest.approx(data_std, rel=0.03)
    assert float(noise.std() * sigmas[0]) > 10  # it started far from the data


def test_example_tab_registers_a_tab_that_builds_and_tidies(loaded: ExtensionManager) -> None:
    ((plugin_name, (tab,)),) = loaded.host.collect("register_ui_tabs", services=None)
    assert plugin_name == "example-tab" and isinstance(tab, UITab) and tab.title == "Prompt tidy"

    gr = pytest.importorskip("gradio")
    with gr.Blocks() as demo, gr.Tab(tab.title):
        tab.render()
    labels = {getattr(block, "label", None) for block in demo.blocks.values()}
    assert {"Prompt", "Tidied prompt"} <= labels

    tidy = tab.render.__globals__["tidy_prompt"]
    assert tidy("a cat,  masterpiece ,, A Cat,best   quality, ") == "a cat, masterpiece, best quality"

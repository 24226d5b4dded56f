"""The bundled demo model, through the model manager path as the app uses it: listed, loaded, and it draws
what the prompt says (read back from the pixels by demo_model/checker.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from demo_model.checker import read_scene
from sdweb.engine.devices import RuntimeConfig
from sdweb.engine.generate import run_txt2img
from sdweb.engine.models.cache import ModelCache
from sdweb.engine.models.hashes import HashCache
from sdweb.engine.models.loader import load_checkpoint
from sdweb.engine.models.registry import CheckpointRegistry
from sdweb.engine.samplers.registry import SamplerRegistry
from sdweb.params import GenerationParams, JobControl

DEMO = Path(__file__).resolve().parents[2] / "sdweb" / "data" / "demo" / "sdweb-demo-shapes.safetensors"

pytestmark = pytest.mark.skipif(not DEMO.is_file(), reason="the demo checkpoint has not been exported yet")


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[CheckpointRegistry, ModelCache]:
    root = tmp_path_factory.mktemp("demo")
    (root / "Stable-diffusion").mkdir()
    registry = CheckpointRegistry([root / "Stable-diffusion"], HashCache(root / "cache"), demo_files=[DEMO])
    runtime = RuntimeConfig(device=torch.device("cpu"), dtype=torch.float32, vae_dtype=torch.float32,
                            attention="sdpa", offload="none", vae_tiling=False, threads=1)
    cache = ModelCache(lambda info, vae: load_checkpoint(info, runtime), capacity=1, offload_device=None)
    return registry, cache


def test_the_demo_checkpoint_is_small_and_listed_as_a_demo(
        demo_cache: tuple[CheckpointRegistry, ModelCache]) -> None:
    registry, _ = demo_cache
    assert DEMO.stat().st_size <= 20 * 1024 * 1024
    (info,) = registry.refresh()
    assert info.demo and info.usable and info.family == "sd1"


def _read(cache: ModelCache, info: object, samplers: SamplerRegistry, prompt: str,
          seed: int) -> tuple[str | None, str, str | None]:
    params = GenerationParams(prompt=prompt, steps=20, cfg_scale=7.0, width=64, height=64, seed=seed,
                              subseed=0, clip_skip=1, rng="CPU")
    with cache.use(info) as model:  # type: ignore[arg-type]
        run = run_txt2img(model, params, samplers=samplers, control=JobControl(), on_step=lambda _: None)
    reading = read_scene(run.images[0].image)
    return reading.colour, reading.background, reading.position


def test_the_demo_model_paints_the_colours_the_prompt_names(
        demo_cache: tuple[CheckpointRegistry, ModelCache], samplers: SamplerRegistry) -> None:
    registry, cache = demo_cache
    (info,) = registry.refresh()
    prompt = "a large red circle on the left, blue background"
    for seed in (1, 2, 3):
        colour, background, _ = _read(cache, info, samplers, prompt, seed)
        assert (colour, background) == ("red", "blue"), f"seed {seed}"
    colour, background, _ = _read(cache, info, samplers, "a small yellow square, black background", 1)
    assert (colour, background) == ("yellow", "black")


def test_the_demo_model_puts_the_shape_where_the_prompt_says(
        demo_cache: tuple[CheckpointRegistry, ModelCache], samplers: SamplerRegistry) -> None:
    registry, cache = demo_cache
    (info,) = registry.refresh()
    phrases = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
               "center": "in the center"}
    drawn = {}
    for where, phrase in phrases.items():
        for seed in (1, 2):
            _, _, drawn[(where, seed)] = _read(cache, info, samplers,
                                                f"a large red circle {phrase}, blue background", seed)
    right = [key for key, position in drawn.items() if position == key[0]]
    # The bar of issue 8 is 70% over 48 prompts (demo_model/evaluate.py); 8 of these 10 is that bar's
    # neighbourhood for the easiest captions, with room for a different CPU's rounding.
    assert len(right) >= 8, f"asked -> drawn: {drawn}"
    # Each way of saying where moves the shape: not one fixed place that happens to match some.
    assert len({position for position in drawn.values()}) >= 4, drawn

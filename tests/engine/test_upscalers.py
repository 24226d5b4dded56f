"""Model upscalers (models/ESRGAN): listing by file stem, tiled runs that match untiled ones with the
network only ever seeing bounded tiles, safe loading, passes to the asked size, the missing-extra
message, and (where spandrel imports) a real RRDBNet file detected from its keys and run tiled."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sdweb.engine.upscalers import (
    ModelUpscalers,
    UpscalerModelError,
    UpscalerModelLibrary,
    UpscalerUnavailableError,
    load_spandrel_model,
    read_state_dict,
    spandrel_problem,
    tile_starts,
    tiled_upscale,
)
from sdweb.images.upscale import UpscaleError

SPANDREL_PROBLEM = spandrel_problem()


class NearestNetwork(torch.nn.Module):
    """A stand-in "super-resolution network": nearest-neighbour by ``scale``; records the input sizes."""

    def __init__(self, scale: int = 2) -> None:
        super().__init__()
        self.scale = scale
        self.seen: list[tuple[int, int]] = []
        self.tiling = None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        self.seen.append((pixels.shape[2], pixels.shape[3]))
        return torch.nn.functional.interpolate(pixels, scale_factor=self.scale, mode="nearest")


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# ---------------------------------------------------------------------------------------------
# Listing
# ---------------------------------------------------------------------------------------------


def test_models_are_listed_by_file_stem_with_the_scale_their_name_says(tmp_path: Path) -> None:
    _touch(tmp_path / "4x-UltraSharp.pth")
    _touch(tmp_path / "anime" / "RealESRGAN_x2plus.safetensors")
    _touch(tmp_path / "ESRGAN_SRx8.pth")
    _touch(tmp_path / "readme.txt")
    library = UpscalerModelLibrary(tmp_path)
    assert [(item.name, item.scale) for item in library.files()] == [
        ("4x-UltraSharp", 4), ("ESRGAN_SRx8", 4), ("RealESRGAN_x2plus", 2)]
    found = library.find("4X-ULTRASHARP")
    assert found is not None and found.path == tmp_path / "4x-UltraSharp.pth"
    assert library.find("4x-UltraSharp.pth") == found
    assert library.find("nope") is None


def test_a_missing_folder_lists_nothing_and_refresh_sees_new_files(tmp_path: Path) -> None:
    library = UpscalerModelLibrary(tmp_path / "ESRGAN")
    assert library.files() == []
    _touch(tmp_path / "ESRGAN" / "2x-Fast.pth")
    library.refresh()
    assert [item.name for item in library.files()] == ["2x-Fast"]


# ---------------------------------------------------------------------------------------------
# Tiling
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 16, 17, 40, 63, 100, 369])
def test_tiles_cover_every_pixel_with_at_least_the_overlap(length: int) -> None:
    tile, overlap = 16, 4
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0
    assert starts[-1] + min(tile, length) == length
    for before, after in zip(starts, starts[1:], strict=False):
        assert before + tile - after >= overlap  # neighbours overlap
        assert after > before


def test_tiled_equals_untiled_and_no_tile_exceeds_the_tile_size() -> None:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand((1, 3, 50, 70), generator=generator)
    whole = NearestNetwork(scale=2)(pixels)
    network = NearestNetwork(scale=2)
    tiled = tiled_upscale(pixels, network, scale=2, tile=16, overlap=4)
    assert tiled.shape == (1, 3, 100, 140)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-6)
    assert len(network.seen) > 1
    assert max(max(size) for size in network.seen) <= 16


def test_tiling_hides_the_seams_of_a_network_that_looks_at_neighbours() -> None:
    # A 3x3 blur then 2x: a tile's border pixels see zero padding; the cross-fade keeps that out.
    blur = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    torch.nn.init.constant_(blur.weight, 1 / 9)

    def network(pixels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(blur(pixels), scale_factor=2, mode="nearest")

    pixels = torch.full((1, 1, 40, 40), 0.5)
    tiled = tiled_upscale(pixels, network, scale=2, tile=16, overlap=8)
    inside = tiled[:, :, 4:-4, 4:-4]  # the image's own border is dark untiled too
    assert float((inside - 0.5).abs().max()) < 1e-3  # a quarter of one 8-bit level


def test_whole_image_when_the_tile_is_0_or_larger_than_the_image() -> None:
    pixels = torch.rand((1, 3, 20, 30))
    network = NearestNetwork()
    tiled_upscale(pixels, network, scale=2, tile=0)
    tiled_upscale(pixels, network, scale=2, tile=64)
    assert network.seen == [(20, 30), (20, 30)]


def test_a_network_of_another_scale_is_an_error_not_a_broken_image() -> None:
    with pytest.raises(UpscalerModelError, match="not 4x larger"):
        tiled_upscale(torch.rand((1, 3, 20, 20)), NearestNetwork(scale=2), scale=4, tile=8, overlap=2)


# ---------------------------------------------------------------------------------------------
# Loading and upscaling images
# ---------------------------------------------------------------------------------------------


class FakeDescriptor:
    """What the loader returns: a callable with spandrel's ``scale`` / ``to`` / ``tiling``."""

    def __init__(self, scale: int) -> None:
        self.network = NearestNetwork(scale)
        self.scale = scale
        self.tiling = None
        self.moved_to: list[tuple[Any, Any]] = []

    def to(self, device: Any, dtype: Any = None) -> FakeDescriptor:
        self.moved_to.append((device, dtype))
        return self

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.network(pixels)


def _upscalers(tmp_path: Path, scale: int = 2, **options: Any) -> tuple[ModelUpscalers, list[Path]]:
    _touch(tmp_path / f"{scale}x-Fake.pth")
    loaded: list[Path] = []

    def loader(path: Path) -> FakeDescriptor:
        loaded.append(path)
        return FakeDescriptor(scale)

    return ModelUpscalers(UpscalerModelLibrary(tmp_path), loader=loader, **options), loaded


def test_model_passes_reach_the_asked_size_then_lanczos_makes_it_exact(tmp_path: Path) -> None:
    upscalers, loaded = _upscalers(tmp_path, scale=2, tile=8, overlap=2)
    image = Image.new("RGB", (10, 6), (200, 30, 90))
    out = upscalers.upscale(image, "2x-fake", (30, 18))  # 2x twice (40x24), then down to 3x
    assert out.size == (30, 18) and out.mode == "RGB"
    assert np.abs(np.asarray(out, dtype=int) - (200, 30, 90)).max() <= 1
    upscalers.upscale(image, "2x-Fake", (20, 12))
    assert len(loaded) == 1  # the model stays loaded between upscales


def test_tile_size_and_overlap_are_read_at_each_upscale(tmp_path: Path) -> None:
    _touch(tmp_path / "2x-Fake.pth")
    descriptor = FakeDescriptor(2)
    setting = [(8, 2)]
    upscalers = ModelUpscalers(UpscalerModelLibrary(tmp_path), loader=lambda _path: descriptor,
                               tiling=lambda: setting[0])
    image = Image.new("RGB", (20, 20))
    upscalers.upscale(image, "2x-Fake", (40, 40))
    assert max(max(size) for size in descriptor.network.seen) == 8
    descriptor.network.seen.clear()
    setting[0] = (0, 0)  # no tiling
    upscalers.upscale(image, "2x-Fake", (40, 40))
    assert descriptor.network.seen == [(20, 20)]
    setting[0] = (8, 8)
    with pytest.raises(UpscalerModelError, match="ESRGAN_tile_overlap"):
        upscalers.upscale(image, "2x-Fake", (40, 40))


def test_transparency_is_kept(tmp_path: Path) -> None:
    upscalers, _ = _upscalers(tmp_path)
    image = Image.new("RGBA", (8, 8), (10, 20, 30, 128))
    out = upscalers.upscale(image, "2x-Fake", (16, 16))
    assert out.mode == "RGBA" and out.getpixel((5, 5)) == (10, 20, 30, 128)


def test_an_unknown_model_name_is_an_upscale_error(tmp_path: Path) -> None:
    upscalers, _ = _upscalers(tmp_path)
    with pytest.raises(UpscaleError, match="'4x-Other' not found"):
        upscalers.upscale(Image.new("RGB", (4, 4)), "4x-Other", (16, 16))


def test_a_pass_too_large_is_refused_before_it_runs(tmp_path: Path) -> None:
    upscalers, _ = _upscalers(tmp_path, scale=8)
    with pytest.raises(UpscalerModelError, match="megapixels"):
        upscalers.upscale(Image.new("RGB", (1100, 1100)), "8x-Fake", (2200, 2200))


def test_a_pickle_that_builds_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "payload": Path("/")}, path)  # any global but tensors'
    with pytest.raises(UpscalerModelError, match="refused to load evil.pth"):
        read_state_dict(path)


def test_plain_state_dicts_load_from_pth_and_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {"model.0.weight": torch.ones(2, 3)}
    torch.save(tensors, tmp_path / "a.pth")
    save_file(tensors, str(tmp_path / "a.safetensors"))
    for name in ("a.pth", "a.safetensors"):
        assert torch.equal(read_state_dict(tmp_path / name)["model.0.weight"], torch.ones(2, 3))


def test_without_spandrel_using_a_model_says_how_to_install_it(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "spandrel", None)  # "import spandrel" fails, as when not installed
    _touch(tmp_path / "4x-UltraSharp.pth")
    upscalers = ModelUpscalers(UpscalerModelLibrary(tmp_path))
    with pytest.raises(UpscalerUnavailableError) as caught:
        upscalers.upscale(Image.new("RGB", (4, 4)), "4x-UltraSharp", (16, 16))
    assert "pip install 'sdweb[upscalers]'" in str(caught.value)
    assert "torch 2.14.1" in str(caught.value)
    assert isinstance(caught.value, UpscaleError)  # what the API and UI turn into a message


def test_hires_fix_upscales_the_decoded_first_pass_with_a_model(tmp_path: Path, sd1_model: Any,
                                                                samplers: Any) -> None:
    from sdweb.engine.hires import run_hires_txt2img
    from sdweb.params import JobControl
    from tests.engine.conftest import tiny_params

    upscalers, loaded = _upscalers(tmp_path, scale=2, tile=48, overlap=8)
    params = tiny_params(enable_hr=True, hr_scale=1.5, hr_upscaler="2x-fake", steps=2, denoising_strength=0.5)
    run = run_hires_txt2img(sd1_model, params, samplers=samplers, control=JobControl(),
                            on_step=lambda _: None, model_upscalers=upscalers)
    assert [item.image.size for item in run.images] == [(96, 96)]
    assert loaded == [tmp_path / "2x-Fake.pth"]  # the 64x64 first pass went through the model


def test_hires_fix_refuses_a_model_name_it_was_not_given(sd1_model: Any, samplers: Any) -> None:
    from sdweb.engine.hires import run_hires_txt2img
    from sdweb.params import JobControl
    from tests.engine.conftest import tiny_params

    params = tiny_params(enable_hr=True, hr_upscaler="2x-Fake")
    with pytest.raises(UpscaleError, match="hr_upscaler '2x-Fake' not found"):
        run_hires_txt2img(sd1_model, params, samplers=samplers, control=JobControl(), on_step=lambda _: None)


# ---------------------------------------------------------------------------------------------
# spandrel itself (the optional extra)
# ---------------------------------------------------------------------------------------------


def rrdbnet_state_dict(features: int = 8, growth: int = 32, blocks: int = 1, scale: int = 4,
                       seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the original ESRGAN (RRDBNet) key layout, written here from the shapes."""
    generator = torch.Generator().manual_seed(seed)
    shapes: dict[str, tuple[int, ...]] = {"model.0.weight": (features, 3, 3, 3)}
    for block in range(blocks):
        for rdb in (1, 2, 3):
            for conv in range(1, 6):
                out = features if conv == 5 else growth
                shapes[f"model.1.sub.{block}.RDB{rdb}.conv{conv}.0.weight"] = (
                    out, features + (conv - 1) * growth, 3, 3)
    shapes[f"model.1.sub.{blocks}.weight"] = (features, features, 3, 3)
    ups = int(np.log2(scale))
    for index in range(ups):
        shapes[f"model.{3 + 3 * index}.weight"] = (features, features, 3, 3)
    shapes[f"model.{3 + 3 * ups - 1}.weight"] = (features, features, 3, 3)
    shapes[f"model.{3 + 3 * ups + 1}.weight"] = (3, features, 3, 3)
    state: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        state[key] = torch.randn(shape, generator=generator) * 0.05
        state[key.replace(".weight", ".bias")] = torch.zeros(shape[0])
    return state


@pytest.mark.skipif(SPANDREL_PROBLEM is not None,
                    reason=f"spandrel (the optional 'upscalers' extra) is not importable: {SPANDREL_PROBLEM}")
def test_spandrel_detects_an_esrgan_file_and_it_upscales_tiled(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = rrdbnet_state_dict()
    torch.save({"params_ema": state}, tmp_path / "4x-Tiny.pth")  # wrapped, as BasicSR saves them
    save_file(state, str(tmp_path / "4x-TinySafe.safetensors"))
    for name in ("4x-Tiny.pth", "4x-TinySafe.safetensors"):
        descriptor = load_spandrel_model(tmp_path / name)
        assert (descriptor.architecture.name, descriptor.scale) == ("ESRGAN", 4)
    library = UpscalerModelLibrary(tmp_path)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8))
    tiled = ModelUpscalers(library, tile=12, overlap=4).upscale(image, "4x-Tiny", (112, 80))
    whole = ModelUpscalers(library, tile=0).upscale(image, "4x-Tiny", (112, 80))
    assert tiled.size == whole.size == (112, 80)
    difference = np.abs(np.asarray(tiled, dtype=int) - np.asarray(whole, dtype=int))
    assert difference.max() <= 2 and difference.mean() < 0.1  # no seams: the cross-fade hides tile edges

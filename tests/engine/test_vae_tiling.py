"""Tiled VAE decode/encode (sdweb.engine.vae_tiling): on by itself above the memory budget, no seams."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from diffusers import AutoencoderKL

from sdweb.engine import vae_tiling
from sdweb.engine.accelerator import vae_decode, vae_encode
from sdweb.engine.generate import circular_padding
from sdweb.engine.vae_tiling import (
    HOST_BUDGET,
    MIB,
    TileLayout,
    TilePolicy,
    decode_cost,
    decode_layout,
    encode_layout,
    tile_policy,
    tiled_decode,
    tiled_encode,
)

SD_VAE_CONFIG = (Path(vae_tiling.__file__).resolve().parent.parent / "data" / "configs" / "sd1" / "vae"
                 / "config.json")


@pytest.fixture(scope="module")
def vae() -> AutoencoderKL:
    """A tiny random VAE with the SD VAE's layout: 3 levels (scale factor 4), mid-block attention,
    several channels per GroupNorm group.
    """
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, layers_per_block=1,
                         norm_num_groups=8).eval()


def smooth_latents(height: int, width: int, seed: int = 1) -> torch.Tensor:
    """Latents with an image's structure: broad shapes plus fine detail."""
    generator = torch.Generator().manual_seed(seed)
    broad = torch.randn(1, 4, height // 8, width // 8, generator=generator)
    return (F.interpolate(broad, size=(height, width), mode="bicubic", align_corners=False)
            + 0.2 * torch.randn(1, 4, height, width, generator=generator))


def full_size_vae() -> AutoencoderKL:
    """The SD VAE's architecture without weights (meta tensors): for the budget rule only."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        return AutoencoderKL.from_config(json.loads(SD_VAE_CONFIG.read_text()))


def test_tiles_normalised_with_the_images_statistics_give_the_whole_decode(vae: AutoencoderKL) -> None:
    # The mechanics (context cut off, overlaps blended, attention and GroupNorms seen whole) are exact:
    # with the statistics taken from the whole latents, 12 tiles give the whole decode.
    latents = smooth_latents(48, 64)
    with torch.inference_mode():
        whole = vae.decode(latents).sample
        tiled = tiled_decode(vae, latents, TileLayout(tile=16, stats_side=64))
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().max() < 1e-4


def test_a_tiled_decode_within_the_budget_is_close_to_the_whole_one_without_seams(vae: AutoencoderKL) -> None:
    latents = smooth_latents(48, 64)
    layout = TileLayout(tile=24)  # statistics from a copy shrunk to one padded tile (32 latent pixels)
    with torch.inference_mode():
        whole = vae.decode(latents).sample
        tiled = tiled_decode(vae, latents, layout)
    difference = (tiled - whole).abs()
    assert difference.mean() < 0.2 * whole.std()
    # No seam: the tiled image's jumps between neighbouring pixel columns/rows at the tile borders are no
    # larger than elsewhere in it (a seam would make the border columns stand out).
    factor = vae_tiling.scale_factor(vae)
    cols = layout.starts(latents.shape[-1])
    rows = layout.starts(latents.shape[-2])
    jumps_x = (tiled[..., 1:] - tiled[..., :-1]).abs().mean(dim=(0, 1, 2))
    jumps_y = (tiled[..., 1:, :] - tiled[..., :-1, :]).abs().mean(dim=(0, 1, 3))
    for jumps, starts in ((jumps_x, cols), (jumps_y, rows)):
        borders = [start * factor - 1 for start, _end in starts[1:]]
        borders += [end * factor - 1 for _start, end in starts[:-1]]
        assert borders
        assert max(float(jumps[b]) for b in borders) < 2.5 * float(jumps.median())


def test_a_tiled_encode_is_close_to_the_whole_one(vae: AutoencoderKL) -> None:
    generator = torch.Generator().manual_seed(3)
    pixels = torch.tanh(F.interpolate(torch.randn(1, 3, 12, 16, generator=generator), size=(192, 256),
                                      mode="bicubic", align_corners=False))
    with torch.inference_mode():
        whole = vae.encode(pixels).latent_dist.mean
        exact = tiled_encode(vae, pixels, TileLayout(tile=16, stats_side=64))
        tiled = tiled_encode(vae, pixels, TileLayout(tile=24))
    assert exact.shape == whole.shape == (1, 4, 48, 64)
    assert (exact - whole).abs().max() < 1e-4
    assert (tiled - whole).abs().mean() < 0.1 * whole.std()


def test_the_vae_passes_switch_to_tiles_above_the_jobs_budget(vae: AutoencoderKL,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    latents = smooth_latents(48, 64)
    needed = decode_cost(vae, 48 * 4, 64 * 4)
    with torch.inference_mode():
        with caplog.at_level(logging.INFO, logger="sdweb.engine.accelerator"):
            whole = vae_decode(vae, latents)  # default: automatic budget, far above this image's need
        assert "in tiles" not in caplog.text
        with tile_policy(TilePolicy(budget_bytes=needed // 2)), \
                caplog.at_level(logging.INFO, logger="sdweb.engine.accelerator"):
            tiled = vae_decode(vae, latents)
            pixels = whole.clamp(-1, 1)
            encoded = vae_encode(vae, pixels, "cpu")
    assert "VAE decode of 64x48 latents in tiles" in caplog.text
    assert "VAE encode of a 256x192 image in tiles" in caplog.text
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().mean() < 0.2 * whole.std()
    assert encoded.shape == (1, 4, 48, 64)


def test_the_budget_rule_on_the_sd_vae_shape() -> None:
    sd_vae = full_size_vae()
    fp32 = TilePolicy()  # automatic: 1280 MB on the CPU
    # A 512x512 image is decoded whole (no tiling cost on the usual size), a 2048x2048 one in tiles that
    # each fit the budget.
    assert decode_layout(sd_vae, torch.empty(1, 4, 64, 64), fp32) is None
    layout = decode_layout(sd_vae, torch.empty(1, 4, 256, 256), fp32)
    assert layout is not None
    window = (layout.tile + 2 * layout.pad) * 8
    assert decode_cost(sd_vae, window, window) <= vae_tiling.TILE_SHARE * HOST_BUDGET
    assert len(layout.starts(256)) >= 3
    assert layout.whole_latent_stage  # the mid block (attention) still sees the whole 2048x2048 image
    huge = decode_layout(sd_vae, torch.empty(1, 4, 640, 640), fp32)  # 5120x5120: its mid block in tiles too
    assert huge is not None and not huge.whole_latent_stage
    # A smaller budget, smaller tiles; the encoder's rule likewise.
    small = decode_layout(sd_vae, torch.empty(1, 4, 256, 256), TilePolicy(budget_bytes=256 * MIB))
    assert small is not None and small.tile < layout.tile
    assert encode_layout(sd_vae, torch.empty(1, 3, 512, 512), fp32) is None
    assert encode_layout(sd_vae, torch.empty(1, 3, 2048, 2048), fp32) is not None
    # --vae-tiling tiles every pass, even small ones.
    assert decode_layout(sd_vae, torch.empty(1, 4, 64, 64), TilePolicy(always=True)) is not None
    assert TilePolicy.from_megabytes(0) == TilePolicy()
    assert TilePolicy.from_megabytes(512).budget_bytes == 512 * MIB


def test_seamless_tiling_images_are_never_cut_into_tiles(vae: AutoencoderKL) -> None:
    latents = torch.empty(1, 4, 48, 64)
    always = TilePolicy(always=True)
    assert decode_layout(vae, latents, always) is not None
    with circular_padding(vae):
        assert decode_layout(vae, latents, always) is None
    assert decode_layout(vae, latents, always) is not None


def test_the_vae_runs_channels_last_on_the_cpu_with_the_same_picture(vae: AutoencoderKL) -> None:
    latents = smooth_latents(16, 16)
    with torch.inference_mode():
        contiguous = vae.decode(latents).sample
        decoded = vae_decode(vae, latents)
    assert vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(decoded, contiguous, atol=1e-4, rtol=1e-4)
    vae.to(memory_format=torch.contiguous_format)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_a_loaded_model_is_warmed_up_at_load(family: str, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    from sdweb.engine.devices import RuntimeConfig
    from sdweb.engine.models.loader import load_checkpoint
    from tests.engine.models.conftest import checkpoint_info
    from tests.fixtures.checkpoints import write_tiny_sd1, write_tiny_sdxl

    write = write_tiny_sd1 if family == "sd1" else write_tiny_sdxl
    path = write(tmp_path / "tiny.safetensors")
    runtime = RuntimeConfig(device=torch.device("cpu"), dtype=torch.float32, vae_dtype=torch.float32,
                            attention="sdpa", offload="none", vae_tiling=False, threads=1)
    with caplog.at_level(logging.DEBUG, logger="sdweb.engine.accelerator"):
        model = load_checkpoint(checkpoint_info(path), runtime)
    assert "warmed up in" in caplog.text
    assert "skipped" not in caplog.text  # text encoder, UNet and VAE each ran once
    # The VAE got its layout then, not during the user's first image.
    assert model.pipe.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.gpu
def test_on_cuda_a_half_precision_vae_runs_channels_last_and_tiles_under_a_small_budget(
        vae: AutoencoderKL) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cuda_vae = AutoencoderKL.from_config(vae.config).to("cuda", torch.float16).eval()
    cuda_vae.load_state_dict(vae.state_dict())
    latents = smooth_latents(48, 64).to("cuda")
    with torch.inference_mode():
        contiguous = cuda_vae.decode(latents.half()).sample.float()
        decoded = vae_decode(cuda_vae, latents).float()
        assert cuda_vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(decoded, contiguous, atol=2e-2, rtol=2e-2)
        with tile_policy(TilePolicy(budget_bytes=decode_cost(cuda_vae, 192, 256) // 2)):
            tiled = vae_decode(cuda_vae, latents).float()
    assert (tiled - contiguous).abs().mean() < 0.2 * contiguous.std()

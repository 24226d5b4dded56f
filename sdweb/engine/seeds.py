"""Initial noise and per-image random generators, with A1111's seed semantics.

This module owns what a seed means, so that an A1111 user's seed gives them the same noise here:

- One ``torch.Generator`` per image, seeded with that image's seed (image *i* of a job uses
  ``seed + i``). Its first draw is the image's initial noise, ``torch.randn((C, H/8, W/8))``; so image
  *i* of a batch of 8 starts from exactly the noise of that seed alone at batch size 1.
- RNG source "CPU" (our default): the generators live on the CPU and the noise is moved to the device
  afterwards, so a seed gives the same noise on any hardware. "GPU" (A1111's default): the generators
  live on the model's device (identical to CPU when the device is the CPU).
- Noise is always drawn in float32 and cast afterwards, so fp16/bf16/fp32 runs start from one noise.
- Variation seeds: the noise of ``subseed + i`` is blended in with A1111's ``slerp`` at
  ``subseed_strength`` (0 = the seed's noise, 1 = the subseed's).
- "Seed resize from" W x H: the noise is drawn at that size and pasted, centred, into (or cropped from
  the middle of) noise of the real size drawn by the image's generator, as A1111's ImageRNG does, so
  the composition of a seed found at one size carries over to another.
- Extra noise that ancestral and SDE samplers add during sampling comes from the same per-image
  generators (continuing after the initial draw, as A1111's ``ImageRNG.next`` does), and Brownian-tree
  samplers are seeded with the per-image seeds. Either way, image *i* of a batch is reproducible alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sdweb.params import RngSource

logger = logging.getLogger(__name__)

#: Latent channels and downscale factor of the SD1/SD2/SDXL VAEs.
LATENT_CHANNELS = 4
LATENT_SCALE = 8


@dataclass
class BatchNoise:
    """The initial noise of one batch and the generators that keep drawing for its images."""

    #: ``(batch, C, H/8, W/8)`` float32 noise (unit variance) on the target device.
    latents: torch.Tensor
    #: One generator per image, already advanced past the initial draw.
    generators: list[torch.Generator]
    seeds: list[int]
    subseeds: list[int]


def create_generator(seed: int, rng: RngSource, device: torch.device | str) -> torch.Generator:
    """A generator for ``seed`` on the CPU ("CPU") or on ``device`` ("GPU"; A1111's default)."""
    device = torch.device(device)
    where = torch.device("cpu") if rng == "CPU" or device.type in ("cpu", "mps") else device
    return torch.Generator(where).manual_seed(int(seed))


def slerp(strength: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's spherical interpolation of two ``(C, H, W)`` noises (``strength`` 0 -> low, 1 -> high).

    Kept exactly as A1111 computes it, quirks included (norms over dim 1, and a linear fall-back for
    nearly parallel inputs whose weights are the other way round), so variation seeds match A1111's.
    """
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * strength + high * (1 - strength)
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    return ((torch.sin((1.0 - strength) * omega) / sin_omega).unsqueeze(1) * low
            + (torch.sin(strength * omega) / sin_omega).unsqueeze(1) * high)


def create_batch_noise(
    *,
    seeds: Sequence[int],
    width: int,
    height: int,
    rng: RngSource,
    device: torch.device | str,
    subseeds: Sequence[int] | None = None,
    subseed_strength: float = 0.0,
    seed_resize_from: tuple[int, int] | None = None,
    channels: int = LATENT_CHANNELS,
    scale_factor: int = LATENT_SCALE,
) -> BatchNoise:
    """Initial noise for one batch of images, one seed (and subseed) per image.

    Args:
        seeds: the images' seeds (``seed + i``), concrete (not -1).
        width: the image width in pixels.
        height: the image height in pixels.
        rng: "CPU" or "GPU".
        device: where the model runs; the noise ends up there.
        subseeds: the images' variation seeds (``subseed + i``); used when ``subseed_strength`` > 0.
        subseed_strength: 0..1, how much of the variation seed's noise to blend in.
        seed_resize_from: ``(width, height)`` to draw the noise at; None or a size <= 0 means no resize.
        channels: latent channels.
        scale_factor: pixels per latent (8 for SD's VAE; the pipeline's ``vae_scale_factor``).
    """
    if rng not in ("CPU", "GPU"):
        raise ValueError(f"rng must be 'CPU' or 'GPU', got {rng!r}")
    if any(seed < 0 for seed in seeds):
        raise ValueError("seeds must be concrete (>= 0): resolve -1 to a random seed first")
    device = torch.device(device)
    shape = (channels, height // scale_factor, width // scale_factor)
    noise_shape = shape
    if seed_resize_from is not None and seed_resize_from[0] > 0 and seed_resize_from[1] > 0:
        noise_shape = (channels, seed_resize_from[1] // scale_factor, seed_resize_from[0] // scale_factor)
    use_subseeds = subseeds is not None and subseed_strength != 0
    subseed_list = list(subseeds) if subseeds is not None else [0] * len(seeds)

    generators: list[torch.Generator] = []
    noises: list[torch.Tensor] = []
    for index, seed in enumerate(seeds):
        generator = create_generator(seed, rng, device)
        if noise_shape == shape:
            noise = _randn(shape, generator)
        else:
            noise = _randn(noise_shape, create_generator(seed, rng, device))
        if use_subseeds:
            subseed = subseed_list[index] if index < len(subseed_list) else 0
            subnoise = _randn(noise_shape, create_generator(subseed, rng, device))
            noise = slerp(subseed_strength, noise, subnoise)
        if noise_shape != shape:
            noise = _paste_centred(noise, _randn(shape, generator))
        generators.append(generator)
        noises.append(noise)
    latents = torch.stack(noises).to(device)
    return BatchNoise(latents=latents, generators=generators, seeds=list(seeds), subseeds=subseed_list)


def _randn(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)


def _paste_centred(small: torch.Tensor, canvas: torch.Tensor) -> torch.Tensor:
    """Put ``small`` in the middle of ``canvas`` (cropping its middle when it is the larger one)."""
    dx = (canvas.shape[2] - small.shape[2]) // 2
    dy = (canvas.shape[1] - small.shape[1]) // 2
    w = small.shape[2] if dx >= 0 else small.shape[2] + 2 * dx
    h = small.shape[1] if dy >= 0 else small.shape[1] + 2 * dy
    tx, ty = max(dx, 0), max(dy, 0)
    sx, sy = max(-dx, 0), max(-dy, 0)
    canvas = canvas.clone()
    canvas[:, ty:ty + h, tx:tx + w] = small[:, sy:sy + h, sx:sx + w]
    return canvas

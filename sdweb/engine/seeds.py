"""Initial noise and per-image random generators, with A1111's seed semantics.

This module owns what a seed means, so that an A1111 user's seed gives them the same noise here:

- One ``torch.Generator`` per image, seeded with that image's seed (image *i* of a job uses
  ``seed + i``). Its first draw is the image's initial noise, ``torch.randn((C, H/8, W/8))``; so image
  *i* of a batch of 8 starts from exactly the noise of that seed alone at batch size 1.
- RNG source "CPU" (our default): the generators live on the CPU and the noise is moved to the device
  afterwards, so a seed gives the same noise on any hardware. "GPU" (A1111's default): the generators
  live on the model's device (identical to CPU when the device is the CPU). "NV": A1111's CPU
  reproduction of CUDA's ``torch.randn`` (Philox-4x32-10 + Box-Muller, :class:`PhiloxGenerator`), so a
  GPU-made A1111 image's noise is reproduced on any hardware.
- ENSD (A1111's "Eta noise seed delta"): when set, the noise drawn *during* sampling comes from fresh
  generators seeded with ``seed + delta`` (A1111 applies it whatever the sampler; only samplers that
  draw noise are affected).
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

import numpy as np
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
    #: One generator per image, already advanced past the initial draw (or seeded seed + ENSD).
    generators: list[Generator]
    seeds: list[int]
    subseeds: list[int]


# Philox-4x32-10 (Salmon et al. 2011, Random123), the counter-based generator behind CUDA's torch.randn.
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF
# Box-Muller constants as float32, as CUDA's curand (and A1111's NV generator) use them.
_TWO_POW32_INV = np.float32(2.3283064e-10)
_TWO_POW32_INV_2PI = np.float32(2.3283064e-10 * 6.2831855)


def philox4x32(counter: np.ndarray, key: tuple[int, int], rounds: int = 10) -> np.ndarray:
    """Philox-4x32 on ``counter`` (a (4, N) uint32 array) with the 64-bit key ``(low, high)``."""
    c = [counter[i].astype(np.uint64) for i in range(4)]
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    mask = np.uint64(_MASK32)
    for round_index in range(rounds):
        product0 = c[0] * np.uint64(_PHILOX_M0)
        product1 = c[2] * np.uint64(_PHILOX_M1)
        hi0, lo0 = product0 >> np.uint64(32), product0 & mask
        hi1, lo1 = product1 >> np.uint64(32), product1 & mask
        c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0]
        if round_index < rounds - 1:
            k0 = (k0 + np.uint64(_PHILOX_W0)) & mask
            k1 = (k1 + np.uint64(_PHILOX_W1)) & mask
    return np.stack(c).astype(np.uint32)


class PhiloxGenerator:
    """A1111's "NV" noise source: CUDA's ``torch.randn`` reproduced on the CPU, so any device gets it.

    Draw *k* (k = 0, 1, ...) of ``n`` numbers: Philox-4x32-10 keyed with the 64-bit seed on the counters
    ``(k, 0, i, 0)`` for i < n; the first two words of each output go through Box-Muller (the sine
    branch) to one float32 normal. Same ``randn(shape)`` interface as a generator needs here.
    """

    device = torch.device("cpu")

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.offset = 0

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        n = int(np.prod(shape)) if len(shape) else 1
        counter = np.zeros((4, n), dtype=np.uint32)
        counter[0] = self.offset & _MASK32
        counter[2] = np.arange(n, dtype=np.uint32)
        self.offset += 1
        words = philox4x32(counter, (self.seed & _MASK32, (self.seed >> 32) & _MASK32))
        # uint32 times a float32 array computes in float64, the precision A1111's generator uses
        u = words[0] * np.array([_TWO_POW32_INV]) + _TWO_POW32_INV / np.float32(2)
        v = words[1] * np.array([_TWO_POW32_INV_2PI]) + _TWO_POW32_INV_2PI / np.float32(2)
        normal = (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)
        return torch.from_numpy(normal.reshape(tuple(shape)))


Generator = torch.Generator | PhiloxGenerator


def create_generator(seed: int, rng: RngSource, device: torch.device | str) -> Generator:
    """A generator for ``seed``: on the CPU ("CPU"), on ``device`` ("GPU"; A1111's default), or NV."""
    if rng == "NV":
        return PhiloxGenerator(seed)
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
    eta_noise_seed_delta: int = 0,
) -> BatchNoise:
    """Initial noise for one batch of images, one seed (and subseed) per image.

    Args:
        seeds: the images' seeds (``seed + i``), concrete (not -1).
        width: the image width in pixels.
        height: the image height in pixels.
        rng: "CPU", "GPU" or "NV".
        device: where the model runs; the noise ends up there.
        subseeds: the images' variation seeds (``subseed + i``); used when ``subseed_strength`` > 0.
        subseed_strength: 0..1, how much of the variation seed's noise to blend in.
        seed_resize_from: ``(width, height)`` to draw the noise at; None or a size <= 0 means no resize.
        channels: latent channels.
        scale_factor: pixels per latent (8 for SD's VAE; the pipeline's ``vae_scale_factor``).
        eta_noise_seed_delta: A1111's ENSD: when not 0, the noise drawn during sampling comes from
            fresh generators seeded with ``seed + delta`` instead of continuing after the initial noise.
    """
    if rng not in ("CPU", "GPU", "NV"):
        raise ValueError(f"rng must be 'CPU', 'GPU' or 'NV', got {rng!r}")
    if any(seed < 0 for seed in seeds):
        raise ValueError("seeds must be concrete (>= 0): resolve -1 to a random seed first")
    device = torch.device(device)
    shape = (channels, height // scale_factor, width // scale_factor)
    noise_shape = shape
    if seed_resize_from is not None and seed_resize_from[0] > 0 and seed_resize_from[1] > 0:
        noise_shape = (channels, seed_resize_from[1] // scale_factor, seed_resize_from[0] // scale_factor)
    use_subseeds = subseeds is not None and subseed_strength != 0
    subseed_list = list(subseeds) if subseeds is not None else [0] * len(seeds)

    generators: list[Generator] = []
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
    if eta_noise_seed_delta:
        # A1111 (ImageRNG.first): with ENSD, every later draw comes from seed + delta.
        generators = [create_generator(seed + int(eta_noise_seed_delta), rng, device) for seed in seeds]
    latents = torch.stack(noises).to(device)
    return BatchNoise(latents=latents, generators=generators, seeds=list(seeds), subseeds=subseed_list)


def _randn(shape: tuple[int, ...], generator: Generator) -> torch.Tensor:
    if isinstance(generator, PhiloxGenerator):
        return generator.randn(shape)
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

"""The extra UNet input of dedicated inpainting checkpoints: a mask and the masked image's latents.

An inpainting UNet (sd-v1-5-inpainting, SD 2 inpainting, SDXL inpainting) takes 9 input channels: the
4 latent channels being denoised, then 1 mask channel (1 = repaint) and the 4-channel VAE latents of the
picture with the masked part blanked out. This module owns how those 5 channels are made, with
A1111's meanings (``txt2img_image_conditioning`` / ``inpainting_image_conditioning``), which agree with
diffusers' ``StableDiffusionInpaintPipeline``:

* The mask is the (blurred) mask at pixel size rounded to 0/1, then shrunk to the latent size with
  nearest-neighbour sampling.
* The masked image is the init image in [-1, 1] with the masked pixels set to 0 (mid grey), VAE-encoded
  (the latent distribution's mean, times ``scaling_factor``, as the init latents are).
* "Inpainting conditioning mask strength" (A1111's ``inpainting_mask_weight``, default 1): the masked
  image is ``lerp(image, image * (1 - mask), weight)``; below 1 some of the masked part shows through.
* txt2img, and img2img without a mask: the mask is all ones (repaint everything) and the masked image
  is ``image * (1 - weight)``; at weight 1 (and always for txt2img) it is all grey, so no source
  picture is needed.

The loop concatenates these channels after the latents at every UNet call
(:meth:`sdweb.engine.generate._Txt2Img.predict`), unscaled: only the latents get a sampler's input
scaling. Plain 4-channel UNets get nothing and pay nothing.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from PIL import Image

from sdweb.engine.accelerator import module_execution_device, vae_encode

logger = logging.getLogger(__name__)

#: Channels an inpainting UNet takes beyond the latents: 1 mask + the masked image's latent channels.
MASK_CHANNELS = 1
#: A1111's default "Inpainting conditioning mask strength" (``inpainting_mask_weight``).
DEFAULT_MASK_WEIGHT = 1.0


def latent_channels(pipe: Any) -> int:
    """How many channels the latents being denoised have (the UNet's output, the VAE's latents)."""
    return int(pipe.unet.config.out_channels)


def conditioning_channels(pipe: Any) -> int:
    """Input channels the UNet takes beyond the latents: 0 for plain models, 5 for inpainting ones.

    Raises:
        ValueError: any other layout (depth-to-image's 5 channels, instruct-pix2pix's 8), which needs a
            conditioning sdweb does not make; the message says so.
    """
    unet_in = int(pipe.unet.config.in_channels)
    latent = latent_channels(pipe)
    if unet_in == latent:
        return 0
    if unet_in == 2 * latent + MASK_CHANNELS:
        return unet_in - latent
    raise ValueError(
        f"this checkpoint's UNet takes {unet_in} input channels for {latent}-channel latents; sdweb runs "
        f"plain models ({latent}) and inpainting models ({2 * latent + MASK_CHANNELS}), not depth-to-image "
        "or instruct-pix2pix models")


def image_to_pixels(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a ``(1, 3, H, W)`` float32 tensor in [-1, 1] (the VAE's input range)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def mask_to_tensor(mask: Image.Image) -> torch.Tensor:
    """An L mask (255 = repaint) as a ``(1, 1, H, W)`` float32 tensor of 0/1 (A1111 rounds it)."""
    array = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).round()[None, None]


def encode_pixels(vae: Any, pixels: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """VAE latents of ``pixels`` (``(B, 3, H, W)`` in [-1, 1]) as the denoiser sees them, float32.

    The latent distribution's mean, minus ``shift_factor`` where the VAE has one, times
    ``scaling_factor``: the same encoding img2img uses for its init latents. ``device``: where the job
    runs (offloaded VAEs report the CPU); the VAE's execution device when not given.
    """
    config = vae.config
    device = device if device is not None else module_execution_device(vae, default="cpu")
    latents = vae_encode(vae, pixels, device)  # NaN-checked, fp32 retry; --medvram: VAE off the device after
    shift = getattr(config, "shift_factor", None)
    if shift:
        latents = latents - shift
    return latents * config.scaling_factor


def masked_image_conditioning(vae: Any, pixels: torch.Tensor, mask: torch.Tensor, *,
                              latent_size: tuple[int, int], mask_weight: float = DEFAULT_MASK_WEIGHT,
                              device: torch.device | str | None = None) -> torch.Tensor:
    """``(B, 5, h, w)`` float32: the latent-size mask, then the masked image's latents.

    Args:
        vae: the pipeline's VAE.
        pixels: ``(B, 3, H, W)`` init images in [-1, 1].
        mask: ``(B or 1, 1, H, W)`` of 0/1, 1 = repaint.
        latent_size: ``(h, w)`` of the latents being denoised.
        mask_weight: A1111's ``inpainting_mask_weight``: 1 blanks the masked part out completely.
        device: where the job runs (see :func:`encode_pixels`).
    """
    mask = mask.to(device=pixels.device, dtype=pixels.dtype)
    masked = torch.lerp(pixels, pixels * (1.0 - mask), float(mask_weight))
    latents = encode_pixels(vae, masked, device)
    if tuple(latents.shape[-2:]) != tuple(latent_size):
        latents = torch.nn.functional.interpolate(latents, size=latent_size, mode="bilinear")
    small = torch.nn.functional.interpolate(mask, size=latent_size, mode="nearest")
    small = small.to(latents.device).expand(latents.shape[0], -1, -1, -1)
    return torch.cat([small, latents], dim=1)


def full_mask_conditioning(vae: Any, *, batch_size: int, height: int, width: int, scale_factor: int,
                           device: torch.device | str | None = None) -> torch.Tensor:
    """``(batch_size, 5, h, w)`` float32 for txt2img: everything masked, the masked image all grey.

    One grey picture is encoded and repeated: it is the same for every image of the batch.
    """
    grey = torch.zeros(1, 3, height, width)
    latent_size = (height // scale_factor, width // scale_factor)
    one = masked_image_conditioning(vae, grey, torch.ones(1, 1, height, width), latent_size=latent_size,
                                    mask_weight=1.0, device=device)
    return one.repeat(batch_size, 1, 1, 1)

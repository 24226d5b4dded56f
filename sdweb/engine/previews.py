"""Live previews while sampling: which decoder makes them (A1111's "Live preview display method").

The setting ``show_progress_type`` takes A1111's values:

- **Approx cheap**: a fixed linear map of the latent channels to RGB, one pixel per latent
  (:func:`sdweb.engine.generate.preview_image`); microseconds.
- **TAESD**: the tiny distilled VAE decoder (madebyollin's TAESD) from A1111's folder ``models/VAE-approx``:
  ``taesd_decoder`` for SD 1.x/2.x, ``taesdxl_decoder`` for SDXL, ``taesd3_decoder`` for SD 3.x and
  ``taef1_decoder`` for Flux (16 latent channels; Forge's and ComfyUI's names), as ``.safetensors`` or
  ``.pth``. Each takes the latents the model denoises (before the VAE's scaling and shift).
  A full-size preview for a few percent of a step. Without the file: the cheap approximation (logged once).
- **Approx NN**: A1111's own small approximation network (``VAE-approx/model.pt``) is not supported;
  TAESD takes its place when its file is there, else the cheap approximation.
- **Full**: the model's own VAE (as slow as the final decode; A1111's "Full").

``.pth`` files are read with ``torch.load(weights_only=True)``: only tensors, no pickled code runs; a
file that needs more is refused (logged) and the preview falls back to the cheap one.

The engine sets the job's previewer with :func:`preview_scope`; the loops call :func:`live_preview`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

logger = logging.getLogger(__name__)

PREVIEW_METHODS = ("Full", "Approx NN", "Approx cheap", "TAESD")
DEFAULT_METHOD = "Approx NN"  # A1111's default
#: File stems in models/VAE-approx, per latent space (A1111's / Forge's names).
TAESD_STEMS = {"sd": "taesd_decoder", "sdxl": "taesdxl_decoder", "sd3": "taesd3_decoder",
               "flux": "taef1_decoder"}
_SUFFIXES = (".safetensors", ".pth", ".pt")


# ---------------------------------------------------------------------------------------------
# The TAESD decoder (layout fixed by its published weights: a Sequential of these layers)
# ---------------------------------------------------------------------------------------------


class _SoftClamp(nn.Module):
    """Squash latents smoothly into (-3, 3): ``3 * tanh(x / 3)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class _ResidualBlock(nn.Module):
    """Three 3x3 convolutions (ReLU between) added to the input, then ReLU. Keys: ``conv.0/2/4``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1))
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


class TaesdDecoder(nn.Sequential):
    """Latents (as the UNet makes them, not divided by the VAE's scaling factor) -> RGB in [0, 1], 8x larger.

    Layers 0..19: clamp, conv in, ReLU, then three stages of (3 blocks, 2x upsample, conv without bias),
    one more block and the conv out. ``width`` is 64 in the published weights.
    """

    def __init__(self, latent_channels: int = 4, width: int = 64) -> None:
        layers: list[nn.Module] = [_SoftClamp(), nn.Conv2d(latent_channels, width, 3, padding=1), nn.ReLU()]
        for _stage in range(3):
            layers += [_ResidualBlock(width) for _ in range(3)]
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1, bias=False)]
        layers += [_ResidualBlock(width), nn.Conv2d(width, 3, 3, padding=1)]
        super().__init__(*layers)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The same picture as ``forward``, faster where it can be: on the CPU each convolution runs with the
        ReLU after it (and a block's last one with its residual add and ReLU) inside one oneDNN call, so the
        full-size activations (64 channels at the image's size) are not written and read again by separate
        ReLU / add passes; each 2x upsample and the convolution after it run as one convolution at the small
        size (:func:`phase_weight`). About a third less time per preview. That needs the weights in
        channels_last (:class:`TaesdLibrary` puts them so on the CPU). Elsewhere, or where this torch lacks
        the fused call (checked once per dtype against ``forward``), plain ``forward``.
        """
        with torch.no_grad():
            weight = self[1].weight
            if (latents.device.type == "cpu" and weight.is_contiguous(memory_format=torch.channels_last)
                    and _fusion_works(latents.dtype)):
                try:
                    return self._fused_forward(latents)
                except RuntimeError as exc:  # a case the probe did not meet: plain from now on
                    logger.debug("TAESD previews: fused convolutions failed (%s)", exc)
                    _FUSION[latents.dtype] = False
            return self(latents)

    def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = list(self)
        index = 0
        while index < len(layers):
            layer = layers[index]
            if isinstance(layer, nn.Upsample) and isinstance(layers[index + 1], nn.Conv2d):
                x = _upsample_conv(x, self._phase_weight(layers[index + 1]))
                index += 1
            elif isinstance(layer, _ResidualBlock):
                first, _relu, second, _relu2, third = layer.conv
                inner = _conv(second, _conv(first, x, relu=True), relu=True)
                x = _conv_add_relu(third, inner, x)
            elif isinstance(layer, nn.Conv2d):
                relu = index + 1 < len(layers) and isinstance(layers[index + 1], nn.ReLU)
                x = _conv(layer, x, relu=relu)
                index += int(relu)
            else:
                x = layer(x)
            index += 1
        return x


    def _phase_weight(self, conv: nn.Conv2d) -> torch.Tensor:
        """:func:`phase_weight` of ``conv`` (bias-free, after an upsample), kept while its weight stays."""
        weight = conv.weight
        cache: dict[int, tuple[tuple[Any, ...], torch.Tensor]] = self.__dict__.setdefault("_phases", {})
        key = (weight.data_ptr(), weight.dtype, weight.device, tuple(weight.shape))
        found = cache.get(id(conv))
        if found is None or found[0] != key:
            phases = phase_weight(weight).to(weight.dtype).contiguous(memory_format=torch.channels_last)
            cache[id(conv)] = found = (key, phases)
        return found[1]


def phase_weight(weight: torch.Tensor) -> torch.Tensor:
    """The ``(O, I, 3, 3)`` kernel of a 3x3 convolution (padding 1) applied after a nearest 2x upsample, as
    ``(4 * O, I, 2, 2)`` kernels over the small input padded by 1: output phase ``p = 2 * a + b`` (row parity
    ``a``, column parity ``b``) of the large picture at ``(2i + a, 2j + b)`` is that kernel's output at
    ``(i + a, j + b)``. Upsampled pixels repeat, so the 3x3 taps that land on one small pixel add up: the
    same picture for 16 instead of 36 multiply-adds per output pixel and channel pair, and no upsampled copy.
    """
    taps = weight.float()
    rows = (torch.stack([taps[:, :, 0], taps[:, :, 1] + taps[:, :, 2]], dim=2),
            torch.stack([taps[:, :, 0] + taps[:, :, 1], taps[:, :, 2]], dim=2))
    phases = []
    for row in rows:
        phases.append(torch.stack([row[..., 0], row[..., 1] + row[..., 2]], dim=3))
        phases.append(torch.stack([row[..., 0] + row[..., 1], row[..., 2]], dim=3))
    return torch.cat(phases, dim=0)


def _upsample_conv(x: torch.Tensor, phases: torch.Tensor) -> torch.Tensor:
    """``conv(upsample_2x(x))`` from :func:`phase_weight`'s kernels: one convolution at the small size, then
    one copy that interleaves the four phases into the large picture (channels_last).
    """
    batch, _channels, height, width = x.shape
    out = phases.shape[0] // 4
    small = _conv_raw(x, phases, None, padding=1)  # (B, 4 * out, H + 1, W + 1)
    small = small.contiguous(memory_format=torch.channels_last)
    stride_b, _stride_c, stride_h, stride_w = small.stride()
    # [b, i, a, j, b', c] = small[b, (2a + b') * out + c, i + a, j + b']
    view = small.as_strided((batch, height, 2, width, 2, out),
                            (stride_b, stride_h, stride_h + 2 * out, stride_w, stride_w + out, 1))
    return view.reshape(batch, 2 * height, 2 * width, out).permute(0, 3, 1, 2)


def _conv_raw(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
              padding: int) -> torch.Tensor:
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, [padding, padding], [1, 1], [1, 1], 1,
                                                   "none", [], "")


def _conv(conv: nn.Conv2d, x: torch.Tensor, *, relu: bool = False) -> torch.Tensor:
    """``conv(x)``, then ReLU when ``relu``, as one oneDNN call."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
        "relu" if relu else "none", [], "")


def _conv_add_relu(conv: nn.Conv2d, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``relu(conv(x) + residual)`` as one oneDNN call."""
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x, residual, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation),
        conv.groups, "add", 1.0, "relu", [], "")


_FUSION: dict[torch.dtype, bool] = {}


def _fusion_works(dtype: torch.dtype) -> bool:
    """Whether :meth:`TaesdDecoder.decode`'s fused path gives ``forward``'s picture in ``dtype`` with this
    torch (an internal oneDNN op: checked once per dtype on a tiny random decoder; any error means no).
    """
    found = _FUSION.get(dtype)
    if found is None:
        found = False
        if dtype in (torch.float32, torch.bfloat16) and torch.backends.mkldnn.is_available():
            try:
                with torch.inference_mode(False), torch.no_grad():
                    generator = torch.Generator().manual_seed(0)
                    probe = TaesdDecoder(width=8).eval().requires_grad_(False)
                    for parameter in probe.parameters():
                        parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
                    probe.to(dtype=dtype, memory_format=torch.channels_last)
                    latents = torch.randn(1, 4, 4, 4, generator=generator).to(dtype)
                    plain, fused = probe(latents).float(), probe._fused_forward(latents).float()
                tolerance = 1e-4 if dtype == torch.float32 else 5e-2
                found = bool(torch.allclose(plain, fused, rtol=tolerance, atol=tolerance * plain.abs().max()))
            except Exception as exc:  # an op this torch does not have, or does not have for this dtype
                logger.debug("TAESD previews: no fused convolutions (%s)", exc)
        _FUSION[dtype] = found
    return found


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    # weights_only: the unpickler builds tensors and plain containers only; anything else is an error.
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path.name} holds no state dict")
    return state


def load_taesd_decoder(path: Path) -> TaesdDecoder:
    """The TAESD decoder in ``path`` (A1111's ``.pth`` or a ``.safetensors``; diffusers' AutoencoderTiny
    key names ``decoder.layers.N`` are accepted too), on the CPU in fp32.

    Raises:
        ValueError: the file is not a TAESD decoder, or a ``.pth`` needs pickled code to load.
    """
    try:
        state = _read_state(path)
    except Exception as exc:  # an unsafe pickle is refused by weights_only with an UnpicklingError
        raise ValueError(f"{path.name} could not be read as weights only: {exc}") from exc
    prefixes = ("decoder.layers.", "decoder.")
    cleaned = {}
    for key, value in state.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        cleaned[key] = value
    first = cleaned.get("1.weight")
    if not isinstance(first, torch.Tensor) or first.dim() != 4:
        raise ValueError(f"{path.name} is not a TAESD decoder (no conv weight '1.weight')")
    decoder = TaesdDecoder(latent_channels=int(first.shape[1]), width=int(first.shape[0]))
    try:
        decoder.load_state_dict({key: value.float() for key, value in cleaned.items()}, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path.name} is not a TAESD decoder: {exc}") from exc
    return decoder.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# Choosing and running the previewer
# ---------------------------------------------------------------------------------------------


class TaesdLibrary:
    """The TAESD decoders of ``models/VAE-approx``, loaded on first use and kept (a few MB each)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._loaded: dict[tuple[str, float], TaesdDecoder] = {}
        self._warned: set[str] = set()

    def find(self, space: str) -> Path | None:
        """The decoder file for latent space ``space`` (a :data:`TAESD_STEMS` key), or None."""
        if self.folder is None:
            return None
        stem = TAESD_STEMS.get(space)
        for suffix in _SUFFIXES:
            candidate = self.folder / f"{stem}{suffix}"
            if stem and candidate.is_file():
                return candidate
        return None

    def decoder(self, space: str, device: torch.device, dtype: torch.dtype, *,
                asked: bool = True) -> TaesdDecoder | None:
        """The decoder for ``space`` on ``device`` in ``dtype``; None when there is none (said once: a
        warning when TAESD was ``asked`` for by name, else an info line).
        """
        path = self.find(space)
        if path is None:
            self._warn_once(space, f"TAESD previews: no {TAESD_STEMS.get(space, space)}(.safetensors/.pth) "
                                   f"in {self.folder}; using the cheap approximation",
                            level=logging.WARNING if asked else logging.INFO)
            return None
        key = (str(path), path.stat().st_mtime)
        with self._lock:
            decoder = self._loaded.get(key)
            if decoder is None:
                try:
                    with torch.inference_mode(False):  # ordinary weights, whatever mode the loop is in
                        decoder = load_taesd_decoder(path)
                except ValueError as exc:
                    self._warn_once(str(path), f"TAESD previews: {exc}; using the cheap approximation")
                    return None
                self._loaded = {key: decoder, **{k: v for k, v in self._loaded.items() if k[0] != key[0]}}
                logger.info("TAESD previews from %s", path)
            if next(decoder.parameters()).device != device or next(decoder.parameters()).dtype != dtype:
                with torch.inference_mode(False):
                    decoder.to(device=device, dtype=dtype)
                    if device.type == "cpu":  # faster on the CPU in fp32 and bf16 alike
                        decoder.to(memory_format=torch.channels_last)
            return decoder

    def _warn_once(self, key: str, message: str, level: int = logging.WARNING) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.log(level, message)


class Previewer:
    """Makes the job's live previews with one method (see the module docstring)."""

    def __init__(self, method: str = "Approx cheap", library: TaesdLibrary | None = None,
                 dtype: torch.dtype | None = None) -> None:
        if method not in PREVIEW_METHODS:
            raise ValueError(f"show_progress_type must be one of {list(PREVIEW_METHODS)}, got {method!r}")
        self.method = method
        self.library = library
        self.dtype = dtype

    def __call__(self, latents: torch.Tensor, *, sdxl: bool = False, vae: Any = None,
                 space: str | None = None, cheap: Callable[[], Image.Image] | None = None) -> Image.Image:
        """The preview of ``latents`` (model latent space); ``space``: the latent space's TAESD key (default
        "sdxl" / "sd" from ``sdxl``); ``cheap``: the loop's own cheap approximation (default: SD's 4-channel
        one).
        """
        if self.method == "Full" and vae is not None:
            return self._full(latents, vae)
        if self.method in ("TAESD", "Approx NN") and self.library is not None:
            decoder = self.library.decoder(space or ("sdxl" if sdxl else "sd"), latents.device,
                                           self._dtype(latents), asked=self.method == "TAESD")
            if decoder is not None and decoder[1].in_channels == latents.shape[1]:
                rgb = decoder.decode(latents.to(next(decoder.parameters()).dtype))
                return _strip(rgb.float().clamp(0, 1))
        return _cheap(latents, sdxl, cheap)

    def _dtype(self, latents: torch.Tensor) -> torch.dtype:
        if self.dtype is not None:
            return self.dtype
        return torch.float16 if latents.device.type in ("cuda", "mps") else torch.float32

    @staticmethod
    def _full(latents: torch.Tensor, vae: Any) -> Image.Image:
        from sdweb.engine.accelerator import vae_decode

        config = vae.config
        scaled = latents / config.scaling_factor
        shift = getattr(config, "shift_factor", None)
        if shift:
            scaled = scaled + shift
        decoded = torch.cat([vae_decode(vae, scaled[i:i + 1]).float() for i in range(scaled.shape[0])])
        return _strip((decoded / 2 + 0.5).clamp(0, 1))


def _strip(rgb: torch.Tensor) -> Image.Image:
    """``(B, 3, H, W)`` in [0, 1] as one image, the batch side by side."""
    strip = torch.cat(list(rgb), dim=2)
    array = (strip.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)


_PREVIEWER: ContextVar[Previewer | None] = ContextVar("sdweb_previewer", default=None)


@contextmanager
def preview_scope(previewer: Previewer | None) -> Iterator[None]:
    """Make the block's (one job's) live previews with ``previewer`` (None: the cheap approximation)."""
    token = _PREVIEWER.set(previewer)
    try:
        yield
    finally:
        _PREVIEWER.reset(token)


def live_preview(latents: torch.Tensor, *, sdxl: bool = False, vae: Any = None, space: str | None = None,
                 cheap: Callable[[], Image.Image] | None = None) -> Image.Image:
    """The job's live preview of ``latents`` (the loop's current denoised estimate, model latent space);
    ``space`` and ``cheap`` as :meth:`Previewer.__call__` (the flow loops pass "sd3" / "flux" and their own
    16-channel approximation).
    """
    previewer = _PREVIEWER.get()
    if previewer is None:
        return _cheap(latents, sdxl, cheap)
    return previewer(latents, sdxl=sdxl, vae=vae, space=space, cheap=cheap)


def _cheap(latents: torch.Tensor, sdxl: bool, cheap: Callable[[], Image.Image] | None) -> Image.Image:
    if cheap is not None:
        return cheap()
    from sdweb.engine.generate import preview_image

    return preview_image(latents, sdxl=sdxl)

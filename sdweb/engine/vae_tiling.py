"""Tiled VAE decode and encode that switch on by themselves when an image would not fit a memory budget.

A VAE's memory grows with the image: a whole 2048x2048 decode of the SD VAE needs about 16 GB in fp32,
far more than its weights. :func:`decode_cost` / :func:`encode_cost` estimate the peak memory of a whole
pass from the VAE's widths (calibrated on the SD VAE on CPU: a 512x512 decode peaks at about 0.96 GB
in fp32, 0.42 GB in bf16; an encode at 0.64 / 0.19 GB). When that estimate exceeds the job's budget
(:class:`TilePolicy`: the "VAE tiling memory budget" setting, or automatic: 1280 MB on CPU and MPS, most
of the free memory on CUDA), the image is made in overlapping tiles sized to the budget; A1111 needs an
extension for this, Forge has it built in.

Two things make tiles join without a seam:

1. **One normalisation for all tiles.** The VAE's GroupNorm layers normalise with statistics of their
   whole input; a tile alone would get its own statistics and come out brighter or darker than its
   neighbours. So a first, whole pass over a copy of the input shrunk to fit the budget records every
   GroupNorm's mean and variance (:class:`_SharedStatsNorm`), and every tile is then normalised with
   those. The only thing a tile still sees alone is the mid-block attention, as in every tiled VAE.
2. **Context and blending.** Each tile is made with ``pad`` latent pixels of context around it, which
   are cut off (the zero padding at a tile's edge never reaches the picture), and neighbouring tiles
   overlap by ``overlap`` latent pixels, blended with linear ramps.

The GroupNorm layers are swapped for the shared-statistics ones only for the duration of a tiled pass
and put back afterwards (the model is held exclusively by the job, as for seamless tiling's padding).
Images made with seamless tiling (circular padding) are never tiled here: a tile cannot wrap around.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
#: The automatic budget where memory is the system's (CPU, Apple MPS): a 512x512 fp32 decode fits whole.
HOST_BUDGET = 1280 * MIB
#: Latent pixels of context around each tile (cut off) and of overlap between neighbours (blended).
DEFAULT_PAD = 8
DEFAULT_OVERLAP = 8
#: Share of the budget one tile's window may use: the whole image's buffers (output, blend weights, the
#: mid block's activations) and the allocator's slack take the rest (with tiles at the full budget a
#: 2048x2048 bf16 decode on CPU rose 1.56 GB for a 1.25 GB budget).
TILE_SHARE = 0.8
#: Smallest tile core, in latent pixels: below it the context costs more than the tile.
MIN_TILE = 16
#: Elements per image pixel a whole pass holds at its peak, per unit of the VAE's widths (see module doc).
_DECODE_ELEMENTS_PER_CHANNEL = 4  # x block_out_channels[1]
_ENCODE_ELEMENTS_PER_CHANNEL = 5  # x block_out_channels[0]


@dataclass(frozen=True)
class TilePolicy:
    """When VAE passes are tiled: above ``budget_bytes`` (None: automatic for the device), or always."""

    budget_bytes: int | None = None
    #: Tile every pass (the ``--vae-tiling`` launch flag), whatever its size.
    always: bool = False

    @classmethod
    def from_megabytes(cls, budget_mb: float | None, *, always: bool = False) -> TilePolicy:
        """The policy for the "VAE tiling memory budget" setting (MB; 0 or None: automatic)."""
        budget = int(float(budget_mb) * MIB) if budget_mb and float(budget_mb) > 0 else None
        return cls(budget_bytes=budget, always=always)


_POLICY: ContextVar[TilePolicy | None] = ContextVar("sdweb_vae_tile_policy", default=None)


def current_policy() -> TilePolicy:
    """The tiling policy of the job running in this thread (automatic outside any job)."""
    return _POLICY.get() or TilePolicy()


@contextmanager
def tile_policy(policy: TilePolicy) -> Iterator[None]:
    """Run the block (one job) under ``policy``; the engine sets it from the settings for each job."""
    token = _POLICY.set(policy)
    try:
        yield
    finally:
        _POLICY.reset(token)


# ---------------------------------------------------------------------------------------------
# Costs and budgets
# ---------------------------------------------------------------------------------------------


def _widths(vae: Any) -> tuple[int, ...]:
    widths = getattr(getattr(vae, "config", None), "block_out_channels", None) or (128, 256)
    return tuple(int(w) for w in widths)


def scale_factor(vae: Any) -> int:
    """Image pixels per latent pixel (8 for the SD VAEs)."""
    return 2 ** (len(_widths(vae)) - 1)


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def decode_cost(vae: Any, height: int, width: int, dtype: torch.dtype | None = None) -> int:
    """Estimated peak bytes of decoding one ``height`` x ``width`` image (image pixels) whole."""
    widths = _widths(vae)
    per_pixel = _DECODE_ELEMENTS_PER_CHANNEL * widths[min(1, len(widths) - 1)]
    return height * width * per_pixel * _element_size(dtype or vae.dtype)


def encode_cost(vae: Any, height: int, width: int, dtype: torch.dtype | None = None) -> int:
    """Estimated peak bytes of encoding one ``height`` x ``width`` image whole."""
    per_pixel = _ENCODE_ELEMENTS_PER_CHANNEL * _widths(vae)[0]
    return height * width * per_pixel * _element_size(dtype or vae.dtype)


def automatic_budget(device: torch.device) -> int:
    """The budget when the setting says automatic: most of the free CUDA memory, else :data:`HOST_BUDGET`."""
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return max(HOST_BUDGET // 2, int((free + cached) * 0.8))
    return HOST_BUDGET


def budget_for(policy: TilePolicy, device: torch.device) -> int:
    return policy.budget_bytes if policy.budget_bytes is not None else automatic_budget(device)


def has_circular_padding(vae: Any) -> bool:
    """Whether seamless tiling put circular padding on the VAE's convolutions (tiles cannot wrap)."""
    return any(isinstance(m, torch.nn.Conv2d) and m.padding_mode == "circular" for m in vae.modules())


# ---------------------------------------------------------------------------------------------
# Tile layout
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TileLayout:
    """Tile sizes in latent pixels: core at most ``tile``, ``overlap`` blended, ``pad`` context cut off."""

    tile: int
    overlap: int = DEFAULT_OVERLAP
    pad: int = DEFAULT_PAD
    #: Run the latent-resolution stage (mid block, attention) whole: it fits the budget.
    whole_latent_stage: bool = True
    #: Longest side (latent pixels) of the shrunk copy the GroupNorm statistics come from; None: one
    #: padded tile, which costs what a tile costs.
    stats_side: int | None = None

    def starts(self, length: int) -> list[tuple[int, int]]:
        """(start, end) of the tile cores along an axis of ``length`` latent pixels, evenly spread."""
        if length <= self.tile:
            return [(0, length)]
        step = self.tile - self.overlap
        count = math.ceil((length - self.overlap) / step)
        size = math.ceil((length + (count - 1) * self.overlap) / count)
        return [(round(i * (length - size) / (count - 1)), round(i * (length - size) / (count - 1)) + size)
                for i in range(count)]


def layout_for(cost: Callable[[int], int], budget: int, length: int, *, overlap: int = DEFAULT_OVERLAP,
               pad: int = DEFAULT_PAD) -> TileLayout:
    """The largest square tile whose padded window's ``cost(side in latent pixels)`` fits ``budget``."""
    side = max(MIN_TILE, length)
    while side > MIN_TILE and cost(side + 2 * pad) > budget:
        side = max(MIN_TILE, int(side * 0.9))
    overlap = min(overlap, side // 4)
    return TileLayout(tile=side, overlap=overlap, pad=pad)


def _ramp(length: int, start_ramp: int, end_ramp: int) -> torch.Tensor:
    """Blend weights along one axis: rising over ``start_ramp`` pixels, falling over ``end_ramp``."""
    weights = torch.ones(length)
    positions = torch.arange(length, dtype=torch.float32) + 0.5
    if start_ramp:
        weights = torch.minimum(weights, positions / start_ramp)
    if end_ramp:
        weights = torch.minimum(weights, (length - positions) / end_ramp)
    return weights


# ---------------------------------------------------------------------------------------------
# Shared GroupNorm statistics
# ---------------------------------------------------------------------------------------------


class _SharedStatsNorm(torch.nn.Module):
    """A GroupNorm that keeps the statistics of one whole pass ("record") and normalises every later
    call with them ("apply"), so all tiles are normalised alike.
    """

    def __init__(self, norm: torch.nn.GroupNorm) -> None:
        super().__init__()
        self.norm = norm
        self.recording = True
        self.stats: list[tuple[torch.Tensor, torch.Tensor]] = []  # (mean, rstd) per call, (B, G) fp32
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.norm
        groups = norm.num_groups
        if self.recording:
            sample = x.float().unflatten(1, (groups, -1)).flatten(2)
            var, mean = torch.var_mean(sample, dim=2, unbiased=False)
            self.stats.append((mean, torch.rsqrt(var + norm.eps)))
            return norm(x)
        mean, rstd = self.stats[self.calls]
        self.calls += 1
        per_group = x.shape[1] // groups
        scale = rstd.repeat_interleave(per_group, dim=1)  # (B, C)
        shift = -mean.repeat_interleave(per_group, dim=1) * scale
        if norm.affine:
            shift = shift * norm.weight.float() + norm.bias.float()
            scale = scale * norm.weight.float()
        view = (*scale.shape, *([1] * (x.dim() - 2)))
        return torch.addcmul(shift.view(view).to(x.dtype), x, scale.view(view).to(x.dtype))


@contextmanager
def shared_group_norm(vae: Any, sample: torch.Tensor, run: Callable[[torch.Tensor], Any]) -> Iterator[None]:
    """Record every GroupNorm's statistics by ``run(sample)``; in the block they normalise with them."""
    swapped: list[tuple[torch.nn.Module, str, torch.nn.GroupNorm, _SharedStatsNorm]] = []
    for parent in list(vae.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.GroupNorm):
                shared = _SharedStatsNorm(child)
                swapped.append((parent, name, child, shared))
                setattr(parent, name, shared)
    try:
        run(sample)
        for *_rest, shared in swapped:
            shared.recording = False
        yield
    finally:
        for parent, name, child, _shared in swapped:
            setattr(parent, name, child)


def _restart(vae: Any) -> None:
    for module in vae.modules():
        if isinstance(module, _SharedStatsNorm):
            module.calls = 0


def _shrunk(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if (height, width) == tuple(tensor.shape[-2:]):
        return tensor
    return F.interpolate(tensor.float(), size=(height, width), mode="bilinear", antialias=True,
                         align_corners=False).to(tensor.dtype)


# ---------------------------------------------------------------------------------------------
# Tiled passes
# ---------------------------------------------------------------------------------------------


def _tiled(
    vae: Any, source: torch.Tensor, layout: TileLayout, *, unit: int, out_unit: int, out_channels: int,
    run: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Run ``run`` over ``source`` in tiles of ``layout``, blended into one ``float32`` output.

    ``unit``: ``source`` pixels per latent pixel (1 for latents, the scale factor for images);
    ``out_unit``: output pixels per latent pixel. Tile edges fall on latent pixels.
    """
    batch, _channels, height, width = source.shape
    lat_h, lat_w = height // unit, width // unit
    rows, cols = layout.starts(lat_h), layout.starts(lat_w)
    out = torch.zeros(batch, out_channels, lat_h * out_unit, lat_w * out_unit, device=source.device,
                      dtype=torch.float32)
    weight_sum = torch.zeros(1, 1, *out.shape[-2:], device=source.device, dtype=torch.float32)
    blend = layout.overlap * out_unit
    # Statistics from a whole pass over a copy shrunk to about one padded tile (keeping the aspect ratio).
    shrink = max(1.0, max(lat_h, lat_w) / (layout.stats_side or layout.tile + 2 * layout.pad))
    small = _shrunk(source, max(1, round(lat_h / shrink)) * unit, max(1, round(lat_w / shrink)) * unit)
    with shared_group_norm(vae, small, run):
        for r, (top, bottom) in enumerate(rows):
            for c, (left, right) in enumerate(cols):
                _restart(vae)
                y0, y1 = max(0, top - layout.pad), min(lat_h, bottom + layout.pad)
                x0, x1 = max(0, left - layout.pad), min(lat_w, right + layout.pad)
                made = run(source[:, :, y0 * unit:y1 * unit, x0 * unit:x1 * unit])
                oy, ox = (top - y0) * out_unit, (left - x0) * out_unit
                core_h, core_w = (bottom - top) * out_unit, (right - left) * out_unit
                core = made[:, :, oy:oy + core_h, ox:ox + core_w].float()
                wy = _ramp(core_h, blend if r > 0 else 0, blend if r < len(rows) - 1 else 0)
                wx = _ramp(core_w, blend if c > 0 else 0, blend if c < len(cols) - 1 else 0)
                mask = (wy[:, None] * wx[None, :]).to(out.device)
                ty, tx = top * out_unit, left * out_unit
                out[:, :, ty:ty + core_h, tx:tx + core_w] += core * mask
                weight_sum[:, :, ty:ty + core_h, tx:tx + core_w] += mask
                del made, core
    return out.div_(weight_sum)


def _split_decoder(vae: Any) -> bool:
    """Whether ``vae`` is diffusers' AutoencoderKL layout (decoder: conv_in, mid_block, up_blocks...)."""
    decoder = getattr(vae, "decoder", None)
    return type(decoder).__name__ == "Decoder" and all(
        hasattr(decoder, name) for name in ("conv_in", "mid_block", "up_blocks", "conv_norm_out", "conv_act",
                                            "conv_out"))


def _split_encoder(vae: Any) -> bool:
    encoder = getattr(vae, "encoder", None)
    return type(encoder).__name__ == "Encoder" and all(
        hasattr(encoder, name) for name in ("conv_in", "down_blocks", "mid_block", "conv_norm_out",
                                            "conv_act", "conv_out"))


def latent_stage_cost(vae: Any, height: int, width: int, dtype: torch.dtype | None = None) -> int:
    """Estimated peak bytes of the VAE's latent-resolution stage (mid block) for a ``height`` x ``width``
    latent, run whole.
    """
    return height * width * 6 * _widths(vae)[-1] * _element_size(dtype or vae.dtype)


def tiled_decode(vae: Any, latents: torch.Tensor, layout: TileLayout) -> torch.Tensor:
    """``vae.decode`` of ``latents`` (scaled for the VAE) in tiles of ``layout``: ``(B, C, H, W)`` fp32.

    With diffusers' AutoencoderKL layout, the latent-resolution stage (``conv_in`` and the mid block with
    its attention) runs whole, as in a whole decode, when it fits the budget (``layout.whole_latent_stage``),
    and only the upsampling blocks run in tiles; otherwise every tile runs the whole decoder.
    """
    factor = scale_factor(vae)
    out_channels = int(getattr(vae.config, "out_channels", 3))
    if layout.whole_latent_stage and _split_decoder(vae):
        decoder = vae.decoder
        post = getattr(vae, "post_quant_conv", None)
        hidden = decoder.mid_block(decoder.conv_in(post(latents) if post is not None else latents), None)
        hidden = hidden.to(next(iter(decoder.up_blocks.parameters())).dtype)

        def upsample(tile: torch.Tensor) -> torch.Tensor:
            for block in decoder.up_blocks:
                tile = block(tile, None)
            return decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(tile)))

        return _tiled(vae, hidden, layout, unit=1, out_unit=factor, out_channels=out_channels, run=upsample)

    def run(tile: torch.Tensor) -> torch.Tensor:
        return vae.decode(tile, return_dict=False)[0]

    return _tiled(vae, latents, layout, unit=1, out_unit=factor, out_channels=out_channels, run=run)


def tiled_encode(vae: Any, pixels: torch.Tensor, layout: TileLayout) -> torch.Tensor:
    """The latent mean of ``pixels`` (``(B, 3, H, W)``, sides multiples of the scale factor) in tiles.

    As :func:`tiled_decode`: the downsampling blocks run in tiles, the latent-resolution stage whole.
    """
    factor = scale_factor(vae)
    channels = int(getattr(vae.config, "latent_channels", 4))
    if layout.whole_latent_stage and _split_encoder(vae):
        encoder = vae.encoder

        def downsample(tile: torch.Tensor) -> torch.Tensor:
            tile = encoder.conv_in(tile)
            for block in encoder.down_blocks:
                tile = block(tile)
            return tile

        hidden = _tiled(vae, pixels, layout, unit=factor, out_unit=1, out_channels=_widths(vae)[-1],
                        run=downsample).to(pixels.dtype)
        moments = encoder.conv_out(encoder.conv_act(encoder.conv_norm_out(encoder.mid_block(hidden))))
        quant = getattr(vae, "quant_conv", None)
        moments = quant(moments) if quant is not None else moments
        return moments[:, :channels].float()

    def run(tile: torch.Tensor) -> torch.Tensor:
        return vae.encode(tile).latent_dist.mean

    return _tiled(vae, pixels, layout, unit=factor, out_unit=1, out_channels=channels, run=run)


# ---------------------------------------------------------------------------------------------
# Deciding
# ---------------------------------------------------------------------------------------------


def decode_layout(vae: Any, latents: torch.Tensor, policy: TilePolicy | None = None) -> TileLayout | None:
    """The tiles for decoding ``latents`` under ``policy`` (default: the job's); None: decode whole."""
    policy = policy or current_policy()
    if has_circular_padding(vae):
        return None
    factor = scale_factor(vae)
    height, width = latents.shape[-2:]
    budget = budget_for(policy, latents.device)
    if not policy.always and decode_cost(vae, height * factor, width * factor) <= budget:
        return None

    def cost(side: int) -> int:
        return decode_cost(vae, side * factor, side * factor)

    layout = layout_for(cost, int(budget * TILE_SHARE), max(height, width))
    if policy.always and layout.tile >= max(height, width):
        layout = TileLayout(tile=max(MIN_TILE, max(height, width) // 2 + layout.overlap),
                            overlap=layout.overlap, pad=layout.pad)
    if layout.tile >= max(height, width):
        return None
    # The mid block runs whole only while it fits the budget too (beyond ~3000x3000 on the CPU default).
    return replace(layout, whole_latent_stage=latent_stage_cost(vae, height, width) <= budget)


def encode_layout(vae: Any, pixels: torch.Tensor, policy: TilePolicy | None = None) -> TileLayout | None:
    """The tiles (in latent pixels) for encoding ``pixels`` under ``policy``; None: encode whole."""
    policy = policy or current_policy()
    if has_circular_padding(vae):
        return None
    factor = scale_factor(vae)
    height, width = pixels.shape[-2:]
    if height % factor or width % factor:
        return None
    budget = budget_for(policy, pixels.device)
    if not policy.always and encode_cost(vae, height, width) <= budget:
        return None

    def cost(side: int) -> int:
        return encode_cost(vae, side * factor, side * factor)

    latent_side = max(height, width) // factor
    layout = layout_for(cost, int(budget * TILE_SHARE), latent_side)
    if policy.always and layout.tile >= latent_side:
        layout = TileLayout(tile=max(MIN_TILE, latent_side // 2 + layout.overlap), overlap=layout.overlap,
                            pad=layout.pad)
    if layout.tile >= latent_side:
        return None
    return replace(layout, whole_latent_stage=latent_stage_cost(
        vae, height // factor, width // factor) <= budget)

"""Prompt and negative prompt of different lengths in one UNet batch, the way A1111 pairs them.

A prompt longer than 75 tokens is encoded in several 77-token chunks, so the prompt's conditioning and the
negative prompt's can differ in length. A1111 (its CFG denoiser, with its defaults) then runs the UNet on
the prompt rows and on the negative rows separately, each with its own length. Its compatibility settings
change that: ``pad_cond_uncond`` ("Pad conds") pads the shorter one with the empty prompt's chunk so both
run together; ``pad_cond_uncond_v0`` ("Pad conds v0", A1111 before 1.6) repeats the negative prompt's last
vector up to the prompt's length, or cuts it there. The AND parts of one prompt are brought to one length
by repeating each one's last vector (A1111's ``reconstruct_multicond_batch``), whatever the settings.

sdweb keeps the one batched UNet call: separate lengths become padding that the cross-attention ignores
(an ``encoder_attention_mask``), which computes what two separate calls compute. This module only builds
the tensors; :mod:`sdweb.engine.generate` hands them to the UNet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PairedConds:
    """The conditionings of one step, ready to stack: all ``length`` long."""

    uncond: torch.Tensor | None  # (1, length, dim); None without classifier-free guidance
    conds: list[torch.Tensor]  # the AND parts, each (1, length, dim)
    #: Keys each conditioning really has (uncond first when present, then the parts); None when every
    #: key counts (same lengths, or padded on purpose).
    key_lengths: tuple[int, ...] | None

    @property
    def length(self) -> int:
        return int(self.conds[0].shape[1])


def repeat_last(hidden: torch.Tensor, length: int) -> torch.Tensor:
    """``hidden`` (1, L, D) brought to ``length`` keys by repeating its last vector, or cut to it."""
    have = int(hidden.shape[1])
    if have >= length:
        return hidden[:, :length]
    return torch.cat([hidden, hidden[:, -1:].expand(-1, length - have, -1)], dim=1)


def pad_with(hidden: torch.Tensor, length: int, chunk: torch.Tensor) -> torch.Tensor:
    """``hidden`` followed by copies of ``chunk`` (1, 77, D) up to ``length`` keys."""
    missing = length - int(hidden.shape[1])
    if missing <= 0:
        return hidden
    repeats = -(-missing // int(chunk.shape[1]))
    return torch.cat([hidden, chunk.repeat(1, repeats, 1)[:, :missing]], dim=1)


def pair_conds(conds: list[torch.Tensor], uncond: torch.Tensor | None, *, empty_chunk: torch.Tensor,
               pad: bool = False, pad_v0: bool = False) -> PairedConds:
    """Bring the AND parts ``conds`` and the negative ``uncond`` (each (1, own length, D)) to one length.

    ``empty_chunk``: the empty prompt's encoding (1, 77, D), A1111's padding. ``pad`` / ``pad_v0``: A1111's
    ``pad_cond_uncond`` / ``pad_cond_uncond_v0`` (v0 wins when both are on, as in A1111).
    """
    if not conds:
        raise ValueError("at least one conditioning is needed")
    cond_length = max(int(item.shape[1]) for item in conds)
    parts = [repeat_last(item, cond_length) for item in conds]
    if uncond is None or int(uncond.shape[1]) == cond_length:
        return PairedConds(uncond=uncond, conds=parts, key_lengths=None)
    uncond_length = int(uncond.shape[1])
    if pad_v0:
        return PairedConds(uncond=repeat_last(uncond, cond_length), conds=parts, key_lengths=None)
    length = max(cond_length, uncond_length)
    padded_uncond = pad_with(uncond, length, empty_chunk)
    padded_parts = [pad_with(item, length, empty_chunk) for item in parts]
    if pad:
        return PairedConds(uncond=padded_uncond, conds=padded_parts, key_lengths=None)
    return PairedConds(uncond=padded_uncond, conds=padded_parts,
                       key_lengths=(uncond_length, *[cond_length] * len(parts)))


def key_mask(key_lengths: tuple[int, ...], *, length: int, batch_size: int,
             device: torch.device | str) -> torch.Tensor:
    """``(len(key_lengths) * batch_size, length)``: 1 for the keys each row has, 0 for its padding."""
    positions = torch.arange(length, device=device)
    rows = [(positions < own).repeat(batch_size, 1) for own in key_lengths]
    return torch.cat(rows).to(torch.float32)

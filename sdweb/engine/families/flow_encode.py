"""Prompt text -> SD 3.x / Flux conditioning, with A1111's grammar as Forge applies it to these models.

What each family conditions on (diffusers' ``StableDiffusion3Pipeline`` / ``FluxPipeline`` at a short,
plain prompt, which this reproduces exactly):

* **SD 3.x**: CLIP-L and CLIP-G penultimate hidden states side by side (channels), zero-padded to the T5
  width, followed in the sequence by T5-XXL's hidden states (zeros when no T5 is loaded); the pooled
  input is CLIP-L's and CLIP-G's projections side by side.
* **Flux**: T5-XXL's hidden states; the pooled input is CLIP-L's pooled output.

A1111 grammar: the CLIP parts use :func:`sdweb.engine.encode.tokenize_weighted` (75-token chunks, comma
backtrack, BREAK) and are concatenated chunk after chunk, so long prompts are never cut; the pooled
vectors come from the first chunk (A1111's and Forge's SDXL rule). T5 reads the same weighted text runs
in chunks of ``max_sequence_length - 1`` tokens + EOS, each padded to ``max_sequence_length`` (SD 3.x
256, Flux dev 512, schnell 256): one chunk for a prompt within the limit, more (concatenated) past it.
Emphasis is A1111's mode (``emphasis``: "Original" scales by weight and restores the mean, "No norm"
only scales, "Ignore" drops the weights, "None" reads the text without the weight grammar) on each text
encoder's hidden states, T5's included, as Forge does. Every text of a job is padded with empty chunks
to the same length, so any step's conditionings stack into one transformer batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sdweb.engine.encode import (
    ORIGINAL,
    TokenChunk,
    apply_emphasis,
    empty_chunk,
    tokenize_weighted,
    weighted_runs,
)

logger = logging.getLogger(__name__)

_BREAK = ("BREAK", -1.0)


@dataclass(frozen=True)
class FlowCond:
    """One text's conditioning for a flow transformer, batch dimension 1."""

    hidden: torch.Tensor  # (1, L, joint_attention_dim)
    pooled: torch.Tensor  # (1, pooled_projection_dim)


def t5_chunks(tokenizer: Any, text: str, max_length: int,
              emphasis: str = ORIGINAL) -> tuple[list[TokenChunk], int]:
    """T5 token chunks of ``text`` (weighted runs, EOS, padding to ``max_length``) and its token count."""
    parsed = [part for part in weighted_runs(text, emphasis) if part != _BREAK]
    fragments = [fragment for fragment, _weight in parsed]
    ids = tokenizer(fragments, add_special_tokens=False)["input_ids"] if fragments else []
    eos, pad = int(tokenizer.eos_token_id), int(tokenizer.pad_token_id)
    tokens: list[int] = []
    weights: list[float] = []
    for run, (_fragment, weight) in zip(ids, parsed, strict=True):
        tokens.extend(int(token) for token in run)
        weights.extend([float(weight)] * len(run))
    per_chunk = max_length - 1
    chunks: list[TokenChunk] = []
    for start in range(0, max(len(tokens), 1), per_chunk):
        part, part_weights = tokens[start : start + per_chunk], weights[start : start + per_chunk]
        missing = per_chunk - len(part)
        chunks.append(
            TokenChunk(tokens=[*part, eos, *[pad] * missing], weights=[*part_weights, 1.0, *[1.0] * missing])
        )
    return chunks, len(tokens)


class FlowTextEncoder:
    """Encodes texts for an SD3 or Flux pipeline (``family``: ``sd3`` or ``flux``)."""

    def __init__(
        self,
        pipe: Any,
        family: str,
        *,
        device: torch.device | str,
        dtype: torch.dtype,
        max_sequence_length: int,
        clip_skip: int = 1,
        emphasis: str = ORIGINAL,
    ) -> None:
        if clip_skip < 1:
            raise ValueError(f"clip_skip must be >= 1, got {clip_skip}")
        self.pipe = pipe
        self.family = family
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_sequence_length = int(max_sequence_length)
        self.clip_skip = clip_skip
        self.emphasis = emphasis

    def encode_texts(self, texts: Sequence[str], *, groups: Sequence[Sequence[int]] = ()) -> list[FlowCond]:
        """Encode ``texts``; all results have the same sequence length. ``groups``: texts encoded as one
        A1111 batch, whose chunks' mean "Original" emphasis restores as one (``PromptEncoder.encode_texts``).
        """
        pipe = self.pipe
        t5 = self._t5(texts, groups)
        if self.family == "flux":
            _hidden, pooled = self._clip(pipe.tokenizer, pipe.text_encoder, texts, hidden=False)
            return [FlowCond(hidden=t5[i], pooled=pooled[i]) for i in range(len(texts))]
        hidden_l, pooled_l = self._clip(pipe.tokenizer, pipe.text_encoder, texts, hidden=True, groups=groups)
        hidden_g, pooled_g = self._clip(pipe.tokenizer_2, pipe.text_encoder_2, texts, hidden=True,
                                        groups=groups)
        joint = int(pipe.transformer.config.joint_attention_dim)
        results = []
        for i in range(len(texts)):
            clip = torch.cat([hidden_l[i], hidden_g[i]], dim=-1)
            clip = torch.nn.functional.pad(clip, (0, joint - clip.shape[-1]))
            results.append(
                FlowCond(
                    hidden=torch.cat([clip, t5[i]], dim=1),
                    pooled=torch.cat([pooled_l[i], pooled_g[i]], dim=-1),
                )
            )
        return results

    # -- CLIP ----------------------------------------------------------------------------------
    def _clip(
        self, tokenizer: Any, encoder: Any, texts: Sequence[str], *, hidden: bool,
        groups: Sequence[Sequence[int]] = (),
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        per_text = [tokenize_weighted(tokenizer, text, self.emphasis)[0] for text in texts]
        if not hidden:  # Flux: the pooled vector of each text's first chunk is all it uses
            per_text = [chunks[:1] for chunks in per_text]
        count = max(len(chunks) for chunks in per_text)
        padding = empty_chunk(tokenizer)
        flat = [chunk for chunks in per_text for chunk in [*chunks, *[padding] * (count - len(chunks))]]
        device = getattr(encoder, "device", self.device)
        ids = torch.tensor([chunk.tokens for chunk in flat], dtype=torch.long, device=device)
        output = encoder(ids, output_hidden_states=hidden)
        if hasattr(output, "text_embeds"):
            pooled_all = output.text_embeds  # CLIPTextModelWithProjection (SD3)
        else:
            pooled_all = output.pooler_output  # CLIPTextModel (Flux)
        hiddens: list[torch.Tensor] = []
        pooled: list[torch.Tensor] = []
        weights = torch.tensor([chunk.weights for chunk in flat], device=pooled_all.device)
        states = None
        if hidden:
            # diffusers' SD3: hidden_states[-(clip_skip + 2)], its None -> [-2]; A1111's clip skip 1 is that.
            states = apply_emphasis(output.hidden_states[-(self.clip_skip + 1)], weights.to(pooled_all.dtype),
                                    self.emphasis, groups=_chunk_groups(groups, count))
        for position in range(len(texts)):
            rows = slice(position * count, (position + 1) * count)
            pooled.append(pooled_all[position * count : position * count + 1].to(self.device, self.dtype))
            if states is not None:
                hiddens.append(states[rows].reshape(1, -1, states.shape[-1]).to(self.device, self.dtype))
        return hiddens, pooled

    # -- T5 ------------------------------------------------------------------------------------
    def _t5(self, texts: Sequence[str], groups: Sequence[Sequence[int]] = ()) -> list[torch.Tensor]:
        pipe = self.pipe
        encoder = pipe.text_encoder_2 if self.family == "flux" else getattr(pipe, "text_encoder_3", None)
        tokenizer = pipe.tokenizer_2 if self.family == "flux" else getattr(pipe, "tokenizer_3", None)
        if encoder is None or tokenizer is None:
            # SD 3.x without T5 (diffusers' way): zeros where T5's sequence would be.
            joint = int(pipe.transformer.config.joint_attention_dim)
            zeros = torch.zeros(1, self.max_sequence_length, joint, device=self.device, dtype=self.dtype)
            return [zeros for _ in texts]
        per_text = [t5_chunks(tokenizer, text, self.max_sequence_length, self.emphasis)[0] for text in texts]
        count = max(len(chunks) for chunks in per_text)
        padding = t5_chunks(tokenizer, "", self.max_sequence_length)[0][0]
        flat = [chunk for chunks in per_text for chunk in [*chunks, *[padding] * (count - len(chunks))]]
        device = getattr(encoder, "device", self.device)
        ids = torch.tensor([chunk.tokens for chunk in flat], dtype=torch.long, device=device)
        hidden = encoder(ids, output_hidden_states=False)[0]
        weights = torch.tensor([chunk.weights for chunk in flat], dtype=hidden.dtype, device=hidden.device)
        hidden = apply_emphasis(hidden, weights, self.emphasis, groups=_chunk_groups(groups, count))
        return [
            hidden[i * count : (i + 1) * count].reshape(1, -1, hidden.shape[-1]).to(self.device, self.dtype)
            for i in range(len(texts))
        ]


def _chunk_groups(groups: Sequence[Sequence[int]], count: int) -> list[list[int]]:
    """Text groups as rows of the flat chunk batch (``count`` chunks a text): one group per chunk."""
    return [[member * count + chunk for member in group] for group in groups for chunk in range(count)]


def count_flow_tokens(tokenizer: Any, text: str, max_sequence_length: int) -> tuple[int, int]:
    """``(tokens, limit)`` for the UI counter of a T5 model: text tokens, and the text tokens the chunks
    hold (``max_sequence_length - 1`` each, EOS taking the last place), growing a chunk at a time.
    """
    from sdweb.prompts.parser import split_composable_prompt, strip_extra_networks

    text, _calls = strip_extra_networks(text)
    parts = [part for part, _weight in split_composable_prompt(text)]
    tokens = max(t5_chunks(tokenizer, part, max_sequence_length)[1] for part in parts) if parts else 0
    per_chunk = max_sequence_length - 1
    limit = max(1, -(-max(tokens, 1) // per_chunk)) * per_chunk
    return tokens, limit

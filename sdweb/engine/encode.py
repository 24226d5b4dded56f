"""Prompt text -> ``prompt_embeds``, as A1111 encodes it: long prompts, emphasis, BREAK, CLIP skip.

This module owns the step between the prompt grammar (``sdweb.prompts.parser``, pure text) and the
UNet's conditioning tensors:

- Chunks: the weighted text runs are tokenized and packed into 75-token chunks. When a chunk fills up
  and a comma was seen in its last 20 tokens, the words after that comma move to the next chunk (A1111's
  "comma backtrack"), and ``BREAK`` starts a new chunk. Each chunk is wrapped in BOS/EOS, padded to 77
  with the tokenizer's pad token, encoded on its own, and the chunks' hidden states are concatenated:
  nothing is ever truncated. Texts of one job are padded with encoded empty chunks to one length; each
  keeps its own length (``EncodedText.own_length``) for :mod:`sdweb.engine.cond_pairing`, which pairs
  prompt and negative prompt as A1111 does (apart, "Pad conds" or "Pad conds v0").
- Emphasis, A1111's four modes (``emphasis``): "Original" (its default) multiplies the hidden states by
  each token's weight, then rescales each chunk so its mean is what it was before; "No norm" only
  multiplies; "Ignore" parses the weights and drops them; "None" does not parse the text for weights at
  all (brackets, backslash escapes and ``BREAK`` are tokenized as written).
- CLIP skip (SD1/SD2): the hidden states of layer ``-clip_skip``, through the final layer norm (1 = the
  last layer, what diffusers uses). diffusers' own ``clip_skip=`` is never used (it fails on
  transformers 5 and counts one layer differently).
- Devices: token ids are made on each encoder's execution device (its offload hooks' device: with
  ``--lowvram`` the weights sit on ``meta`` between forwards), and under ``--medvram`` every other
  component is sent off the device before the text encoders run (:mod:`sdweb.engine.accelerator`).
- SDXL: both encoders' penultimate hidden states side by side, the pooled projection of encoder 2's
  first chunk, and an all-zero negative when the negative prompt is empty (as A1111 and diffusers do).
  A1111 ignores CLIP skip for SDXL by default, and so do we.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sdweb.engine.accelerator import module_execution_device, offload_idle
from sdweb.prompts.parser import (
    get_learned_conditioning_prompt_schedules,
    parse_prompt_attention,
    split_composable_prompt,
    strip_extra_networks,
)

logger = logging.getLogger(__name__)

#: Tokens of text per chunk; BOS and EOS make it 77, CLIP's context length.
CHUNK_LENGTH = 75
#: How far back (in tokens) a full chunk looks for a comma to break at (A1111's default).
COMMA_BACKTRACK = 20
#: The marker ``parse_prompt_attention`` uses for BREAK.
_BREAK = ("BREAK", -1.0)
#: A1111's default emphasis mode.
ORIGINAL = "Original"


@dataclass
class TokenChunk:
    """One 77-token chunk: BOS, up to 75 tokens of text (padded), EOS; one weight per token."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class EncodedText:
    """One text's conditioning, batch dimension 1."""

    hidden: torch.Tensor  # (1, 77 * chunks, dim)
    pooled: torch.Tensor | None = None  # SDXL: (1, proj_dim)
    #: Keys of the text itself (77 per chunk of its own); ``hidden`` may go on with empty-prompt chunks
    #: (:meth:`PromptEncoder.encode_texts` pads every text to the longest). None: all of ``hidden``.
    own_length: int | None = None

    @property
    def own(self) -> torch.Tensor:
        """``hidden`` without the padding: (1, own_length, dim)."""
        return self.hidden if self.own_length is None else self.hidden[:, :self.own_length]


def zero_like(encoded: EncodedText) -> EncodedText:
    """All-zero conditioning (SDXL's empty negative prompt)."""
    return EncodedText(hidden=torch.zeros_like(encoded.hidden),
                       pooled=torch.zeros_like(encoded.pooled) if encoded.pooled is not None else None,
                       own_length=encoded.own_length)


@dataclass(frozen=True)
class PromptConditioning:
    """What the UNet needs for one prompt pair, batch dimension 1 (repeat it for a batch)."""

    prompt_embeds: torch.Tensor  # (1, 77 * chunks, dim)
    negative_prompt_embeds: torch.Tensor  # same shape
    pooled_prompt_embeds: torch.Tensor | None = None  # SDXL: (1, proj_dim)
    negative_pooled_prompt_embeds: torch.Tensor | None = None
    chunk_count: int = 1


# ---------------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------------


def weighted_runs(text: str, emphasis: str = ORIGINAL) -> list[tuple[str, float]]:
    """``text`` as A1111's text encoders read it: weighted runs (and BREAK markers), or with emphasis
    "None" the whole text as one run of weight 1 (A1111 then skips the attention grammar altogether).
    """
    if emphasis == "None":
        return [(text, 1.0)]
    return [(fragment, float(weight)) for fragment, weight in parse_prompt_attention(text)]


@dataclass(frozen=True)
class ScheduleTexts:
    """The texts of a job's prompt schedules as A1111 encodes them (:func:`schedule_texts`)."""

    texts: list[str]  # what to encode, in order
    groups: list[list[int]]  # A1111's one-call batches of several texts (indices into texts, repeats kept)
    lookups: list[dict[str, int]]  # per schedule: its text -> index into texts


def schedule_texts(schedules: Sequence[Sequence[str]]) -> ScheduleTexts:
    """A1111 encodes the texts of each prompt schedule (an AND part's, the negative prompt's) in one call,
    and "Original" emphasis restores each chunk's mean over that call's batch. A schedule of one distinct
    text shares its encoding with every other such schedule (encoded once, its own mean); a schedule of
    several texts gets encodings of its own, one group.
    """
    entries: dict[tuple[int, str], int] = {}  # (schedule, or -1 for shared; text) -> index
    texts: list[str] = []
    groups: list[list[int]] = []
    lookups: list[dict[str, int]] = []
    for number, scheduled in enumerate(schedules):
        owner = number if len(set(scheduled)) > 1 else -1
        for text in scheduled:
            if (owner, text) not in entries:
                entries[owner, text] = len(texts)
                texts.append(text)
        lookups.append({text: entries[owner, text] for text in scheduled})
        if owner >= 0:
            groups.append([entries[owner, text] for text in scheduled])
    return ScheduleTexts(texts=texts, groups=groups, lookups=lookups)


def emphasis_infotext(mode: str | None, texts: Sequence[str]) -> dict[str, str]:
    """A1111's "Emphasis" infotext pair: written when the mode is not "Original" and one of the texts the
    text encoders read (prompt editing resolved, extra-network tags removed) has a ``(`` or ``[``.
    """
    if mode and mode != ORIGINAL and any("(" in text or "[" in text for text in texts):
        return {"Emphasis": mode}
    return {}


def tokenize_weighted(tokenizer: Any, text: str, emphasis: str = ORIGINAL) -> tuple[list[TokenChunk], int]:
    """A1111's chunking of ``text``: 77-token chunks with per-token weights, and the token count.

    The token count is what A1111's counter shows: 75 for every full chunk plus the tokens of the last.
    ``emphasis``: A1111's mode; "None" reads the text without its weight grammar (:func:`weighted_runs`).
    """
    parsed = weighted_runs(text, emphasis)
    texts = [fragment for fragment, _weight in parsed]
    tokenized = tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"] if texts else []
    bos, eos = int(tokenizer.bos_token_id), int(tokenizer.eos_token_id)
    pad = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else eos
    comma = tokenizer.get_vocab().get(",</w>")

    chunks: list[TokenChunk] = []
    current = TokenChunk()
    token_count = 0
    last_comma = -1

    def close_chunk(is_last: bool = False) -> None:
        nonlocal current, token_count, last_comma
        token_count += len(current.tokens) if is_last else CHUNK_LENGTH
        missing = CHUNK_LENGTH - len(current.tokens)
        current.tokens = [bos, *current.tokens, *([pad] * missing)]
        current.weights = [1.0, *current.weights, *([1.0] * missing)]
        # EOS right after the text, padding after it: where diffusers' tokenizer puts them.
        current.tokens.insert(CHUNK_LENGTH + 1 - missing, eos)
        current.weights.insert(CHUNK_LENGTH + 1 - missing, 1.0)
        last_comma = -1
        chunks.append(current)
        current = TokenChunk()

    for tokens, (fragment, weight) in zip(tokenized, parsed, strict=True):
        if (fragment, weight) == _BREAK:
            close_chunk()
            continue
        for token in tokens:
            if token == comma:
                last_comma = len(current.tokens)
            elif (len(current.tokens) == CHUNK_LENGTH and last_comma != -1
                  and len(current.tokens) - last_comma <= COMMA_BACKTRACK):
                # Move the words after the last comma to the next chunk instead of splitting them.
                cut = last_comma + 1
                moved_tokens, moved_weights = current.tokens[cut:], current.weights[cut:]
                current.tokens, current.weights = current.tokens[:cut], current.weights[:cut]
                close_chunk()
                current.tokens, current.weights = moved_tokens, moved_weights
            if len(current.tokens) == CHUNK_LENGTH:
                close_chunk()
            current.tokens.append(int(token))
            current.weights.append(float(weight))
    if current.tokens or not chunks:
        close_chunk(is_last=True)
    return chunks, token_count


def count_tokens(tokenizer: Any, text: str, *, steps: int = 20, positive: bool = True,
                 emphasis: str = ORIGINAL) -> tuple[int, int]:
    """``(tokens, limit)`` for the UI counter: the limit grows by 75 with each chunk (A1111's "12/75").

    As A1111's counter: extra-network tags are left out, a positive prompt is split at ``AND``, and of
    the texts prompt editing produces over ``steps`` the longest one counts; with emphasis "None" the
    brackets and weights are counted as the text they then are.
    """
    text, _calls = strip_extra_networks(text)
    parts = [part for part, _weight in split_composable_prompt(text)] if positive else [text]
    schedules = get_learned_conditioning_prompt_schedules(parts, max(1, steps))
    tokens = max(tokenize_weighted(tokenizer, scheduled, emphasis)[1]
                 for schedule in schedules for _end, scheduled in schedule)
    limit = max(1, -(-max(tokens, 1) // CHUNK_LENGTH)) * CHUNK_LENGTH
    return tokens, limit


def empty_chunk(tokenizer: Any) -> TokenChunk:
    """The chunk of an empty prompt: BOS, EOS, padding."""
    chunks, _count = tokenize_weighted(tokenizer, "")
    return chunks[0]


# ---------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------


def is_sdxl_pipeline(pipe: Any) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


class PromptEncoder:
    """Encodes prompt pairs with a pipeline's tokenizer(s) and text encoder(s)."""

    def __init__(self, pipe: Any, *, device: torch.device | str, dtype: torch.dtype) -> None:
        self._pipe = pipe
        self._device = torch.device(device)
        self._dtype = dtype
        self.is_sdxl = is_sdxl_pipeline(pipe)
        if self.is_sdxl:
            pairs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
            self._encoders = [(tok, enc) for tok, enc in pairs if tok is not None and enc is not None]
        else:
            self._encoders = [(pipe.tokenizer, pipe.text_encoder)]

    def encode(self, prompt: str, negative_prompt: str, *, clip_skip: int = 1) -> PromptConditioning:
        """Encode both prompts; the result has as many 77-token chunks for each."""
        positive, negative = self.encode_texts([prompt, negative_prompt], clip_skip=clip_skip)
        if self.is_sdxl and not negative_prompt.strip():
            negative = zero_like(negative)
        return PromptConditioning(
            prompt_embeds=positive.hidden,
            negative_prompt_embeds=negative.hidden,
            pooled_prompt_embeds=positive.pooled,
            negative_pooled_prompt_embeds=negative.pooled,
            chunk_count=positive.hidden.shape[1] // (CHUNK_LENGTH + 2),
        )

    def encode_texts(self, texts: Sequence[str], *, clip_skip: int = 1, emphasis: str = ORIGINAL,
                     groups: Sequence[Sequence[int]] = ()) -> list[EncodedText]:
        """Encode several texts, all padded with empty chunks to the longest one's chunk count.

        One encoder call per text encoder for all the chunks of all the texts. ``emphasis``: A1111's
        emphasis mode (:func:`apply_emphasis`), applied to each encoder's hidden states. ``groups``: texts
        (indices, repeated as often as A1111's batch repeats them) that A1111 encodes in one call, the
        texts of one prompt's editing schedule: "Original" restores the mean of each chunk over them all.
        """
        if clip_skip < 1:
            raise ValueError(f"clip_skip must be >= 1, got {clip_skip}")
        # --medvram: a hires first pass's UNet (or an img2img VAE) must not sit beside the text encoders.
        offload_idle(self._pipe)
        hidden_parts: list[list[torch.Tensor]] = [[] for _ in texts]
        pooled: list[torch.Tensor | None] = [None] * len(texts)
        own_chunks = [1] * len(texts)
        for index, (tokenizer, encoder) in enumerate(self._encoders):
            per_text = [tokenize_weighted(tokenizer, text, emphasis)[0] for text in texts]
            own_chunks = [max(have, len(chunks)) for have, chunks in zip(own_chunks, per_text, strict=True)]
            chunk_count = max(len(chunks) for chunks in per_text)
            padding = empty_chunk(tokenizer)
            flat = [chunk for chunks in per_text
                    for chunk in [*chunks, *[padding] * (chunk_count - len(chunks))]]
            chunk_groups = [[member * chunk_count + chunk for member in group]
                            for group in groups for chunk in range(chunk_count)]
            hidden, pooled_all = self._encode_chunks(encoder, flat, clip_skip=clip_skip,
                                                     projected=self.is_sdxl and index == 1,
                                                     emphasis=emphasis, groups=chunk_groups)
            for position in range(len(texts)):
                rows = hidden[position * chunk_count:(position + 1) * chunk_count]
                hidden_parts[position].append(rows.reshape(1, -1, hidden.shape[-1]))
                if pooled_all is not None:  # SDXL: the projection of the first chunk (as A1111)
                    pooled[position] = pooled_all[position * chunk_count:position * chunk_count + 1]
        return [
            EncodedText(hidden=torch.cat(parts, dim=-1).to(self._dtype),
                        pooled=pooled[i].to(self._dtype) if pooled[i] is not None else None,
                        own_length=own_chunks[i] * (CHUNK_LENGTH + 2))
            for i, parts in enumerate(hidden_parts)
        ]

    def _encode_chunks(self, encoder: Any, chunks: Sequence[TokenChunk], *, clip_skip: int,
                       projected: bool, emphasis: str = ORIGINAL,
                       groups: Sequence[Sequence[int]] = ()) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden states ``(chunks, 77, dim)`` with emphasis applied, and pooled outputs (SDXL enc. 2)."""
        # Where the encoder runs, not where its weights wait (CPU under --medvram, meta under --lowvram).
        device = module_execution_device(encoder, default=self._device)
        input_ids = torch.tensor([chunk.tokens for chunk in chunks], dtype=torch.long, device=device)
        need_layers = self.is_sdxl or clip_skip > 1
        output = encoder(input_ids, output_hidden_states=need_layers)
        if self.is_sdxl:
            hidden = output.hidden_states[-2]  # penultimate, no final norm (SDXL's conditioning)
        elif clip_skip > 1:
            hidden = _final_layer_norm(encoder)(output.hidden_states[-clip_skip])
        else:
            hidden = output[0]  # last_hidden_state: the final layer, normed
        pooled = output.text_embeds if projected else None
        weights = torch.tensor([chunk.weights for chunk in chunks], dtype=hidden.dtype, device=hidden.device)
        return apply_emphasis(hidden, weights, emphasis, groups=groups), pooled


def _final_layer_norm(encoder: Any) -> Any:
    norm = getattr(encoder, "final_layer_norm", None)
    if norm is None:  # transformers 4 kept it one level down
        norm = encoder.text_model.final_layer_norm
    return norm


def apply_emphasis(hidden: torch.Tensor, weights: torch.Tensor, mode: str = ORIGINAL, *,
                   groups: Sequence[Sequence[int]] = ()) -> torch.Tensor:
    """A1111's emphasis on ``hidden`` ``(chunks, tokens, dim)`` with one weight per token.

    "Original": scale by the weights, then restore each chunk's mean. "No norm": scale only. "Ignore" and
    "None": the hidden states as they are (with "None" the weights are all 1 anyway). ``groups``: rows
    (indices, repeats counted) that A1111 has in one batch, whose mean it restores as one: their means
    are replaced by the mean over all the group's elements.
    """
    if mode in ("None", "Ignore") or bool((weights == 1.0).all()):
        return hidden  # the common case, and bit-identical to diffusers' encoding
    if mode == "No norm":
        return hidden * weights.unsqueeze(-1)
    original_mean = hidden.mean(dim=(1, 2), keepdim=True)
    scaled = hidden * weights.unsqueeze(-1)
    new_mean = scaled.mean(dim=(1, 2), keepdim=True)
    for rows in groups:
        if len(set(rows)) > 1:  # one row alone keeps its own mean (bit for bit)
            index = torch.tensor(list(rows), device=hidden.device)
            members = torch.tensor(sorted(set(rows)), device=hidden.device)
            # Over the batch's elements, as A1111's z.mean() (in fp16 too, with its float32 accumulation).
            original_mean[members] = hidden[index].mean()
            new_mean[members] = scaled[index].mean()
    return scaled * (original_mean / new_mean)

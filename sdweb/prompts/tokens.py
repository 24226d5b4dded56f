"""Token-counter arithmetic that needs no tokenizer: which texts to count and what limit to show.

A1111's counter under the prompt box shows ``count/limit``: the token count of the longest text the
prompt can turn into (after removing ``<lora:...>`` tags, splitting at ``AND`` and expanding prompt
editing for the current step count), and the limit of the 75-token chunks that count needs. Prompts
are never truncated: each further 75 tokens is one more chunk, so the limit grows 75, 150, 225...

The engine owns the tokenizer and counts the tokens of each text; this module decides which texts and
turns the counts into what the UI shows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from sdweb.prompts.parser import (
    get_learned_conditioning_prompt_schedules,
    split_composable_prompt,
    strip_extra_networks,
)

logger = logging.getLogger(__name__)

__all__ = ["CHUNK_TOKENS", "TokenCount", "chunks_needed", "texts_for_token_count", "token_limit"]

#: Tokens in one CLIP chunk, without the start and end tokens (77 - 2).
CHUNK_TOKENS = 75


def chunks_needed(n_tokens: int, chunk: int = CHUNK_TOKENS) -> int:
    """How many chunks of ``chunk`` tokens hold ``n_tokens`` tokens; an empty prompt still takes one.

    Raises:
        ValueError: ``n_tokens`` is negative or ``chunk`` is below 1.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 token, got {chunk}")
    if n_tokens < 0:
        raise ValueError(f"token count cannot be negative, got {n_tokens}")
    return max(1, -(-n_tokens // chunk))


def token_limit(n_tokens: int, chunk: int = CHUNK_TOKENS) -> int:
    """The limit A1111 shows next to a count: the capacity of the chunks the count needs (75, 150...)."""
    return chunks_needed(n_tokens, chunk) * chunk


@dataclass(frozen=True)
class TokenCount:
    """What the counter shows: ``count/limit``, e.g. ``"80/150"`` (two chunks)."""

    count: int
    limit: int
    chunk: int = CHUNK_TOKENS

    @property
    def chunks(self) -> int:
        """How many chunks the text is encoded in."""
        return max(1, self.limit // self.chunk)

    def __str__(self) -> str:
        return f"{self.count}/{self.limit}"

    @classmethod
    def from_counts(cls, counts: Iterable[int], chunk: int = CHUNK_TOKENS) -> TokenCount:
        """The counter for several texts (see :func:`texts_for_token_count`): the longest one decides."""
        longest = max(counts, default=0)
        return cls(longest, token_limit(longest, chunk), chunk)


def texts_for_token_count(prompt: str, steps: int, *, negative: bool = False) -> list[str]:
    """The texts whose token counts the counter compares, as A1111's counter chooses them.

    Extra-network tags are removed; a positive prompt is split at ``AND`` (a negative prompt is not,
    as A1111 does not); each part is expanded over ``steps`` with prompt editing and alternation.
    Duplicates are dropped, the first occurrence's order kept. Apply styles first if they should count.
    A step count below 1 (a slider being dragged) counts as 1.
    """
    text, _ = strip_extra_networks(prompt)
    parts = [text] if negative else [part for part, _ in split_composable_prompt(text)]
    schedules = get_learned_conditioning_prompt_schedules(list(dict.fromkeys(parts)), max(1, steps))
    return list(dict.fromkeys(scheduled for schedule in schedules for _, scheduled in schedule))

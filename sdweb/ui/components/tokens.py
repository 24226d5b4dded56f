"""The token counter under a prompt box: A1111's ``12/75``, ``80/150`` once a second chunk starts.

The count is the engine's tokenizer's (``services.token_counter``) once a model is loaded, and an
estimate (``~12/75``) until then; :func:`token_counter_text` is pure and tested without a browser.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import gradio as gr

from sdweb.prompts.tokens import CHUNK_TOKENS, TokenCount, texts_for_token_count

logger = logging.getLogger(__name__)

_TOKEN_RE = re.compile(r"[A-Za-z]+|\d|[^\sA-Za-z\d]")
_LORA_RE = re.compile(r"<[^<>]*>")
_WEIGHT_RE = re.compile(r":\s*-?\d+(?:\.\d+)?\s*(?=[)\]])")


def estimate_tokens(text: str) -> int:
    """A rough CLIP token count for when the real tokenizer is not loaded yet.

    Words count one token each (long ones more), digits and punctuation one each; extra-network
    tags (``<lora:x:1>``), emphasis brackets and weights are not sent to CLIP and are dropped.
    """
    text = _LORA_RE.sub(" ", text)
    text = _WEIGHT_RE.sub("", text)
    text = re.sub(r"(?<!\\)[()\[\]]", " ", text).replace("BREAK", " ")
    count = 0
    for token in _TOKEN_RE.findall(text):
        count += max(1, math.ceil(len(token) / 8)) if token.isalpha() else 1
    return count


def token_counter_text(
    text: str,
    counter: Callable[[str], tuple[int, int]] | None,
    *,
    steps: int = 20,
    negative: bool = False,
) -> str:
    """A1111's counter: ``12/75``, then ``80/150`` once the prompt spills into a second chunk.

    ``counter`` is the engine's tokenizer (``services.token_counter``); until it exists the count is
    estimated over the texts A1111 would count (``AND`` parts, prompt-editing variants over ``steps``).
    """
    if counter is not None:
        try:
            tokens, limit = counter(text)
            return _counter_html(tokens, limit, estimated=False)
        except LookupError:
            pass  # the engine (and its tokenizer) is not up yet
        except Exception:  # the counter is a convenience; never let it break typing
            logger.debug("token counter failed; estimating", exc_info=True)
    try:
        texts = texts_for_token_count(text, int(steps or 1), negative=negative) or [text]
    except Exception:  # noqa: BLE001 - half-typed syntax: estimate the raw text
        texts = [text]
    count = TokenCount.from_counts(estimate_tokens(part) for part in texts)
    return _counter_html(count.count, count.limit, estimated=True)


def _counter_html(tokens: int, limit: int, *, estimated: bool) -> str:
    over = " sdweb-tokens-over" if limit > CHUNK_TOKENS else ""
    title = "estimated (the tokenizer loads with the model)" if estimated else "CLIP tokens / chunk limit"
    prefix = "~" if estimated else ""
    return f'<div class="sdweb-tokens{over}" title="{title}">{prefix}{tokens}/{limit}</div>'


def render_token_counter(elem_id: str) -> gr.HTML:
    """The counter's box (place it under its prompt box); :func:`wire_token_counters` keeps it current."""
    return gr.HTML(
        token_counter_text("", None),
        elem_id=elem_id,
        js_on_load=None,
        elem_classes="sdweb-token-box",
    )


def wire_token_counters(
    services: Any, form: Mapping[str, Any], prompt_tokens: gr.HTML, negative_tokens: gr.HTML
) -> None:
    """Recount the prompt and negative prompt as they are typed (prompt editing counted over the steps)."""

    def count_prompt(text: str, steps: float) -> str:
        return token_counter_text(text or "", services.token_counter, steps=int(steps or 1))

    def count_negative(text: str, steps: float) -> str:
        return token_counter_text(text or "", services.token_counter, steps=int(steps or 1), negative=True)

    for box, shown, count in (
        (form["prompt"], prompt_tokens, count_prompt),
        (form["negative_prompt"], negative_tokens, count_negative),
    ):
        box.change(
            count,
            inputs=[box, form["steps"]],
            outputs=shown,
            show_progress="hidden",
            trigger_mode="always_last",
            concurrency_limit=None,
        )

"""Token-counter arithmetic: chunk counts, limits, and which texts are counted."""

from __future__ import annotations

import pytest

from sdweb.prompts.tokens import (
    CHUNK_TOKENS,
    TokenCount,
    chunks_needed,
    texts_for_token_count,
    token_limit,
)


@pytest.mark.parametrize(
    ("tokens", "chunks", "limit"),
    [(0, 1, 75), (1, 1, 75), (75, 1, 75), (76, 2, 150), (150, 2, 150), (151, 3, 225), (200, 3, 225)],
)
def test_chunks_and_limit(tokens: int, chunks: int, limit: int) -> None:
    assert chunks_needed(tokens) == chunks
    assert token_limit(tokens) == limit


def test_other_chunk_sizes_and_bad_input() -> None:
    assert chunks_needed(11, chunk=10) == 2
    with pytest.raises(ValueError, match="negative"):
        chunks_needed(-1)
    with pytest.raises(ValueError, match="chunk"):
        chunks_needed(5, chunk=0)


def test_token_count_display() -> None:
    counter = TokenCount.from_counts([12, 80, 3])
    assert (counter.count, counter.limit, counter.chunks, str(counter)) == (80, 150, 2, "80/150")
    assert str(TokenCount.from_counts([])) == "0/75"
    assert CHUNK_TOKENS == 75


def test_texts_for_token_count_expands_like_a1111() -> None:
    prompt = "a cat <lora:detail:0.8> [in a box:on a mat:0.5] AND a dog :0.4 AND a cat"
    assert texts_for_token_count(prompt, 10) == [
        "a cat  in a box",
        "a cat  on a mat",
        " a dog",
        " a cat",
    ]


def test_negative_prompt_is_not_split_at_and() -> None:
    assert texts_for_token_count("ugly AND blurry", 20, negative=True) == ["ugly AND blurry"]


def test_alternation_is_counted_once_per_distinct_text() -> None:
    assert texts_for_token_count("[red|blue] car", 30) == ["red car", "blue car"]


def test_step_slider_at_zero_still_counts() -> None:
    assert texts_for_token_count("a [b:c:2]", 0) == ["a b"]

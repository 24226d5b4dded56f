"""Random prompts never make the grammar functions raise, and their results keep their promises.

Seeded, so a failure reproduces; the alphabet is weighted towards the characters the grammar cares
about, which is where a hand-written parser breaks.
"""

from __future__ import annotations

import random
import re
import time

import pytest

from sdweb.prompts.parser import (
    BREAK_WEIGHT,
    get_learned_conditioning_prompt_schedules,
    parse_prompt_attention,
    prompt_for_step,
    split_composable_prompt,
    strip_extra_networks,
)
from sdweb.prompts.tokens import texts_for_token_count

_PIECES = (
    list("ab ,()[]:|\\<>=\n\t")
    + ["(", ")", "[", "]", ":", "|", "\\(", "\\)", "\\\\", "1", "0.5", ".5", "1.2", "-1", "+2", "1e3"]
    + ["1e999"]
    + ["BREAK", " BREAK ", "AND", " AND ", "<lora:x:0.5>", "<lora:", "cat", "é", "🙂"]
)


def random_prompts(seed: int, count: int, max_pieces: int = 24) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(_PIECES) for _ in range(rng.randint(0, max_pieces))) for _ in range(count)]


@pytest.mark.parametrize("seed", range(4))
def test_attention_never_raises_and_merges_runs(seed: int) -> None:
    for prompt in random_prompts(seed, 500):
        runs = parse_prompt_attention(prompt)
        assert runs, prompt
        for (_, left), (_, right) in zip(runs, runs[1:], strict=False):
            assert left != right, (prompt, runs)
        for text, weight in runs:
            assert isinstance(text, str) and isinstance(weight, float), (prompt, runs)
            if text == "BREAK" and weight == BREAK_WEIGHT:
                continue
            # Only characters of the prompt come out; brackets only where escaped or unmatched.
            assert set(text) <= set(prompt), (prompt, runs)


@pytest.mark.parametrize("seed", range(4))
def test_schedules_never_raise_and_are_well_formed(seed: int) -> None:
    prompts = random_prompts(100 + seed, 400)
    for steps, hires, old in ((10, None, False), (20, 8, False), (7, 5, True), (1, None, False)):
        schedules = get_learned_conditioning_prompt_schedules(prompts, steps, hires, old)
        last = hires if hires is not None and not old else steps
        for prompt, plan in zip(prompts, schedules, strict=True):
            ends = [end for end, _ in plan]
            assert ends == sorted(set(ends)) and ends[0] >= 1 and ends[-1] == last, (prompt, plan)
            if not set(prompt) & set("[]|"):
                assert plan == [(last, prompt)], prompt
            for step in range(last):
                assert isinstance(prompt_for_step(plan, step), str)


@pytest.mark.parametrize("seed", range(2))
def test_and_and_extra_networks_never_raise(seed: int) -> None:
    for prompt in random_prompts(200 + seed, 500):
        parts = split_composable_prompt(prompt)
        assert len(parts) == 1 + len(re.findall(r"\bAND\b", prompt)), (prompt, parts)
        cleaned, calls = strip_extra_networks(prompt)
        assert len(cleaned) <= len(prompt)
        assert all(call.kind and call.items for call in calls), (prompt, calls)
        assert texts_for_token_count(prompt, 5), prompt
        assert texts_for_token_count(prompt, 5, negative=True), prompt


def test_plain_text_passes_through_unchanged() -> None:
    rng = random.Random(7)
    words = ["a", "cat", "on", "a", "mat", ",", "best", "quality", "8k", "é", "🙂", "-", "."]
    for _ in range(200):
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(1, 30)))
        assert parse_prompt_attention(prompt) == [(prompt, 1.0)]
        assert get_learned_conditioning_prompt_schedules([prompt], 20) == [[(20, prompt)]]
        assert split_composable_prompt(prompt) == [(prompt.rstrip(), 1.0)]
        assert strip_extra_networks(prompt) == (prompt, [])


def test_schedule_right_before_a_stray_bracket_is_a_schedule() -> None:
    # A1111 (lark 1.1.2) flips between a schedule and plain text here from one start to the next;
    # we always read the schedule.
    assert get_learned_conditioning_prompt_schedules(["[a:3]]"], 10) == [[(3, "]"), (10, "a]")]]


@pytest.mark.parametrize("prompt", ["(a" * 10_000, "[a" * 10_000, "(a)" * 6_666, "[a|" * 6_000])
def test_a_maximal_pasted_prompt_parses_quickly(prompt: str) -> None:
    # 20,000 characters is the longest prompt the request model accepts (params.MAX_PROMPT_CHARS).
    started = time.perf_counter()
    runs = parse_prompt_attention(prompt)
    get_learned_conditioning_prompt_schedules([prompt], 150)
    assert time.perf_counter() - started < 1.0
    assert runs[0][0].startswith("a")


def test_unclosed_brackets_multiply_in_order_like_a1111() -> None:
    # Each unclosed "(" multiplies everything after it once more, one float product at a time.
    runs = parse_prompt_attention("(a(b(c")
    assert runs == [("a", 1.1), ("b", 1.1 * 1.1), ("c", 1.1 * 1.1 * 1.1)]
    assert parse_prompt_attention("((a:-0)")[0] == ("a", -0.0 * 1.1)

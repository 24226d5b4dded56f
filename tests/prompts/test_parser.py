"""The A1111 prompt grammar: the examples A1111 documents, reproduced as our own cases."""

from __future__ import annotations

import pytest

from sdweb.prompts.parser import BREAK_WEIGHT, parse_prompt_attention

# --- attention: A1111's documented examples (inputs and outputs are facts about its behaviour) --------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ],
        ),
    ],
)
def test_attention_matches_a1111_documented_examples(prompt: str, expected: list[tuple[str, float]]) -> None:
    # Exact float equality on purpose: the multiplication order decides which runs merge.
    assert parse_prompt_attention(prompt) == expected


def test_empty_prompt_is_one_empty_run() -> None:
    assert parse_prompt_attention("") == [("", 1.0)]


def test_nested_round_brackets_multiply() -> None:
    assert parse_prompt_attention("((word))") == [("word", 1.1 * 1.1)]
    assert parse_prompt_attention("[word]") == [("word", 1 / 1.1)]
    assert parse_prompt_attention("[[word]]") == [("word", (1 / 1.1) * (1 / 1.1))]


def test_explicit_weight_with_spaces_and_sign() -> None:
    assert parse_prompt_attention("(cat:1.3)") == [("cat", 1.3)]
    assert parse_prompt_attention("(cat : 0.5 )") == [("cat ", 0.5)]
    assert parse_prompt_attention("(cat:-1.5)") == [("cat", -1.5)]
    assert parse_prompt_attention("(cat:.5)") == [("cat", 0.5)]


def test_explicit_weight_inside_square_brackets_is_text() -> None:
    # ":1.3]" is not a weight: only a round bracket takes one.
    assert parse_prompt_attention("[cat:1.3]") == [("cat:1.3", 1 / 1.1)]


def test_weight_that_is_not_a_number_is_kept_as_text() -> None:
    # A1111 raises ValueError here; we keep the characters instead of failing the whole request.
    assert parse_prompt_attention("(a:1.2.3)") == [("a:1.2.3)", 1.1)]


def test_escapes_are_literal_characters() -> None:
    assert parse_prompt_attention("\\(a\\) \\[b\\] c\\\\d") == [("(a) [b] c\\d", 1.0)]
    # An escaped bracket does not open a group.
    assert parse_prompt_attention("\\((x)") == [("(", 1.0), ("x", 1.1)]


def test_backslash_escaping_nothing_is_dropped() -> None:
    assert parse_prompt_attention("a\\b") == [("ab", 1.0)]
    assert parse_prompt_attention("trailing\\") == [("trailing", 1.0)]


def test_unmatched_closing_brackets_are_text() -> None:
    assert parse_prompt_attention("a) b] c") == [("a) b] c", 1.0)]
    assert parse_prompt_attention("a:b") == [("a:b", 1.0)]


def test_unclosed_square_bracket_applies_to_the_end() -> None:
    assert parse_prompt_attention("a [b c") == [("a ", 1.0), ("b c", 1 / 1.1)]


def test_break_splits_runs() -> None:
    assert parse_prompt_attention("a cat BREAK a dog") == [
        ("a cat", 1.0),
        ("BREAK", BREAK_WEIGHT),
        ("a dog", 1.0),
    ]


def test_break_at_edges_and_repeated() -> None:
    assert parse_prompt_attention("BREAK") == [("", 1.0), ("BREAK", -1.0), ("", 1.0)]
    assert parse_prompt_attention("a BREAK BREAK b") == [
        ("a", 1.0),
        ("BREAK", -1.0),
        ("", 1.0),
        ("BREAK", -1.0),
        ("b", 1.0),
    ]


def test_break_must_be_a_whole_uppercase_word() -> None:
    assert parse_prompt_attention("BREAKFAST break") == [("BREAKFAST break", 1.0)]


def test_break_inside_brackets_is_weighted_like_text() -> None:
    # A1111 multiplies the -1 too, so the encoder (which breaks on weight == -1 only) ignores it.
    assert parse_prompt_attention("(a BREAK b)") == [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]


def test_break_next_to_emphasis() -> None:
    assert parse_prompt_attention("(a) BREAK (b)") == [
        ("a", 1.1),
        ("", 1.0),
        ("BREAK", -1.0),
        ("", 1.0),
        ("b", 1.1),
    ]

"""The A1111 prompt grammar: the examples A1111 documents, reproduced as our own cases."""

from __future__ import annotations

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


# --- prompt editing and alternation -------------------------------------------------------------------


def schedule(prompt: str, *args: object) -> list[tuple[int, str]]:
    return get_learned_conditioning_prompt_schedules([prompt], *args)[0]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("test", [(10, "test")]),
        ("a [b:3]", [(3, "a "), (10, "a b")]),
        ("a [b: 3]", [(3, "a "), (10, "a b")]),
        ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
        ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
        ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
        ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
        ("a [unbalanced", [(10, "a [unbalanced")]),
        ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
        ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
        ("[a|(b:1.1)]", [(step, "a" if step % 2 else "(b:1.1)") for step in range(1, 11)]),
        ("[fe|]male", [(step, "female" if step % 2 else "male") for step in range(1, 11)]),
        ("[fe|||]male", [(step, "female" if step % 4 == 1 else "male") for step in range(1, 11)]),
    ],
)
def test_schedules_match_a1111_documented_examples(prompt: str, expected: list[tuple[int, str]]) -> None:
    assert schedule(prompt, 10) == expected


def test_schedule_with_hires_pass_matches_a1111_documented_examples() -> None:
    # With hires fix, fractions above 1 address the second pass; fractions below 1 are over by then.
    assert schedule("a [b:.5] c", 10, 10) == [(10, "a b c")]
    assert schedule("a [b:1.5] c", 10, 10) == [(5, "a  c"), (10, "a b c")]


def test_bar_inside_a_schedule_makes_the_prompt_literal() -> None:
    # A1111's doctest expects [[5, 'a  c'], [10, 'a {b|d{ c']] here, marked "not handling this right now";
    # its grammar (run with lark) does not parse a '|' outside [a|b] and uses the prompt as it is. We do
    # what A1111 does, not what its stale doctest says.
    assert schedule("a [{b|d{:.5] c", 10) == [(10, "a [{b|d{:.5] c")]


def test_the_fantasy_landscape_example_from_a1111() -> None:
    prompt = (
        "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
        "[ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]"
    )
    assert schedule(prompt, 100) == [
        (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
        (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
        (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
        (75, "fantasy landscape with a lake and an oak in background masterful"),
        (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
    ]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a [b:c:3]", [(3, "a b"), (10, "a c")]),
        # A point makes a fraction, even at or above 1 (capped at the step count).
        ("a [b:c:1.5]", [(10, "a b")]),
        ("[a:b:1.9]", [(10, "a")]),
        ("[a:b:2.0]", [(10, "a")]),
        ("[a:b:1.]", [(10, "a")]),
        # Integers beyond the step count are capped; zero and negatives mean "from the start".
        ("a [b:c:12]", [(10, "a b")]),
        ("[a:b:0]", [(10, "b")]),
        ("[a:b:-1]", [(10, "b")]),
        ("[a:b:+2]", [(2, "a"), (10, "b")]),
        ("[a:b:1e1]", [(10, "a")]),
        ("[a:b:1e999]", [(10, "a")]),  # A1111 raises OverflowError here
        ("[a:b:-1e999]", [(10, "b")]),
        ("[a:b: 3 ]", [(3, "a"), (10, "b")]),
        ("[ a : b : 3 ]", [(3, " a "), (10, " b ")]),
        ("[a::3]", [(3, "a"), (10, "")]),
        ("[:b:3]", [(3, ""), (10, "b")]),
        ("[::3]", [(3, ""), (10, "")]),
        ("[a:[b:3]:5]", [(3, "a"), (5, "a"), (10, "b")]),
        ("(a:[b:3])", [(3, "(a:)"), (10, "(a:b)")]),
        ("((a:1.2) [b:c:0.5])", [(5, "((a:1.2) b)"), (10, "((a:1.2) c)")]),
        ("[[a:3]", [(3, "["), (10, "[a")]),
        ("a, [b:c:0.5], (d", [(5, "a, b, (d"), (10, "a, c, (d")]),
    ],
)
def test_prompt_editing_step_rules(prompt: str, expected: list[tuple[int, str]]) -> None:
    assert schedule(prompt, 10) == expected


def test_fraction_rounds_down_to_a_step() -> None:
    assert schedule("a [b:c:0.5] d", 1) == [(1, "a c d")]
    assert schedule("[a:b:0.33]", 10) == [(3, "a"), (10, "b")]


@pytest.mark.parametrize(
    ("prompt", "steps", "hires_steps", "expected"),
    [
        # Integers count on from the first pass: step 12 of 10+5 is hires step 2.
        ("a [b:c:12]", 10, 5, [(2, "a b"), (5, "a c")]),
        ("a [b:c:5]", 10, 5, [(5, "a c")]),
        ("a [b:c:0.5]", 10, 5, [(5, "a c")]),
        ("a [b:c:1.2]", 10, 5, [(5, "a c")]),
        ("a [b:c:1.6]", 10, 5, [(3, "a b"), (5, "a c")]),
    ],
)
def test_hires_pass_schedule(
    prompt: str, steps: int, hires_steps: int, expected: list[tuple[int, str]]
) -> None:
    assert schedule(prompt, steps, hires_steps) == expected


def test_old_scheduling_reads_below_one_as_fraction_and_ignores_hires() -> None:
    assert schedule("a [b:c:1.5]", 10, None, True) == [(1, "a b"), (10, "a c")]
    assert schedule("a [b:c:0.5]", 10, None, True) == [(5, "a b"), (10, "a c")]
    assert schedule("a [b:c:5]", 10, 5, True) == [(5, "a b"), (10, "a c")]


@pytest.mark.parametrize(
    ("prompt", "steps", "expected"),
    [
        ("[a|b]", 4, ["a", "b", "a", "b"]),
        ("[a||b]", 6, ["a", "", "b", "a", "", "b"]),
        ("[[a|b]|c]", 4, ["a", "c", "a", "c"]),
        ("[a|[b:3]]", 6, ["a", "", "a", "b", "a", "b"]),
        ("[a:b:3][c|d]", 6, ["ac", "ad", "ac", "bd", "bc", "bd"]),
        ("[|]", 3, ["", "", ""]),
    ],
)
def test_alternation_cycles_every_step(prompt: str, steps: int, expected: list[str]) -> None:
    assert schedule(prompt, steps) == list(zip(range(1, steps + 1), expected, strict=True))


@pytest.mark.parametrize(
    "prompt",
    [
        "a | b [c:3]",  # '|' outside [a|b]
        "(a|b) [c:3]",
        "[a|b [c:3]",
        "a [c:3] \\",  # a backslash that escapes nothing
        "a\\\nb [c:3]",
        "\\[a:3]",  # escaped: not a schedule at all
        "[a:b:3 4]",
        "[a:b:.5:3]",
        "[a:b|c:3]",
        "[a:(b:c:d):3]",
    ],
)
def test_prompts_outside_the_grammar_are_used_unchanged(prompt: str) -> None:
    assert schedule(prompt, 10) == [(10, prompt)]


def test_escapes_are_kept_verbatim_for_the_attention_parser() -> None:
    assert schedule("a\\ [c:3]", 10) == [(3, "a\\ "), (10, "a\\ c")]
    assert schedule("[a\\:b:3]", 10) == [(3, ""), (10, "a\\:b")]
    assert schedule("\\(x\\) [c:3]", 10) == [(3, "\\(x\\) "), (10, "\\(x\\) c")]


def test_several_prompts_keep_their_order_and_duplicates() -> None:
    assert get_learned_conditioning_prompt_schedules(["a", "[b:c:1]", "a"], 2) == [
        [(2, "a")],
        [(1, "b"), (2, "c")],
        [(2, "a")],
    ]


def test_schedules_reject_a_step_count_below_one() -> None:
    with pytest.raises(ValueError, match="steps"):
        get_learned_conditioning_prompt_schedules(["a"], 0)
    with pytest.raises(ValueError, match="hires_steps"):
        get_learned_conditioning_prompt_schedules(["a"], 10, 0)


def test_deep_nesting_is_read() -> None:
    prompt = "(" * 50 + "[a:b:3]" + ")" * 50
    assert schedule(prompt, 10) == [(3, "(" * 50 + "a" + ")" * 50), (10, "(" * 50 + "b" + ")" * 50)]


@pytest.mark.parametrize(
    "prompt",
    ["(" * 5000 + "[a:b:3]" + ")" * 5000, "[" * 3000 + " [a:b:3]", "[a|" * 2000],
)
def test_absurd_nesting_is_used_as_written_quickly(prompt: str) -> None:
    started = time.perf_counter()
    assert schedule(prompt, 10) == [(10, prompt)]
    assert time.perf_counter() - started < 1.0


def test_prompt_for_step_counts_steps_from_zero_like_a1111() -> None:
    plan = schedule("a [b:c:3]", 10)
    assert [prompt_for_step(plan, step) for step in range(10)] == ["a b"] * 4 + ["a c"] * 6
    assert prompt_for_step([(10, "x")], 0) == "x"


def test_prompt_for_step_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        prompt_for_step([], 0)
    with pytest.raises(ValueError, match="from 0"):
        prompt_for_step([(10, "x")], -1)


# --- AND -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a cat", [("a cat", 1.0)]),
        ("a cat AND a dog", [("a cat", 1.0), (" a dog", 1.0)]),
        ("a cat AND a dog :0.5", [("a cat", 1.0), (" a dog", 0.5)]),
        ("a cat :1.2 AND a dog : -0.5 ", [("a cat", 1.2), (" a dog", -0.5)]),
        ("a cat:2.", [("a cat", 2.0)]),
        ("a cat :.25", [("a cat", 0.25)]),
        ("ANDROID and ANDY", [("ANDROID and ANDY", 1.0)]),
        ("a,AND,b", [("a,", 1.0), (",b", 1.0)]),
        ("(cat:1.2) AND b", [("(cat:1.2)", 1.0), (" b", 1.0)]),
        ("AND", [("", 1.0), ("", 1.0)]),
        ("", [("", 1.0)]),
        ("line one\nline two :0.7", [("line one\nline two", 0.7)]),
    ],
)
def test_split_composable_prompt(prompt: str, expected: list[tuple[str, float]]) -> None:
    assert split_composable_prompt(prompt) == expected


# --- extra networks ----------------------------------------------------------------------------------------


def test_strip_extra_networks_removes_tags_and_keeps_their_arguments() -> None:
    cleaned, calls = strip_extra_networks("a cat, <lora:add_detail:0.8>, <hypernet:agm:1.1> <lora:x:0.5:1>")
    assert cleaned == "a cat, ,  "
    assert [(call.kind, call.name, call.args) for call in calls] == [
        ("lora", "add_detail", ("0.8",)),
        ("hypernet", "agm", ("1.1",)),
        ("lora", "x", ("0.5", "1")),
    ]


def test_extra_network_named_arguments() -> None:
    _, [call] = strip_extra_networks("<lora:x:te=0.5:unet=1:0.3>")
    assert call.items == ("x", "te=0.5", "unet=1", "0.3")
    assert call.positional == ("x", "0.3")
    assert call.named == {"te": "0.5", "unet": "1"}
    assert call.name == "x"
    assert call.args == ("0.3",)


def test_extra_network_without_weight_and_odd_tags() -> None:
    cleaned, calls = strip_extra_networks("<lora:only_name> <not a tag> <:x> <lora:> <a-b:c>")
    assert [(call.kind, call.items) for call in calls] == [("lora", ("only_name",))]
    assert cleaned == " <not a tag> <:x> <lora:> <a-b:c>"


def test_extra_network_names_may_contain_spaces_and_dots() -> None:
    _, [call] = strip_extra_networks("<lora:my lora v1.5:0.7>")
    assert call.name == "my lora v1.5"
    assert call.args == ("0.7",)


def test_prompt_without_tags_is_unchanged() -> None:
    assert strip_extra_networks("a (cat:1.2) [dog:cat:0.5]") == ("a (cat:1.2) [dog:cat:0.5]", [])

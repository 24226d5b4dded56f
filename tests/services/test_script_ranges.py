"""A1111's X/Y/Z value syntax: comma lists with quotes, number ranges with steps and counts."""

from __future__ import annotations

import pytest

from sdweb.services.scripts.ranges import RangeError, join_values, parse_values, split_values


@pytest.mark.parametrize(("text", "expected"), [
    ("1-5", [1, 2, 3, 4, 5]),
    ("1-10 (+3)", [1, 4, 7, 10]),
    ("1-10(+2)", [1, 3, 5, 7, 9]),
    ("10-1 (-3)", [10, 7, 4, 1]),
    ("10-1 (-1)", [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]),  # A1111 stops at 3 here; both ends are kept
    ("5-1", [5, 4, 3, 2, 1]),
    ("1-10 [4]", [1, 4, 7, 10]),
    ("0-10 [3]", [0, 5, 10]),
    ("1-2 [1]", [1]),
    ("1, 5-7, 20", [1, 5, 6, 7, 20]),
    ("-1, -1", [-1, -1]),
    ("-5--3", [-5, -4, -3]),
    (" 7 ", [7]),
])
def test_whole_number_ranges(text: str, expected: list[int]) -> None:
    assert parse_values(text, "int") == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("0.5-1 (+0.1)", [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),  # no extra 1.1 from float rounding
    ("0-1 [5]", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("1-3", [1.0, 2.0, 3.0]),
    ("7, 7.5, 8", [7.0, 7.5, 8.0]),
    ("1-0 (-0.25)", [1.0, 0.75, 0.5, 0.25, 0.0]),
    (".5-1.5", [0.5, 1.5]),
])
def test_decimal_ranges(text: str, expected: list[float]) -> None:
    assert parse_values(text, "float") == pytest.approx(expected)
    assert all(isinstance(value, float) for value in parse_values(text, "float"))


def test_comma_lists_keep_quoted_commas_and_strip_spaces() -> None:
    assert split_values('cat,  "dog, puppy" , bird') == ["cat", "dog, puppy", "bird"]
    assert parse_values('Euler a, "DPM++ 2M"', "str") == ["Euler a", "DPM++ 2M"]
    assert split_values(join_values(["a, b", 'say "hi"', "c"])) == ["a, b", 'say "hi"', "c"]


def test_permutations_list_every_order() -> None:
    assert parse_values("a, b, c", "permutations") == [
        ("a", "b", "c"), ("a", "c", "b"), ("b", "a", "c"), ("b", "c", "a"), ("c", "a", "b"), ("c", "b", "a")]


@pytest.mark.parametrize(("text", "kind", "words"), [
    ("abc", "int", "'abc' is not a whole number"),
    ("1.5", "int", "'1.5' is not a whole number"),
    ("1-5 (+0)", "int", "step must not be 0"),
    ("1-5 (-1)", "int", "never gets from 1 to 5"),
    ("1-5 [0]", "int", "at least 1"),
    ("1-1000000", "int", "at most 10000"),
    ("x", "float", "'x' is not a number"),
    ("nan", "float", "not a finite number"),
])
def test_bad_values_are_named(text: str, kind: str, words: str) -> None:
    with pytest.raises(RangeError, match=words.replace("(", r"\(").replace("+", r"\+")):
        parse_values(text, kind)

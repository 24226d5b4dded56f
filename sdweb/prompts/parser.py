r"""The A1111 prompt grammar, as plain text in and plain data out (no torch).

This module owns the meaning of the characters people paste from A1111 and Civitai:

- attention: ``(word)`` x1.1, ``[word]`` /1.1, ``(word:1.3)``, escapes ``\(`` ``\)`` ``\[`` ``\]`` ``\\``,
  and ``BREAK`` (start a new 75-token chunk) -> :func:`parse_prompt_attention`;
- prompt editing ``[from:to:when]`` and alternation ``[a|b]``
  -> :func:`get_learned_conditioning_prompt_schedules` and :func:`prompt_for_step`;
- composable diffusion ``a AND b :0.5`` -> :func:`split_composable_prompt`;
- extra network tags ``<lora:name:0.8>`` -> :func:`strip_extra_networks`.

The results match A1111's for the same input (its documented examples are our test cases), so the
same prompt gives the same conditioning. The encoder in ``sdweb.engine`` turns them into embeddings.
"""

from __future__ import annotations

import logging
import re

logger = logging.getLogger(__name__)

__all__ = [
    "BREAK_WEIGHT",
    "parse_prompt_attention",
]

#: Weight that marks a ``("BREAK", BREAK_WEIGHT)`` entry in :func:`parse_prompt_attention`'s result.
BREAK_WEIGHT = -1.0

_ROUND_MULTIPLIER = 1.1
_SQUARE_MULTIPLIER = 1 / 1.1

# One token of the attention syntax per match. The order of the alternatives matters: escapes before the
# bare backslash, "(:1.3)" closers before ":" on its own.
_ATTENTION_TOKEN = re.compile(
    r"""
    (?P<escape>\\[()\[\]\\])
    | (?P<backslash>\\)
    | (?P<open_round>\()
    | (?P<open_square>\[)
    | :\s*(?P<weight>[+-]?[.\d]+)\s*\)
    | (?P<close_round>\))
    | (?P<close_square>\])
    | (?P<text>[^\\()\[\]:]+)
    | (?P<colon>:)
    """,
    re.VERBOSE,
)

# BREAK as a word of its own (not "BREAKFAST"); the whitespace around it goes with it.
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.DOTALL)


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    r"""Split a prompt into runs of text with their attention weight, as A1111 does.

    - ``(abc)`` multiplies the weight of ``abc`` by 1.1, ``[abc]`` divides it by 1.1, ``(abc:1.3)`` sets a
      factor of 1.3; they nest by multiplication.
    - ``\(``, ``\)``, ``\[``, ``\]``, ``\\`` are the literal characters; any other backslash is dropped.
    - A bracket never closed applies its factor up to the end of the prompt; a closing bracket that was
      never opened is literal text.
    - ``BREAK`` as a word becomes ``("BREAK", -1.0)`` (inside brackets its weight is multiplied like any
      other, which is how A1111 behaves: the encoder only breaks on weight exactly -1).
    - Adjacent runs with the same weight are merged; an empty prompt is ``[("", 1.0)]``.

    A weight that is not a number (``(a:1.2.3)``), which A1111 crashes on, is kept as literal text.
    """
    runs: list[list[str | float]] = []
    open_round: list[int] = []
    open_square: list[int] = []

    def multiply_from(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] = float(run[1]) * factor

    def add_text(part: str) -> None:
        pieces = _BREAK.split(part)
        for index, piece in enumerate(pieces):
            if index > 0:
                runs.append(["BREAK", BREAK_WEIGHT])
            runs.append([piece, 1.0])

    for match in _ATTENTION_TOKEN.finditer(text):
        kind = match.lastgroup
        token = match.group(0)
        if kind == "escape":
            runs.append([token[1], 1.0])
        elif kind == "backslash":
            # A backslash that escapes nothing vanishes; the empty run keeps A1111's merge behaviour.
            runs.append(["", 1.0])
        elif kind == "open_round":
            open_round.append(len(runs))
        elif kind == "open_square":
            open_square.append(len(runs))
        elif kind == "weight" and open_round and _is_number(match.group("weight")):
            multiply_from(open_round.pop(), float(match.group("weight")))
        elif kind == "close_round" and open_round:
            multiply_from(open_round.pop(), _ROUND_MULTIPLIER)
        elif kind == "close_square" and open_square:
            multiply_from(open_square.pop(), _SQUARE_MULTIPLIER)
        else:
            add_text(token)

    # Unclosed brackets still count, outermost first, round before square (the order fixes the float
    # rounding, which decides which runs merge below).
    for start in open_round:
        multiply_from(start, _ROUND_MULTIPLIER)
    for start in open_square:
        multiply_from(start, _SQUARE_MULTIPLIER)

    merged: list[tuple[str, float]] = []
    for run_text, weight in runs:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + str(run_text), merged[-1][1])
        else:
            merged.append((str(run_text), float(weight)))
    return merged or [("", 1.0)]


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True

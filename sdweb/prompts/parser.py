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

A1111 applies them in this order, and so should callers: styles (``sdweb.prompts.styles``), then
:func:`strip_extra_networks` on the whole prompt, then :func:`split_composable_prompt` (positive prompt
only), then :func:`get_learned_conditioning_prompt_schedules` on each part, then
:func:`parse_prompt_attention` on each scheduled text when it is encoded.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

logger = logging.getLogger(__name__)

__all__ = [
    "BREAK_WEIGHT",
    "ExtraNetworkCall",
    "get_learned_conditioning_prompt_schedules",
    "parse_prompt_attention",
    "prompt_for_step",
    "split_composable_prompt",
    "strip_extra_networks",
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
    # Two parallel lists rather than a list of pairs: multiplying a suffix of plain floats in one list
    # comprehension keeps a pasted wall of unclosed brackets fast.
    texts: list[str] = []
    weights: list[float] = []
    open_round: list[int] = []
    open_square: list[int] = []

    def multiply_from(start: int, factor: float) -> None:
        if start < len(weights):
            weights[start:] = [weight * factor for weight in weights[start:]]

    def add(run_text: str, weight: float = 1.0) -> None:
        texts.append(run_text)
        weights.append(weight)

    def add_text(part: str) -> None:
        for index, piece in enumerate(_BREAK.split(part)):
            if index > 0:
                add("BREAK", BREAK_WEIGHT)
            add(piece)

    for match in _ATTENTION_TOKEN.finditer(text):
        kind = match.lastgroup
        token = match.group(0)
        if kind == "escape":
            add(token[1])
        elif kind == "backslash":
            # A backslash that escapes nothing vanishes; the empty run keeps A1111's merge behaviour.
            add("")
        elif kind == "open_round":
            open_round.append(len(weights))
        elif kind == "open_square":
            open_square.append(len(weights))
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
    _apply_unclosed(weights, open_round, _ROUND_MULTIPLIER)
    _apply_unclosed(weights, open_square, _SQUARE_MULTIPLIER)

    merged: list[tuple[str, float]] = []
    index = 0
    while index < len(weights):
        end = index + 1
        while end < len(weights) and weights[end] == weights[index]:
            end += 1
        merged.append(("".join(texts[index:end]), weights[index]))
        index = end
    return merged or [("", 1.0)]


def _apply_unclosed(weights: list[float], starts: list[int], factor: float) -> None:
    """Multiply ``weights[start:]`` by ``factor`` once per start, in order, without O(len * starts) work.

    The starts are ascending (they come off a stack), so run ``i`` is multiplied ``k`` times where ``k``
    counts the starts <= ``i`` and grows along the runs. The multiplications stay one at a time (float
    products depend on the order), but runs with the same weight reuse the product computed for the
    previous one and only extend it.
    """
    if not starts:
        return
    # Keyed by value and sign: -0.0 == 0.0, but their products keep different signs.
    done: dict[tuple[float, float], tuple[int, float]] = {}
    covering = 0
    for index, weight in enumerate(weights):
        while covering < len(starts) and starts[covering] <= index:
            covering += 1
        if covering == 0:
            continue
        key = (weight, math.copysign(1.0, weight))
        times, product = done.get(key, (0, weight))
        if times > covering:  # cannot happen with ascending starts; kept for safety
            times, product = 0, weight
        for _ in range(covering - times):
            product *= factor
        done[key] = (covering, product)
        weights[index] = product


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


# --- prompt editing and alternation ------------------------------------------------------------------
#
# A1111 describes this part of the grammar with a lark (Earley) grammar; we parse the same language with
# a small recursive-descent parser. What the grammar allows, in words:
#
# - Inside any bracket construct only text, whitespace and nested constructs may appear; ":" and "|" are
#   separators there, so a construct's parts are found by bracket matching.
#   ``(p)``, ``(p:p)`` and ``[p]`` are emphasis, kept verbatim (attention is parsed later);
#   ``[p:p:N]`` and ``[p:N]`` are prompt editing (N a number, optionally surrounded by whitespace);
#   ``[p|p|...]`` is alternation (empty options allowed).
# - At the top level stray ``[ ] ( ) :`` are plain characters: a bracket that does not start a valid
#   construct is just text.
# - ``|`` outside an alternation, or a backslash that escapes nothing (at the end, or before a newline),
#   makes the whole prompt unparseable; A1111 then uses the prompt unchanged for every step, and so do we.
# - ``\x`` inside text is kept verbatim (two characters): the attention parser resolves escapes later.

# lark's SIGNED_NUMBER, which A1111's grammar uses for the "when" of prompt editing.
_NUMBER = re.compile(r"\s*([+-]?(?:\d+[eE][+-]?\d+|(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+))\s*")
_TEXT_STOP = frozenset("[]():|\\")

# A prompt whose brackets nest deeper than this is used as written, like a prompt outside the grammar.
# Real prompts nest a handful of levels; the limit keeps a pasted wall of "((((((" from exhausting
# Python's recursion (or, retried at every bracket, from taking seconds).
_MAX_NESTING = 100


@dataclass(frozen=True)
class _Edit:
    """``[before:after:when]``; ``before`` is None for ``[after:when]``."""

    before: tuple[_Node, ...] | None
    after: tuple[_Node, ...]
    when: str


@dataclass(frozen=True)
class _Alternation:
    options: tuple[tuple[_Node, ...], ...]


_Node = str | _Edit | _Alternation


class _Unparseable(Exception):
    """The prompt is outside the grammar (or nests too deep to read); it is used unchanged."""


class _ScheduleParser:
    """Parses one prompt into text pieces, edits and alternations. One instance per prompt."""

    def __init__(self, text: str) -> None:
        self._text = text
        # Where a construct starting at an offset ends (or None when it is not one). The answer does not
        # depend on the context, so each offset is parsed once even when a long unbalanced prompt makes
        # the top level retry at every bracket.
        self._constructs: dict[int, tuple[tuple[_Node, ...], int] | None] = {}

    def parse(self) -> tuple[_Node, ...]:
        text = self._text
        nodes: list[_Node] = []
        pos = 0
        while pos < len(text):
            char = text[pos]
            if char in "[(":
                construct = self._construct(pos, 1)
                if construct is None:
                    nodes.append(char)
                    pos += 1
                else:
                    nodes.extend(construct[0])
                    pos = construct[1]
            elif char in "]):":
                nodes.append(char)
                pos += 1
            elif char == "|":
                raise _Unparseable(f"'|' outside [a|b] at offset {pos}")
            else:
                pos = self._plain(pos, nodes)
        return tuple(nodes)

    def _plain(self, pos: int, nodes: list[_Node]) -> int:
        text = self._text
        end = pos
        while end < len(text) and text[end] not in _TEXT_STOP:
            end += 1
        while end < len(text) and text[end] == "\\":
            if end + 1 >= len(text) or text[end + 1] == "\n":
                raise _Unparseable(f"backslash escapes nothing at offset {end}")
            end += 2
            while end < len(text) and text[end] not in _TEXT_STOP:
                end += 1
        nodes.append(text[pos:end])
        return end

    def _sequence(self, pos: int, depth: int) -> tuple[list[_Node], int]:
        """Text and constructs up to the next separator, closing bracket or invalid construct."""
        text = self._text
        nodes: list[_Node] = []
        while pos < len(text):
            char = text[pos]
            if char in "[(":
                construct = self._construct(pos, depth + 1)
                if construct is None:
                    break
                nodes.extend(construct[0])
                pos = construct[1]
            elif char in "]):|":
                break
            else:
                pos = self._plain(pos, nodes)
        return nodes, pos

    def _construct(self, start: int, depth: int) -> tuple[tuple[_Node, ...], int] | None:
        if start in self._constructs:
            return self._constructs[start]
        if depth > _MAX_NESTING:
            raise _Unparseable(f"brackets nest deeper than {_MAX_NESTING} levels")
        result = self._parse_construct(start, depth)
        self._constructs[start] = result
        return result

    def _parse_construct(self, start: int, depth: int) -> tuple[tuple[_Node, ...], int] | None:
        text = self._text
        opening = text[start]
        parts: list[tuple[list[_Node], int, int]] = []
        separators: list[str] = []
        pos = start + 1
        while True:
            nodes, end = self._sequence(pos, depth)
            parts.append((nodes, pos, end))
            if end >= len(text):
                return None
            char = text[end]
            pos = end + 1
            if char in ":|":
                separators.append(char)
            elif char in ")]":
                closing = char
                break
            else:
                return None  # a nested bracket that is not a construct: no stray brackets in here

        if opening == "(":
            if closing != ")" or separators not in ([], [":"]):
                return None
            return self._emphasis("(", parts, separators, ")"), pos
        if closing != "]":
            return None
        if not separators:
            return self._emphasis("[", parts, separators, "]"), pos
        if all(sep == "|" for sep in separators):
            return (_Alternation(tuple(tuple(nodes) for nodes, _, _ in parts)),), pos
        if all(sep == ":" for sep in separators) and len(separators) <= 2:
            _, number_start, number_end = parts[-1]
            number = _NUMBER.fullmatch(text, number_start, number_end)
            if number is None:
                return None
            before = tuple(parts[0][0]) if len(parts) == 3 else None
            return (_Edit(before, tuple(parts[-2][0]), number.group(1)),), pos
        return None

    @staticmethod
    def _emphasis(
        opening: str, parts: list[tuple[list[_Node], int, int]], separators: list[str], closing: str
    ) -> tuple[_Node, ...]:
        # Emphasis is not interpreted here: its brackets stay in the text for parse_prompt_attention.
        nodes: list[_Node] = [opening]
        for index, (part, _, _) in enumerate(parts):
            if index > 0:
                nodes.append(separators[index - 1])
            nodes.extend(part)
        nodes.append(closing)
        return tuple(nodes)


@dataclass(frozen=True)
class _StepRule:
    """How the number in ``[a:b:N]`` becomes a step (A1111's rules, including its hires-fix variant)."""

    steps: int
    int_offset: int
    float_offset: float
    use_old_scheduling: bool

    def when(self, number: str) -> int:
        value = float(number)
        if self.use_old_scheduling:
            value = value * self.steps if value < 1 else value
        elif "." in number:
            # A number written with a point is a fraction of the pass ("0.5", "1.0", ".25").
            value = (value - self.float_offset) * self.steps
        else:
            value = value - self.int_offset
        # A1111 truncates towards zero and caps at the step count. Values below 1 all mean "never
        # before": clamp them so an "-1e999" cannot overflow int().
        return int(min(max(value, -1.0), float(self.steps)))


def _collect_steps(nodes: tuple[_Node, ...], rule: _StepRule, found: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Edit):
            when = rule.when(node.when)
            if when >= 1:
                found.add(when)
            if node.before is not None:
                _collect_steps(node.before, rule, found)
            _collect_steps(node.after, rule, found)
        elif isinstance(node, _Alternation):
            # Alternation switches every step, so every step is a boundary (even if an option is unused).
            found.update(range(1, rule.steps + 1))
            for option in node.options:
                _collect_steps(option, rule, found)


def _text_at(nodes: tuple[_Node, ...], step: int, rule: _StepRule) -> str:
    pieces: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            pieces.append(node)
        elif isinstance(node, _Edit):
            if step <= rule.when(node.when):
                if node.before is not None:
                    pieces.append(_text_at(node.before, step, rule))
            else:
                pieces.append(_text_at(node.after, step, rule))
        else:
            option = node.options[(step - 1) % len(node.options)]
            pieces.append(_text_at(option, step, rule))
    return "".join(pieces)


def get_learned_conditioning_prompt_schedules(
    prompts: list[str],
    steps: int,
    hires_steps: int | None = None,
    use_old_scheduling: bool = False,
) -> list[list[tuple[int, str]]]:
    """For each prompt, the texts to encode and the last step each one is used for, as A1111 computes them.

    ``[from:to:when]`` shows ``from`` up to step ``when`` and ``to`` after it; ``[to:when]`` adds ``to``
    after ``when``; ``[from::when]`` removes ``from`` after ``when``. ``[a|b|c]`` cycles every step.
    Constructs nest. The result for ``"a [b:c:3]"`` and 10 steps is ``[(3, "a b"), (10, "a c")]``.

    ``when`` follows A1111 (the "use old scheduling" option off): a number with a decimal point is a
    fraction of the steps (``0.5``, ``1.0``), one without is a step number (``3``); it is truncated and
    capped at ``steps``. For the hires-fix pass pass the first pass's ``steps`` and ``hires_steps``: then
    integers count on from the first pass (``[a:b:25]`` with 20+10 steps switches at hires step 5) and
    fractions above 1 cover the second pass (``1.5`` = halfway through it). ``use_old_scheduling`` restores
    A1111's former rule: below 1 a fraction, otherwise a step, and the hires pass reuses the first pass's
    schedule.

    A prompt outside the grammar (a ``|`` outside brackets, a dangling backslash) comes back unchanged as
    ``[(steps, prompt)]``, as in A1111; so does one nesting brackets more than 100 deep. Text is returned
    verbatim otherwise: emphasis and escapes are left for :func:`parse_prompt_attention`.

    Where A1111 itself is not consistent we parse the construct: for a schedule directly followed by a
    stray bracket (``[a:b:3]]``), A1111's lark 1.1.2 parser picks between a schedule and plain text
    differently from one process start to the next.

    Raises:
        ValueError: ``steps`` or ``hires_steps`` is below 1.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if hires_steps is not None and hires_steps < 1:
        raise ValueError(f"hires_steps must be at least 1 (or None without hires fix), got {hires_steps}")
    if hires_steps is None or use_old_scheduling:
        rule = _StepRule(steps, 0, 0.0, use_old_scheduling)
    else:
        rule = _StepRule(hires_steps, steps, 1.0, False)

    cache: dict[str, list[tuple[int, str]]] = {}
    schedules: list[list[tuple[int, str]]] = []
    for prompt in prompts:
        if prompt not in cache:
            cache[prompt] = _schedule_one(prompt, rule)
        schedules.append(list(cache[prompt]))
    return schedules


def _schedule_one(prompt: str, rule: _StepRule) -> list[tuple[int, str]]:
    try:
        tree = _ScheduleParser(prompt).parse()
    except _Unparseable as exc:
        logger.debug("prompt used without editing/alternation (%s): %r", exc, prompt)
        return [(rule.steps, prompt)]
    found = {rule.steps}
    _collect_steps(tree, rule, found)
    return [(step, _text_at(tree, step, rule)) for step in sorted(found)]


def prompt_for_step(schedule: list[tuple[int, str]], step: int) -> str:
    """The text a schedule uses at sampling step ``step``, counted from 0 as A1111's sampler counts.

    A1111 picks the first entry whose end step is >= the step index, so ``[(3, "a"), (10, "b")]`` gives
    "a" for steps 0-3 and "b" for 4-9. A step past every entry falls back to the first entry, as in
    A1111.

    Raises:
        ValueError: the schedule is empty or the step is negative.
    """
    if not schedule:
        raise ValueError("empty prompt schedule")
    if step < 0:
        raise ValueError(f"step counts from 0, got {step}")
    for end_at_step, text in schedule:
        if step <= end_at_step:
            return text
    return schedule[0][1]


# --- composable diffusion: AND -----------------------------------------------------------------------

_AND = re.compile(r"\bAND\b")
# The weight is a trailing ":number" (whitespace allowed around the colon); anything else is text.
_SUBPROMPT_WEIGHT = re.compile(r"^([\s\S]*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def split_composable_prompt(text: str) -> list[tuple[str, float]]:
    """Split a prompt at ``AND`` (composable diffusion) into sub-prompts and their weights, as A1111.

    ``"a cat AND a dog :0.5"`` -> ``[("a cat", 1.0), (" a dog", 0.5)]``. The split is on the word ``AND``
    (uppercase, whole word); each part loses trailing whitespace and an optional trailing ``:weight``
    (default 1.0). Leading whitespace is kept, as A1111 keeps it (the tokenizer ignores it). A prompt
    without ``AND`` is one part. Note A1111's rule also reads a bare trailing number as a weight:
    ``"a:2"`` is ``("a", 2.0)``.
    """
    parts: list[tuple[str, float]] = []
    for subprompt in _AND.split(text):
        match = _SUBPROMPT_WEIGHT.match(subprompt)
        if match is None:  # the pattern matches every string; kept for the type checker
            parts.append((subprompt, 1.0))
            continue
        weight = match.group(2)
        parts.append((match.group(1), float(weight) if weight is not None else 1.0))
    return parts


# --- extra networks: <lora:name:weight> -----------------------------------------------------------------

_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


@dataclass(frozen=True)
class ExtraNetworkCall:
    """One ``<kind:arg1:arg2...>`` tag from a prompt, e.g. ``<lora:add_detail:0.8>``.

    Attributes:
        kind: The network type before the first colon: ``"lora"``, ``"hypernet"``, ``"lyco"``...
        items: Every colon-separated argument, as typed: ``("add_detail", "0.8")``.
    """

    kind: str
    items: tuple[str, ...]

    @property
    def positional(self) -> tuple[str, ...]:
        """Arguments that are not ``key=value``: for LoRA ``(name, te_weight[, unet_weight[, dyn]])``."""
        return tuple(item for item in self.items if len(item.split("=")) != 2)

    @property
    def named(self) -> dict[str, str]:
        """``key=value`` arguments (``<lora:x:te=0.5:unet=1>``); A1111 reads both forms."""
        pairs = (item.split("=") for item in self.items)
        return {pair[0]: pair[1] for pair in pairs if len(pair) == 2}

    @property
    def name(self) -> str:
        """The first positional argument: which file (LoRA, hypernetwork) the tag refers to."""
        positional = self.positional
        return positional[0] if positional else ""

    @property
    def args(self) -> tuple[str, ...]:
        """Positional arguments after the name: the weights, as strings (``("0.8",)``)."""
        return self.positional[1:]


def strip_extra_networks(text: str) -> tuple[str, list[ExtraNetworkCall]]:
    """Remove ``<kind:args>`` tags from a prompt and return the cleaned prompt and the tags, in order.

    Same rule as A1111: ``kind`` is a word (letters, digits, underscore), the arguments are everything up
    to the next ``>`` split at ``:``, and the tag is replaced by nothing (the surrounding text, commas
    and spaces included, is kept as it is). Tags of every kind are removed, known or not; deciding what
    an unknown kind means is the caller's job.
    """
    calls: list[ExtraNetworkCall] = []

    def take(match: re.Match[str]) -> str:
        calls.append(ExtraNetworkCall(match.group(1), tuple(match.group(2).split(":"))))
        return ""

    cleaned = _EXTRA_NETWORK.sub(take, text)
    return cleaned, calls

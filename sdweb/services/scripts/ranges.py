"""A1111's value lists for X/Y/Z plot axes: comma lists with quotes, and number ranges.

The syntax (as A1111's X/Y/Z plot reads it):

* Values are separated by commas, CSV style: ``a, "b, c", d`` is three values; spaces around a value
  are dropped.
* Whole numbers: ``1-5`` is 1, 2, 3, 4, 5; ``1-10 (+3)`` steps by 3 (1, 4, 7, 10); ``10-1 (-3)`` counts
  down (10, 7, 4, 1); ``1-10 [4]`` is 4 values spread evenly from 1 to 10 (1, 4, 7, 10; each cut to a
  whole number).
* Decimals: ``0.5-1 (+0.1)`` is 0.5, 0.6 ... 1.0; ``0-1 [5]`` is 0, 0.25, 0.5, 0.75, 1; ``1-3`` steps by 1.
* Ranges and single values mix: ``1, 5-7, 20``.

Two places where A1111 surprises: its ``10-1 (-1)`` stops at 3 and its ``0.5-1 (+0.1)`` can end with an
extra 1.1 from float rounding. Here both ends are included in both directions, and a value is
inside the range when it is within a millionth of a step of the end. A step of 0, a count below 1 or
a value that is not a number is an error naming the value.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from itertools import permutations

logger = logging.getLogger(__name__)

#: Largest number of values one range may expand to (a typo like ``1-1000000`` must not hang the UI).
MAX_RANGE_VALUES = 10_000

_INT = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*(?:\d+(?:\.\d*)?|\.\d+)"
_STEP_RANGE_INT = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\(\s*([+-]\s*\d+)\s*\))?\s*")
_COUNT_RANGE_INT = re.compile(rf"\s*({_INT})\s*-\s*({_INT})\s*\[\s*(\d+)\s*\]\s*")
_STEP_RANGE_FLOAT = re.compile(
    rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\(\s*([+-]\s*(?:\d+(?:\.\d*)?|\.\d+))\s*\))?\s*")
_COUNT_RANGE_FLOAT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})\s*\[\s*(\d+)\s*\]\s*")


class RangeError(ValueError):
    """A value list that cannot be read; the message names the value."""


def split_values(text: str) -> list[str]:
    """Comma-separated values, CSV quoting honoured, each stripped; empty values dropped."""
    rows = csv.reader(io.StringIO(text), skipinitialspace=True)
    return [value.strip() for row in rows for value in row if value.strip()]


def join_values(values: list[str]) -> str:
    """The inverse of :func:`split_values`: values quoted where they hold a comma or a quote."""
    buffer = io.StringIO()
    csv.writer(buffer).writerow(values)
    return buffer.getvalue().strip()


def parse_values(text: str, value_type: str) -> list[object]:
    """The values ``text`` lists, as ``value_type`` ("int", "float", "str" or "permutations").

    "permutations" gives every ordering of the listed strings (tuples), as A1111's "Prompt order".
    """
    items = split_values(text)
    if value_type == "str":
        return list(items)
    if value_type == "permutations":
        if len(items) > 6:
            raise RangeError(f"{len(items)} values give {math.factorial(len(items))} orders; "
                             f"at most 6 values")
        return list(permutations(items))
    if value_type == "int":
        return [value for item in items for value in _int_values(item)]
    if value_type == "float":
        return [value for item in items for value in _float_values(item)]
    raise ValueError(f"unknown axis value type {value_type!r}")


def _number(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _int_values(item: str) -> list[int]:
    counted = _COUNT_RANGE_INT.fullmatch(item)
    if counted:
        start, end, count = int(_number(counted[1])), int(_number(counted[2])), int(counted[3])
        return [int(value) for value in _spread(start, end, count, item)]
    stepped = _STEP_RANGE_INT.fullmatch(item)
    if stepped:
        start, end = int(_number(stepped[1])), int(_number(stepped[2]))
        step = int(_number(stepped[3])) if stepped[3] else (1 if end >= start else -1)
        return [int(value) for value in _stepped(start, end, step, item)]
    try:
        return [int(item)]
    except ValueError:
        pass
    try:
        as_float = float(item)
    except ValueError:
        raise RangeError(f"{item!r} is not a whole number or a range like 1-5, 1-10 (+2) or 1-10 [5]") \
            from None
    if not as_float.is_integer():
        raise RangeError(f"{item!r} is not a whole number")
    return [int(as_float)]


def _float_values(item: str) -> list[float]:
    counted = _COUNT_RANGE_FLOAT.fullmatch(item)
    if counted:
        start, end, count = float(_number(counted[1])), float(_number(counted[2])), int(counted[3])
        return [_tidy(value) for value in _spread(start, end, count, item)]
    stepped = _STEP_RANGE_FLOAT.fullmatch(item)
    if stepped:
        start, end = float(_number(stepped[1])), float(_number(stepped[2]))
        step = float(_number(stepped[3])) if stepped[3] else (1.0 if end >= start else -1.0)
        return [_tidy(value) for value in _stepped(start, end, step, item)]
    try:
        value = float(item)
    except ValueError:
        raise RangeError(f"{item!r} is not a number or a range like 0.5-1 (+0.1) or 0-1 [5]") from None
    if not math.isfinite(value):
        raise RangeError(f"{item!r} is not a finite number")
    return [value]


def _stepped(start: float, end: float, step: float, item: str) -> list[float]:
    if step == 0:
        raise RangeError(f"{item!r}: the step must not be 0")
    if (end - start) * step < 0:
        raise RangeError(f"{item!r}: a step of {step:+g} never gets from {start:g} to {end:g}")
    count = math.floor((end - start) / step + 1e-6) + 1
    _check_count(count, item)
    return [start + index * step for index in range(count)]


def _spread(start: float, end: float, count: int, item: str) -> list[float]:
    if count < 1:
        raise RangeError(f"{item!r}: the count in [ ] must be at least 1")
    _check_count(count, item)
    if count == 1:
        return [start]
    return [start + (end - start) * index / (count - 1) for index in range(count)]


def _check_count(count: int, item: str) -> None:
    if count > MAX_RANGE_VALUES:
        raise RangeError(f"{item!r} gives {count} values; at most {MAX_RANGE_VALUES} are allowed")


def _tidy(value: float) -> float:
    # 0.1 * 3 is 0.30000000000000004: labels and infotexts should say 0.3.
    return round(value, 10) + 0.0

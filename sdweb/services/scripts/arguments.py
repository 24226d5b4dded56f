"""Reading script arguments as the API sends them (JSON values in A1111's positional order).

A1111 passes ``script_args`` straight to the script, so clients send what its UI would: booleans,
numbers, strings, lists. These helpers accept exactly that (plus the obvious spellings "true" / "1")
and raise :class:`~sdweb.scripting.ScriptError` naming the argument for anything else.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from sdweb.scripting import ScriptArg, ScriptError

logger = logging.getLogger(__name__)

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0", "")


def fill_arguments(title: str, spec_args: Sequence[ScriptArg],
                   given: Sequence[Any] | None) -> tuple[Any, ...]:
    """``given`` padded with the defaults of the arguments left out; too many is an error."""
    values = list(given or ())
    if len(values) > len(spec_args):
        names = ", ".join(arg.name for arg in spec_args)
        raise ScriptError(f"script_args: {title} takes at most {len(spec_args)} values [{names}] "
                          f"(got {len(values)})")
    values.extend(arg.default for arg in spec_args[len(values):])
    return tuple(values)


def flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    if value is None:
        return False
    raise ScriptError(f"{name}: true or false (got {value!r})")


def number(value: Any, name: str, *, minimum: float | None = None, maximum: float | None = None,
           whole: bool = False) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        result = float(value)
    except (TypeError, ValueError):
        raise ScriptError(f"{name}: a number (got {value!r})") from None
    if not math.isfinite(result):
        raise ScriptError(f"{name}: a finite number (got {value!r})")
    if whole and not result.is_integer():
        raise ScriptError(f"{name}: a whole number (got {value!r})")
    if minimum is not None and result < minimum:
        raise ScriptError(f"{name}: at least {minimum:g} (got {value!r})")
    if maximum is not None and result > maximum:
        raise ScriptError(f"{name}: at most {maximum:g} (got {value!r})")
    return result


def whole_number(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    return int(number(value, name, minimum=minimum, maximum=maximum, whole=True))


def text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ScriptError(f"{name}: text (got {value!r})")


def text_list(value: Any, name: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return [str(item) for item in value]
    raise ScriptError(f"{name}: a list of values (got {value!r})")


def choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """One of ``choices`` (any case), or an index into them as A1111's ``type="index"`` controls send."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(choices):
            return choices[value]
        raise ScriptError(f"{name}: number {value} is out of range 0-{len(choices) - 1} "
                          f"({', '.join(choices)})")
    if isinstance(value, str):
        for known in choices:
            if known.lower() == value.strip().lower():
                return known
    raise ScriptError(f"{name}: one of {', '.join(choices)} (got {value!r})")

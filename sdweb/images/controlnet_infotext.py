"""The sd-webui-controlnet extension's infotext lines read back into unit fields, for "send to" / paste.

The extension writes one key per unit it ran, ``ControlNet N`` (N counts the units that ran, from 0;
a paste fills unit tab N), whose quoted value is ``Display Name: value`` pairs joined by ", ": the
display name is the field name's words capitalised (``processor_res`` -> ``Processor Res``). Which
fields appear depends on its version: 1.1.4xx writes every field but those at -1 (``Low Vram``,
``Hr Option``, ``Save Detected Map`` too), later ones the eleven from ``Module`` to ``Control Mode``.
Its 2023 layouts are read as well: summer's line (``preprocessor: canny, model: ..., starting/ending:
(0, 1), preprocessor params: (512, 100, 200)``, key ``ControlNet`` alone when one unit was set up) and
spring's key per field (``ControlNet 0 Preprocessor: canny, ControlNet 0 Starting Step: 0, ...``).
Enum values may be written as enum names (``ResizeMode.INNER_FIT``).

A unit the text names is enabled, and the fields the text leaves out take the unit's defaults (the
extension's paste builds a whole unit from the line). A value that cannot be read keeps the default,
with a note naming it; a key this program has no field for is named in a note too.

:func:`extension_paste_keys` gives the per-field keys the extension adds to the png-info API's
``parameters``. :func:`match_model` picks the installed model a pasted ``name [hash]`` means (the model
dropdown's titles are ``name [hash]`` as well).

Pure Python: no gradio, no torch.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sdweb.params import CONTROL_HR_OPTIONS, CONTROL_MODES, CONTROL_RESIZE_MODES, ControlNetUnit

logger = logging.getLogger(__name__)

#: An infotext key holding one unit: ``ControlNet 0`` (2023: ``ControlNet`` when one unit was set up).
UNIT_KEY_RE = re.compile(r"ControlNet(?: (\d+))?")
#: Spring 2023's one key per field: ``ControlNet 0 Weight`` (``ControlNet Weight`` for a single unit).
FIELD_KEY_RE = re.compile(r"ControlNet(?: (\d+))? ([A-Za-z][\w /-]*)")
#: A ``name [hash]`` model title.
_TITLE_RE = re.compile(r"^(?P<name>.*?)\s*\[(?P<hash>[0-9a-fA-F]{8,12})\]$")

#: The unit fields a paste sets, in the unit tab's order (the picture is not in the infotext).
PASTED_FIELDS: tuple[str, ...] = (
    "enabled",
    "module",
    "model",
    "weight",
    "resize_mode",
    "processor_res",
    "threshold_a",
    "threshold_b",
    "guidance_start",
    "guidance_end",
    "pixel_perfect",
    "control_mode",
    "hr_option",
)

#: The choices' older spellings: the extension's enum names, and its 2023 resize mode labels.
_CHOICE_ALIASES: Mapping[str, Mapping[str, str]] = {
    "resize_mode": {
        "resizemode.resize": "Just Resize",
        "resizemode.inner_fit": "Crop and Resize",
        "resizemode.outer_fit": "Resize and Fill",
        "inner fit (scale to fit)": "Crop and Resize",
        "scale to fit (inner fit)": "Crop and Resize",
        "outer fit (shrink to fit)": "Resize and Fill",
        "envelope (outer fit)": "Resize and Fill",
    },
    "control_mode": {
        "controlmode.balanced": "Balanced",
        "controlmode.prompt": "My prompt is more important",
        "controlmode.control": "ControlNet is more important",
    },
    "hr_option": {
        "hiresfixoption.both": "Both",
        "hiresfixoption.low_res_only": "Low res only",
        "hiresfixoption.high_res_only": "High res only",
    },
}
_CHOICES: Mapping[str, tuple[str, ...]] = {
    "resize_mode": CONTROL_RESIZE_MODES,
    "control_mode": CONTROL_MODES,
    "hr_option": CONTROL_HR_OPTIONS,
}
#: The highest preprocessor resolution the unit tab's slider (and the extension's) offers.
PROCESSOR_RES_MAX = 2048
#: Number fields: (lowest, highest) allowed (the unit tab's sliders' ranges).
_NUMBER_RANGES: Mapping[str, tuple[float, float]] = {
    "weight": (0.0, 2.0),
    "processor_res": (-1, PROCESSOR_RES_MAX),
    "threshold_a": (-math.inf, math.inf),
    "threshold_b": (-math.inf, math.inf),
    "guidance_start": (0.0, 1.0),
    "guidance_end": (0.0, 1.0),
}

#: Display names (lower case) -> field; the 2023 layout's names included.
_KEYS: Mapping[str, str] = {
    "module": "module",
    "preprocessor": "module",
    "model": "model",
    "weight": "weight",
    "resize mode": "resize_mode",
    "processor res": "processor_res",
    "threshold a": "threshold_a",
    "threshold b": "threshold_b",
    "guidance start": "guidance_start",
    "guidance end": "guidance_end",
    "pixel perfect": "pixel_perfect",
    "control mode": "control_mode",
    "hr option": "hr_option",
    # Spring 2023's names (one infotext key per field).
    "enabled": "enabled",
    "starting step": "guidance_start",
    "ending step": "guidance_end",
}
#: The 2023 layout's keys holding several fields as ``(a, b, ...)``.
_TUPLE_KEYS: Mapping[str, tuple[str, ...]] = {
    "starting/ending": ("guidance_start", "guidance_end"),
    "preprocessor params": ("processor_res", "threshold_a", "threshold_b"),
    "preprocessor parameters": ("processor_res", "threshold_a", "threshold_b"),
}
#: Keys that do not change the picture (memory use, what is saved beside it): read and let go.
_NO_EFFECT_KEYS = frozenset({"low vram", "save detected map"})


@dataclass(frozen=True)
class PastedUnit:
    """One ``ControlNet N`` line as unit fields: every field of :data:`PASTED_FIELDS`."""

    index: int
    values: Mapping[str, Any]
    #: The line as written (for notes about a unit that cannot be restored).
    text: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def summary(self) -> str:
        """``ControlNet 0 (canny, control_v11p_sd15_canny [d14c016b])``, for notes."""
        return f"ControlNet {self.index} ({self.values['module']}, {self.values['model']})"


def unit_defaults() -> dict[str, Any]:
    """The fields a unit the text names starts from: the unit defaults, enabled."""
    unit = ControlNetUnit()
    return {name: getattr(unit, name) for name in PASTED_FIELDS} | {"enabled": True}


def controlnet_units_from_infotext(parsed: Mapping[str, Any]) -> list[PastedUnit]:
    """The ``ControlNet N`` lines of a parsed infotext (``parse_infotext``'s dict), by unit index."""
    lines: dict[int, str] = {}
    fields: dict[int, list[str]] = {}
    for key, value in parsed.items():
        whole = UNIT_KEY_RE.fullmatch(str(key))
        if whole is not None:
            lines[int(whole.group(1) or 0)] = str(value)
            continue
        one_field = FIELD_KEY_RE.fullmatch(str(key))
        if one_field is not None:
            fields.setdefault(int(one_field.group(1) or 0), []).append(f"{one_field.group(2)}: {value}")
    for index, items in fields.items():
        lines.setdefault(index, ", ".join(items))
    return [parse_unit_line(index, text) for index, text in sorted(lines.items())]


def units_from_request(units: Sequence[ControlNetUnit]) -> list[PastedUnit]:
    """A stored request's enabled units as pasted ones (History's "Restore"), indexed as the infotext
    indexes them (the unit's place in the request).
    """
    return [
        PastedUnit(index=index, values={name: getattr(unit, name) for name in PASTED_FIELDS})
        for index, unit in enumerate(units)
        if unit.enabled
    ]


def extension_paste_keys(units: Sequence[PastedUnit]) -> dict[str, Any]:
    """What the extension adds to A1111's parsed infotext when it is pasted, and so to the png-info
    API's ``parameters``: ``{"ControlNet 0 module": "canny", "ControlNet 0 weight": 0.75, ...}``, field
    names as they are, typed values.
    """
    return {f"ControlNet {unit.index} {name}": value for unit in units for name, value in unit.values.items()}


def _split_items(text: str) -> list[str]:
    """Split at the commas outside parentheses (the 2023 layout's ``(0, 1)`` values hold commas)."""
    items, depth, start = [], 0, 0
    for position, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(0, depth - 1)
        elif char == "," and depth == 0:
            items.append(text[start:position])
            start = position + 1
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def parse_unit_line(index: int, text: str) -> PastedUnit:
    """One unit's line (the value of ``ControlNet N``) as fields, with notes on what could not be read."""
    where = f"ControlNet {index}"
    values = unit_defaults()
    notes: list[str] = []
    for item in _split_items(text):
        key, colon, raw = item.partition(":")
        name, raw = key.strip().lower(), raw.strip()
        if not colon:
            notes.append(f"{where}: cannot read {item!r} (not 'Name: value'); left out")
        elif name in _NO_EFFECT_KEYS:
            continue
        elif name in _KEYS:
            _set_field(values, _KEYS[name], key.strip(), raw, where, notes)
        elif name in _TUPLE_KEYS:
            parts = [part.strip() for part in raw.strip("()").split(",")]
            targets = _TUPLE_KEYS[name]
            if len(parts) != len(targets):
                notes.append(f"{where}: {key.strip()} {raw!r} is not {len(targets)} values; left out")
                continue
            for target, part in zip(targets, parts, strict=True):
                _set_field(values, target, key.strip(), part, where, notes)
        else:
            notes.append(f"{where}: {key.strip()} {raw!r} is not supported here; left out")
    if values["guidance_end"] < values["guidance_start"]:
        notes.append(f"{where}: Guidance End {values['guidance_end']} is before Guidance Start "
                     f"{values['guidance_start']}; both left at their defaults (0 and 1)")
        values["guidance_start"], values["guidance_end"] = 0.0, 1.0
    return PastedUnit(index=index, values=values, text=text, notes=tuple(notes))


def _set_field(values: dict[str, Any], name: str, label: str, raw: str, where: str, notes: list[str]) -> None:
    converted, problem = _convert(name, raw)
    if problem is None:
        values[name] = converted
    else:
        notes.append(f"{where}: {label} {raw!r} {problem}; left at {values[name]!r}")


def _convert(name: str, raw: str) -> tuple[Any, str | None]:
    """``(value, None)``, or ``(None, why it cannot be used)``."""
    if name in ("module", "model"):
        return (raw, None) if raw else (None, "is empty")
    if name in ("enabled", "pixel_perfect"):
        lowered = raw.lower()
        return (lowered == "true", None) if lowered in ("true", "false") else (None, "is not True or False")
    if name in _CHOICES:
        choices = _CHOICES[name]
        by_lower = {choice.lower(): choice for choice in choices}
        chosen = by_lower.get(raw.lower()) or _CHOICE_ALIASES[name].get(raw.lower())
        return (chosen, None) if chosen else (None, f"is not one of {', '.join(choices)}")
    return _number(name, raw)


def _number(name: str, raw: str) -> tuple[Any, str | None]:
    try:
        number = float(raw)
    except ValueError:
        return None, "is not a number"
    lowest, highest = _NUMBER_RANGES[name]
    if not math.isfinite(number) or not lowest <= number <= highest:
        return None, f"is out of range ({lowest:g} to {highest:g})"
    if name == "processor_res":
        if not number.is_integer():
            return None, "is not a whole number"
        return int(number), None
    return number, None


def match_model(wanted: str, titles: Sequence[str]) -> tuple[str | None, str | None]:
    """The installed model title a pasted model means, and a note for the user (None when none is due).

    The title itself (any case) first; then a model with the same hash (a renamed file); then one with
    the same name (another version of the file: the note says so). ``"None"`` means no model.
    Nothing found: ``(None, note)``.
    """
    text = wanted.strip()
    if text.lower() == "none":
        return "None", None
    by_lower = {title.lower(): title for title in titles}
    if text.lower() in by_lower:
        return by_lower[text.lower()], None
    titled = _TITLE_RE.match(text)
    name = (titled.group("name") if titled else text).strip().lower()
    wanted_hash = titled.group("hash").lower() if titled else None
    parsed = [(title, _TITLE_RE.match(title)) for title in titles]
    if wanted_hash is not None:
        for title, match in parsed:
            if match is not None and _same_hash(match.group("hash").lower(), wanted_hash):
                return title, None
    for title, match in parsed:
        if (match.group("name") if match else title).strip().lower() == name:
            note = None if wanted_hash is None else (
                f"model {text} is not installed; using {title} (same name, another hash: the picture may "
                "differ)")
            return title, note
    return None, f"model {text} is not installed (models/ControlNet)"


def _same_hash(first: str, second: str) -> bool:
    """The extension shows 8 or 10 hex digits of the same hash."""
    shorter = min(len(first), len(second))
    return first[:shorter] == second[:shorter]


def resolve_names(
    pasted: PastedUnit, model_titles: Sequence[str], find_module: Callable[[str], str]
) -> tuple[dict[str, Any], list[str]]:
    """A pasted unit's fields with its model and preprocessor as this program names them, and notes.

    ``find_module(name) -> name``: the preprocessor's name here (aliases, any case); LookupError when
    there is none. An unknown preprocessor leaves ``module`` out (the unit keeps its own) with a note;
    a model not installed becomes "None" (Generate then asks for one) with a note.
    """
    where = f"ControlNet unit {pasted.index}"
    values = dict(pasted.values)
    notes: list[str] = []
    try:
        values["module"] = find_module(str(values["module"]))
    except LookupError:
        notes.append(f"{where}: preprocessor {values['module']!r} is not available here; "
                     "the unit's preprocessor was left unchanged")
        del values["module"]
    title, note = match_model(str(values["model"]), model_titles)
    if note is not None:
        notes.append(f"{where}: {note}" + ("; choose a model" if title is None else ""))
    values["model"] = title if title is not None else "None"
    return values, notes

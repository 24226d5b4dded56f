"""A1111's "Automatic backward compatibility" for pasted infotexts (its modules/infotext_versions.py rules).

An infotext's ``Version`` says which A1111 made the picture; the settings that A1111 version always had
(old prompt editing timelines, "Pad conds v0", fp16 ``alphas_cumprod``) are added as the infotext keys
A1111 writes for them, so :func:`sdweb.images.infotext.infotext_to_params` applies them. The setting
``auto_backcompat`` decides whether a paste runs this (the callers check it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: A1111's versions its backward compatibility rules compare with (as ``packaging`` orders them: a git
#: describe suffix ``v1.7.0-225-g...`` is the post release ``1.7.0.post225``).
_V160 = "1.6.0"
_V170_DOWNCAST = "v1.7.0-225"  # where A1111 stopped downcasting alphas_cumprod to fp16


def infotext_version(text: Any) -> Any:
    """An infotext's ``Version`` as A1111 reads it (a ``packaging`` Version), or None.

    A1111 keeps the first two ``-``-separated parts of a git describe string (``v1.7.0-225-gabc`` ->
    ``v1.7.0-225``) and parses that; anything ``packaging`` cannot read (Forge's ``f2.0.1v1.10.1-...``)
    is None. sdweb's own versions (0.x: A1111 wrote its Version key from 1.x on) are None too, so a
    picture made here is not taken for an old A1111 one.
    """
    from packaging.version import InvalidVersion, Version

    if text is None:
        return None
    raw = str(text).strip()
    match = re.match(r"([^-]+-[^-]+)-.*", raw)
    if match:
        raw = match.group(1)
    try:
        version = Version(raw)
    except InvalidVersion:
        return None
    return version if version.major >= 1 else None


def version_backcompat(parsed: Mapping[str, Any]) -> dict[str, Any]:
    """A1111's "Automatic backward compatibility" (setting ``auto_backcompat``): the compatibility keys
    an infotext's ``Version`` implies, added to a copy of :func:`parse_infotext`'s result.

    As A1111 1.10 on paste: before 1.6.0, ``Old prompt editing timelines`` when the prompt has a ``[``
    and ``Pad conds v0`` for DDIM and PLMS; before ``v1.7.0-225``, ``Downcast alphas_cumprod``. Each is
    set to True whatever the infotext said (A1111 writes them only when on). No readable Version (none,
    Forge's, sdweb's): nothing is added. (A1111's fourth rule, "Refiner switch by sampling steps" before
    1.8.0, is for its SDXL refiner, which sdweb does not have.)
    """
    from packaging.version import Version

    result = dict(parsed)
    version = infotext_version(parsed.get("Version"))
    if version is None:
        return result
    if version < Version(_V160) and "[" in str(parsed.get("Prompt", "")):
        result["Old prompt editing timelines"] = True
    if version < Version(_V160) and str(parsed.get("Sampler", "")) in ("DDIM", "PLMS"):
        result["Pad conds v0"] = True
    if version < Version(_V170_DOWNCAST):
        result["Downcast alphas_cumprod"] = True
    return result

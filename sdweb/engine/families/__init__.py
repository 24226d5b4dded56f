"""Model families: which loop, defaults and token counter each kind of checkpoint gets.

:class:`FamilyRegistry` holds the families most specific first and answers :meth:`FamilyRegistry.for_family`
for a detection's family string (``sd1``, ``sdxl``, ``sd3.5-large``, ``flux-dev``...). The engine builds one
with :func:`default_families` and passes it around; nothing here is global.
"""

from __future__ import annotations

from collections.abc import Sequence

from sdweb.engine.families.base import FamilyDefaults, FamilyJob, ModelFamily


class UnknownFamilyError(ValueError):
    """A detection family no registered family handles."""


class FamilyRegistry:
    """The model families, tried in order."""

    def __init__(self, families: Sequence[ModelFamily]) -> None:
        self._families = tuple(families)

    def for_family(self, family: str | None) -> ModelFamily:
        """The family that handles ``family``; None (an unknown .ckpt before loading) means a UNet one."""
        name = family or "sd1"
        for candidate in self._families:
            if candidate.handles(name):
                return candidate
        raise UnknownFamilyError(
            f"no model family handles {name!r}; known: {', '.join(f.name for f in self._families)}"
        )

    def defaults(self, family: str | None) -> FamilyDefaults:
        return self.for_family(family).defaults(family or "sd1")


def default_families() -> FamilyRegistry:
    """The built-in families: Flux, SD 3.x, then the UNet ones (SD 1.x, 2.x, XL)."""
    from sdweb.engine.families.flux import FluxFamily
    from sdweb.engine.families.sd3 import SD3Family
    from sdweb.engine.families.unet import UNetFamily

    return FamilyRegistry([FluxFamily(), SD3Family(), UNetFamily()])


__all__ = [
    "FamilyDefaults",
    "FamilyJob",
    "FamilyRegistry",
    "ModelFamily",
    "UnknownFamilyError",
    "default_families",
]

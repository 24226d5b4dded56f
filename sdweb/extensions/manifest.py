"""The ``extension.toml`` manifest of a folder extension: reading it and checking it.

An extension folder looks like this::

    extensions/my-extension/
        extension.toml
        __init__.py          # the module with the @hookimpl functions (or see ``module`` below)

and its manifest::

    name = "my-extension"            # letters, digits, ".", "_", "-"; at most 64 characters
    version = "0.1.0"
    description = "What it does, in one line."
    plugin_api = "1"                 # the major sdweb.plugin_api.API_VERSION it was written for
    requirements = ["numpy>=1.26"]   # optional: pip requirements, installed only on request
    module = "my_plugin"             # optional: load my_plugin.py or my_plugin/__init__.py instead

``module`` is one plain identifier naming a file or package *inside* the folder; without it the
folder's own ``__init__.py`` is the module. This module owns that format and nothing else: it does
not import extensions or touch git.
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from sdweb.plugin_api import API_VERSION

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

logger = logging.getLogger(__name__)

MANIFEST_FILENAME = "extension.toml"

#: Names are folder names and option values: keep them portable and free of path tricks.
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MODULE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KNOWN_KEYS = {"name", "version", "description", "plugin_api", "requirements", "module"}


class ManifestError(ValueError):
    """The manifest is missing, unreadable or wrong; the message says what to fix."""


def api_major(version: str) -> int:
    """The major part of a plugin API version ("1", "1.0", "1.2.3" -> 1)."""
    head = str(version).strip().split(".", 1)[0]
    if not head.isdigit():
        raise ManifestError(f"plugin_api must look like \"1\" or \"1.0\", got {version!r}")
    return int(head)


def check_api_compatible(required: str, *, provided: str = API_VERSION) -> None:
    """Raise ManifestError unless ``required`` has the same major version as ``provided``."""
    if api_major(required) != api_major(provided):
        raise ManifestError(
            f"written for plugin API {required}, but this sdweb provides plugin API {provided}; "
            f"update the extension (or sdweb) to a version made for plugin API {api_major(provided)}"
        )


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid extension name, else raise ManifestError saying why."""
    if not isinstance(name, str) or not _NAME_PATTERN.match(name) or ".." in name:
        raise ManifestError(
            f"extension name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_requirement(text: str) -> str:
    """Return a pip requirement string if it is a plain requirement (never a pip option or a path)."""
    if not isinstance(text, str) or not text.strip():
        raise ManifestError(f"requirement {text!r} must be a non-empty string")
    text = text.strip()
    # "-e .", "--index-url ...", "./local" would make pip do more than install a named package.
    if text.startswith(("-", ".", "/", "\\")):
        raise ManifestError(f"requirement {text!r} must be a package requirement like \"numpy>=1.26\"")
    try:
        Requirement(text)
    except InvalidRequirement as exc:
        raise ManifestError(f"requirement {text!r} is not a valid pip requirement: {exc}") from None
    return text


@dataclass(frozen=True)
class ExtensionManifest:
    """The checked contents of one ``extension.toml``."""

    name: str
    version: str
    description: str
    plugin_api: str
    requirements: tuple[str, ...] = ()
    module: str | None = None

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, source: str = MANIFEST_FILENAME) -> ExtensionManifest:
        """Build a manifest from parsed TOML, raising ManifestError naming ``source`` and the key."""

        def text(key: str, *, required: bool) -> str:
            value = data.get(key)
            if value is None:
                if required:
                    raise ManifestError(f"{source}: missing required key {key!r}")
                return ""
            if isinstance(value, int) and not isinstance(value, bool) and key == "plugin_api":
                return str(value)  # plugin_api = 1 is a natural thing to write
            if not isinstance(value, str):
                raise ManifestError(f"{source}: {key!r} must be a string, got {type(value).__name__}")
            return value.strip()

        unknown = sorted(set(data) - _KNOWN_KEYS)
        if unknown:
            logger.warning("%s: ignoring unknown keys %s", source, unknown)
        try:
            name = check_name(text("name", required=True))
        except ManifestError as exc:
            raise ManifestError(f"{source}: {exc}") from None
        version = text("version", required=True)
        if not version:
            raise ManifestError(f"{source}: 'version' must not be empty")
        plugin_api = text("plugin_api", required=True)
        api_major(plugin_api)  # format check; compatibility is the loader's decision
        raw_requirements = data.get("requirements", [])
        if not isinstance(raw_requirements, list):
            raise ManifestError(f"{source}: 'requirements' must be a list of strings")
        try:
            requirements = tuple(check_requirement(item) for item in raw_requirements)
        except ManifestError as exc:
            raise ManifestError(f"{source}: {exc}") from None
        module = text("module", required=False) or None
        if module is not None and not _MODULE_PATTERN.match(module):
            raise ManifestError(
                f"{source}: 'module' must be one Python identifier naming a file or package in the "
                f"extension folder, got {module!r}"
            )
        return cls(
            name=name,
            version=version,
            description=text("description", required=False),
            plugin_api=plugin_api,
            requirements=requirements,
            module=module,
        )

    @classmethod
    def read(cls, folder: Path) -> ExtensionManifest:
        """Read ``folder/extension.toml``; raise ManifestError with a message a person can act on."""
        path = folder / MANIFEST_FILENAME
        if not path.is_file():
            raise ManifestError(f"no {MANIFEST_FILENAME} in {folder}: every extension folder needs one")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ManifestError(f"cannot read {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ManifestError(f"{path} is not valid TOML: {exc}") from None
        return cls.from_mapping(data, source=str(path))

    def module_path(self, folder: Path) -> tuple[Path, bool]:
        """The file to import for this extension and whether it is a package's ``__init__.py``."""
        if self.module is None:
            return folder / "__init__.py", True
        package_init = folder / self.module / "__init__.py"
        if package_init.is_file():
            return package_init, True
        return folder / f"{self.module}.py", False

"""Plugins at run time: the hook caller (:class:`PluginHost`) and the extension loader (ExtensionManager).

``PluginHost`` wraps one ``pluggy.PluginManager("sdweb")``. Built-in behaviour (the default samplers) is
registered through it exactly like an extension, and the app calls hooks only through ``collect``,
``chain`` and ``notify`` so that one failing extension is logged by name, recorded for the Extensions
tab, and skipped for that call while everything else carries on.

``ExtensionManager`` finds ``extensions/<name>/`` folders (manifest in :mod:`sdweb.extensions.manifest`)
and pip packages with entry point group ``sdweb``, imports the enabled ones and registers them with the
host. Installing, updating and removing folders is :mod:`sdweb.extensions.installer`'s job.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import re
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import pluggy

from sdweb.extensions import hookspecs
from sdweb.extensions.git import GitFacts, GitRunner
from sdweb.extensions.manifest import ExtensionManifest, ManifestError, check_api_compatible
from sdweb.plugin_api import API_VERSION, PROJECT_NAME

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = PROJECT_NAME
#: Folders in ``extensions/`` that are never extensions (the installer's staging area, VCS folders).
_SKIPPED_PREFIXES = (".", "_")

ExtensionSource = Literal["builtin", "folder", "entry_point"]


@dataclass(frozen=True)
class HookError:
    """The last time one plugin's hook raised (or returned something unusable)."""

    hook: str
    message: str
    at: float  # time.time()
    count: int = 1

    def __str__(self) -> str:
        times = f" ({self.count} times)" if self.count > 1 else ""
        return f"{self.hook}: {self.message}{times}"


class PluginHost:
    """The hook caller. One instance per app, built in the composition root and passed down.

    Call order: implementations run in **registration order** (built-ins first, then extensions in
    the order they were loaded), with ``@hookimpl(tryfirst=True)`` ones before and ``trylast=True``
    ones after the rest. pluggy itself calls the most recently registered plugin first (LIFO); we
    do not, because for ``before_generate`` chains and UI tab order "first loaded, first applied"
    is what users expect from the list they see. Hook wrappers (``wrapper=True`` /
    ``hookwrapper=True``) are not supported: they are ignored with a warning at registration.

    Thread safety: registration takes a lock; hook calls take a snapshot of the implementations and
    may run concurrently from the UI threads and the GPU worker.
    """

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._lock = threading.RLock()
        self._order: dict[str, int] = {}
        self._sources: dict[str, ExtensionSource] = {}
        self._errors: dict[str, HookError] = {}
        self._next_index = 0

    # -- registration ------------------------------------------------------------------------
    @property
    def hook_names(self) -> list[str]:
        """Every hook a plugin can implement, in the order of :mod:`sdweb.extensions.hookspecs`."""
        marker = f"{PROJECT_NAME}_spec"  # the attribute pluggy's HookspecMarker sets
        return [name for name, obj in vars(hookspecs).items() if callable(obj) and hasattr(obj, marker)]

    def register_builtin(self, module: object, name: str) -> None:
        """Register a built-in plugin (same hooks, same error handling as an extension)."""
        self.register(module, name, source="builtin")

    def register(self, plugin: object, name: str, *, source: ExtensionSource = "folder") -> None:
        """Register ``plugin`` (a module or object with ``@hookimpl`` functions) under ``name``.

        Raises:
            ValueError: another plugin already has this name, or an implementation's arguments do not
                match its hook specification (the message names the plugin and the hook).
        """
        with self._lock:
            if name in self._order:
                raise ValueError(
                    f"a plugin named {name!r} is already registered ({self._sources[name]}); "
                    "each extension needs its own name"
                )
            try:
                self._pm.register(plugin, name=name)
            except pluggy.PluginValidationError as exc:
                raise ValueError(f"extension {name!r}: {exc}") from None
            except ValueError as exc:  # pluggy refuses the same module object twice
                raise ValueError(f"extension {name!r} cannot be registered: {exc}") from None
            self._order[name] = self._next_index
            self._next_index += 1
            self._sources[name] = source
            self._check_hooks(plugin, name)

    def _check_hooks(self, plugin: object, name: str) -> None:
        for caller in self._pm.get_hookcallers(plugin) or []:
            if caller.spec is None:
                logger.warning(
                    "extension %r implements %r, which is not an sdweb hook (typo, or a newer plugin "
                    "API?); it will never be called. Known hooks: %s", name, caller.name,
                    ", ".join(self.hook_names))
            for impl in caller.get_hookimpls():
                if impl.plugin_name == name and (impl.wrapper or impl.hookwrapper):
                    logger.warning("extension %r: hook wrappers are not supported; %s is ignored",
                                   name, caller.name)

    def unregister(self, name: str) -> None:
        with self._lock:
            if name not in self._order:
                return
            self._pm.unregister(name=name)
            del self._order[name]
            self._sources.pop(name, None)

    def is_registered(self, name: str) -> bool:
        with self._lock:
            return name in self._order

    @property
    def plugin_names(self) -> list[str]:
        """Registered plugins in registration order."""
        with self._lock:
            return sorted(self._order, key=self._order.__getitem__)

    # -- errors ------------------------------------------------------------------------------
    def last_error(self, name: str) -> HookError | None:
        """The last hook failure of plugin ``name`` (for the Extensions tab), or None."""
        with self._lock:
            return self._errors.get(name)

    @property
    def errors(self) -> dict[str, HookError]:
        with self._lock:
            return dict(self._errors)

    def _record_error(self, name: str, hook_name: str, message: str, exc: BaseException | None) -> None:
        with self._lock:
            previous = self._errors.get(name)
            repeated = previous is not None and previous.hook == hook_name and previous.message == message
            count = previous.count + 1 if repeated and previous is not None else 1
            self._errors[name] = HookError(hook=hook_name, message=message, at=time.time(), count=count)
        # Hooks like on_step run every step: one traceback per distinct failure, not thousands.
        if repeated:
            logger.debug("extension %r failed again in %s: %s", name, hook_name, message)
        elif exc is not None:
            logger.error("extension %r failed in hook %s: %s", name, hook_name, message, exc_info=exc)
        else:
            logger.error("extension %r: hook %s %s; result ignored", name, hook_name, message)

    # -- calling -----------------------------------------------------------------------------
    def _caller(self, hook_name: str) -> Any:
        caller = getattr(self._pm.hook, hook_name, None)
        if caller is None or caller.spec is None:
            raise ValueError(f"unknown hook {hook_name!r}; known: {', '.join(self.hook_names)}")
        return caller

    def _implementations(self, hook_name: str) -> list[Any]:
        caller = self._caller(hook_name)
        with self._lock:
            impls = [impl for impl in caller.get_hookimpls() if not (impl.wrapper or impl.hookwrapper)]
            order = dict(self._order)

        def position(impl: Any) -> tuple[int, int]:
            rank = 0 if impl.tryfirst else 2 if impl.trylast else 1
            return rank, order.get(impl.plugin_name, sys.maxsize)

        return sorted(impls, key=position)

    def _check_arguments(self, hook_name: str, kwargs: dict[str, Any]) -> None:
        spec_args = set(self._caller(hook_name).spec.argnames)
        if set(kwargs) != spec_args:
            raise TypeError(f"hook {hook_name} takes {sorted(spec_args)}, called with {sorted(kwargs)}")

    def collect(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation of ``hook_name``; return ``(plugin name, result)`` pairs.

        Results that are None are left out. An implementation that raises is logged with its plugin's
        name, recorded (:meth:`last_error`) and left out; the others still run. For ``register_*``
        hooks a result must be a list (or tuple); anything else is recorded as an error and left out.
        """
        self._check_arguments(hook_name, kwargs)
        wants_list = hook_name.startswith("register_")
        results: list[tuple[str, Any]] = []
        for impl in self._implementations(hook_name):
            try:
                result = impl.function(*(kwargs[arg] for arg in impl.argnames))
            except Exception as exc:  # an extension's bug must not take the app down
                self._record_error(impl.plugin_name, hook_name, f"{type(exc).__name__}: {exc}", exc)
                continue
            if result is None:
                continue
            if wants_list:
                if not isinstance(result, (list, tuple)):
                    self._record_error(impl.plugin_name, hook_name,
                                       f"must return a list, returned {type(result).__name__}", None)
                    continue
                result = list(result)
            results.append((impl.plugin_name, result))
        return results

    def chain(self, hook_name: str, value: Any, **kwargs: Any) -> Any:
        """Pass ``value`` through every implementation in order; each sees the previous one's result.

        ``value`` is the hook's first argument (``params`` for ``before_generate``). None keeps the
        value; a result of another type than ``value``'s, or an exception, is recorded against that
        plugin and skipped.
        """
        first, *_ = self._caller(hook_name).spec.argnames
        self._check_arguments(hook_name, {first: value, **kwargs})
        for impl in self._implementations(hook_name):
            arguments = {first: value, **kwargs}
            try:
                result = impl.function(*(arguments[arg] for arg in impl.argnames))
            except Exception as exc:
                self._record_error(impl.plugin_name, hook_name, f"{type(exc).__name__}: {exc}", exc)
                continue
            if result is None:
                continue
            if not isinstance(result, type(value)):
                self._record_error(
                    impl.plugin_name, hook_name,
                    f"must return a {type(value).__name__} or None, returned {type(result).__name__}", None)
                continue
            value = result
        return value

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call a fire-and-forget hook (``on_step``, ``after_image_saved``, ...); results are ignored."""
        self.collect(hook_name, **kwargs)


# ---------------------------------------------------------------------------------------------
# Extensions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtensionInfo:
    """One extension as the Extensions tab and the API list it.

    ``enabled`` is the user's choice (applies at the next start); ``loaded`` says whether it is
    running now. ``load_error`` explains why an enabled extension is not loaded; ``hook_error`` is the
    last failure of a running one.
    """

    name: str
    version: str
    description: str
    path: Path | None
    enabled: bool
    source: ExtensionSource = "folder"
    loaded: bool = False
    git_commit: str | None = None
    git_remote: str | None = None
    branch: str | None = None
    load_error: str | None = None
    load_time: float | None = None  # seconds
    requirements: tuple[str, ...] = ()
    hook_error: str | None = None
    plugin_api: str = ""


@dataclass
class _LoadRecord:
    """What happened when the manager tried to load one extension in this process."""

    info: ExtensionInfo
    module: object | None = None


def module_name_for(name: str) -> str:
    """A unique, importable module name for extension ``name`` (``a-b`` and ``a_b`` never collide)."""
    safe = re.sub(r"\W", "_", name)
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
    return f"sdweb_extension_{safe}_{digest}"


class ExtensionManager:
    """Finds, loads and lists extensions; keeps the per-extension enabled state.

    Nothing is loaded by the constructor: the composition root calls :meth:`load_all` once after the
    built-ins are registered with ``host``. Enabling and disabling apply at the next start (hooks
    such as ``register_samplers`` have already been collected by then); ``set_enabled`` returns the
    new disabled set for the caller to persist in the options (``disabled_extensions``).
    """

    def __init__(
        self,
        extensions_dir: Path,
        host: PluginHost,
        *,
        disabled: Iterable[str] = (),
        disable_all: bool = False,
        changes_allowed: bool = True,
        git: GitRunner | None = None,
        entry_points: bool = True,
    ) -> None:
        self._dir = Path(extensions_dir)
        self._host = host
        self._disabled = set(disabled)
        self._disable_all = disable_all
        self._changes_allowed = changes_allowed
        self._git = git or GitRunner()
        self._use_entry_points = entry_points
        self._lock = threading.RLock()
        self._records: dict[tuple[ExtensionSource, str], _LoadRecord] = {}

    # -- properties the installer and the tab read ---------------------------------------------
    @property
    def extensions_dir(self) -> Path:
        return self._dir

    @property
    def host(self) -> PluginHost:
        return self._host

    @property
    def git(self) -> GitRunner:
        return self._git

    @property
    def changes_allowed(self) -> bool:
        """False while ``--listen`` is on without ``--enable-insecure-extension-access``."""
        return self._changes_allowed

    @property
    def disable_all(self) -> bool:
        return self._disable_all

    @property
    def disabled(self) -> set[str]:
        with self._lock:
            return set(self._disabled)

    def is_enabled(self, name: str) -> bool:
        with self._lock:
            return not self._disable_all and name not in self._disabled

    def set_enabled(self, name: str, enabled: bool) -> set[str]:
        """Enable or disable ``name`` from the next start; return the new disabled set to persist."""
        known = {info.name for info in self.list()}
        if name not in known:
            raise KeyError(f"no extension named {name!r}; installed: {', '.join(sorted(known)) or 'none'}")
        with self._lock:
            if enabled:
                self._disabled.discard(name)
            else:
                self._disabled.add(name)
            logger.info("extension %r %s (takes effect at the next start)", name,
                        "enabled" if enabled else "disabled")
            return set(self._disabled)

    # -- discovery ------------------------------------------------------------------------------
    def folders(self) -> list[Path]:
        """Extension folders in ``extensions/``, sorted by name (the load order)."""
        if not self._dir.is_dir():
            return []
        return sorted(
            (entry for entry in self._dir.iterdir()
             if entry.is_dir() and not entry.name.startswith(_SKIPPED_PREFIXES)),
            key=lambda entry: entry.name.lower(),
        )

    def _entry_points(self) -> list[importlib.metadata.EntryPoint]:
        if not self._use_entry_points:
            return []
        return sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)

    # -- loading --------------------------------------------------------------------------------
    def load_all(self) -> list[ExtensionInfo]:
        """Load every enabled folder extension, then every enabled entry-point plugin. Never raises."""
        if self._disable_all:
            logger.info("--disable-all-extensions: no extension is loaded")
        started = time.perf_counter()
        for folder in self.folders():
            self.load_folder(folder)
        for entry_point in self._entry_points():
            self.load_entry_point(entry_point)
        loaded = [record.info for record in self._records.values() if record.info.loaded]
        logger.info("loaded %d extension(s) in %.2f s", len(loaded), time.perf_counter() - started)
        return self.list()

    def load_folder(self, folder: Path) -> ExtensionInfo:
        """Load one extension folder (if enabled); failures are recorded in the returned info."""
        name = folder.name
        info = ExtensionInfo(name=name, version="", description="", path=folder,
                             enabled=self.is_enabled(name), source="folder")
        try:
            manifest = ExtensionManifest.read(folder)
        except ManifestError as exc:
            return self._fail(info, str(exc))
        info = replace(info, version=manifest.version, description=manifest.description,
                       requirements=manifest.requirements, plugin_api=manifest.plugin_api)
        if not info.enabled:
            return self._remember(_LoadRecord(info))
        try:
            check_api_compatible(manifest.plugin_api)
        except ManifestError as exc:
            return self._fail(info, str(exc))
        if self._host.is_registered(name):
            return self._fail(info, f"another plugin is already registered as {name!r}")
        module_file, is_package = manifest.module_path(folder)
        if not module_file.is_file():
            if manifest.module:
                wanted = f"'module = \"{manifest.module}\"' names {module_file.name}, which does not exist"
            else:
                wanted = "the folder has no __init__.py (or set 'module' in the manifest)"
            return self._fail(info, f"nothing to import: {wanted}")
        started = time.perf_counter()
        try:
            module = self._import(name, folder, module_file, is_package)
            self._host.register(module, name, source="folder")
        except Exception as exc:  # an extension's import-time bug is reported, never fatal
            logger.debug("import of extension %r failed", name, exc_info=True)
            return self._fail(info, f"failed to load: {type(exc).__name__}: {exc}")
        elapsed = time.perf_counter() - started
        logger.info("extension %s %s loaded in %.1f ms", name, manifest.version, elapsed * 1000)
        return self._remember(_LoadRecord(replace(info, loaded=True, load_time=elapsed), module))

    def _import(self, name: str, folder: Path, module_file: Path, is_package: bool) -> ModuleType:
        module_name = module_name_for(name)
        search_locations = [str(module_file.parent)] if is_package else None  # a package: relative imports
        spec = importlib.util.spec_from_file_location(
            module_name, module_file, submodule_search_locations=search_locations)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {module_file}")
        module = importlib.util.module_from_spec(spec)
        # In sys.modules before running: relative imports and dataclasses look themselves up there.
        sys.modules[module_name] = module
        # The folder is importable only while the extension imports its own helper modules.
        sys.path.insert(0, str(folder))
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
        finally:
            try:
                sys.path.remove(str(folder))
            except ValueError:
                pass
        return module

    def load_entry_point(self, entry_point: importlib.metadata.EntryPoint) -> ExtensionInfo:
        """Load a pip-installed plugin (entry point group ``sdweb``); failures are recorded."""
        name = entry_point.name
        dist = getattr(entry_point, "dist", None)
        version = getattr(dist, "version", "") or ""
        description = ""
        if dist is not None:
            try:
                description = dist.metadata.get("Summary", "") or ""
            except Exception:  # broken metadata must not stop the listing
                description = ""
        info = ExtensionInfo(name=name, version=version, description=description, path=None,
                             enabled=self.is_enabled(name), source="entry_point")
        if not info.enabled:
            return self._remember(_LoadRecord(info))
        if self._host.is_registered(name):
            return self._fail(info, f"another plugin (or extension folder) is already named {name!r}")
        started = time.perf_counter()
        try:
            plugin = entry_point.load()
            required = getattr(plugin, "PLUGIN_API", None)
            if required is not None:
                check_api_compatible(str(required))
                info = replace(info, plugin_api=str(required))
            self._host.register(plugin, name, source="entry_point")
        except Exception as exc:
            logger.debug("entry point %r failed", name, exc_info=True)
            return self._fail(info, f"failed to load: {type(exc).__name__}: {exc}")
        elapsed = time.perf_counter() - started
        logger.info("extension %s %s (pip) loaded in %.1f ms", name, version, elapsed * 1000)
        return self._remember(_LoadRecord(replace(info, loaded=True, load_time=elapsed), plugin))

    def _fail(self, info: ExtensionInfo, message: str) -> ExtensionInfo:
        logger.error("extension %r not loaded: %s", info.name, message)
        return self._remember(_LoadRecord(replace(info, loaded=False, load_error=message)))

    def _remember(self, record: _LoadRecord) -> ExtensionInfo:
        with self._lock:
            self._records[(record.info.source, record.info.name)] = record
        return record.info

    # -- listing --------------------------------------------------------------------------------
    def list(self) -> list[ExtensionInfo]:
        """Every extension on disk or loaded: folders (including ones installed since the start) and
        pip plugins, with git facts, enabled state, load and hook errors. Built-ins are not listed.
        """
        with self._lock:
            records = dict(self._records)
        infos: list[ExtensionInfo] = []
        on_disk: set[str] = set()
        for folder in self.folders():
            record = records.get(("folder", folder.name))
            # Installed after the start (or never tried): its manifest is read for display.
            info = record.info if record is not None else self._describe_unloaded(folder)
            infos.append(self._with_live_facts(info, folder))
            on_disk.add(folder.name)
        for (source, name), record in records.items():
            if source == "folder":
                if name not in on_disk:  # uninstalled since the start: runs until the restart
                    infos.append(replace(record.info, enabled=self.is_enabled(name), path=None))
            else:
                infos.append(self._with_live_facts(record.info, None))
        return infos

    def get(self, name: str) -> ExtensionInfo:
        for info in self.list():
            if info.name == name:
                return info
        raise KeyError(f"no extension named {name!r}")

    def _describe_unloaded(self, folder: Path) -> ExtensionInfo:
        info = ExtensionInfo(name=folder.name, version="", description="", path=folder,
                             enabled=self.is_enabled(folder.name))
        try:
            manifest = ExtensionManifest.read(folder)
        except ManifestError as exc:
            return replace(info, load_error=str(exc))
        return replace(info, version=manifest.version, description=manifest.description,
                       requirements=manifest.requirements, plugin_api=manifest.plugin_api)

    def _with_live_facts(self, info: ExtensionInfo, folder: Path | None) -> ExtensionInfo:
        facts = self._git.facts(folder) if folder is not None else GitFacts()
        hook_error = self._host.last_error(info.name)
        return replace(info, enabled=self.is_enabled(info.name), git_commit=facts.commit,
                       git_remote=facts.remote, branch=facts.branch,
                       hook_error=str(hook_error) if hook_error else None)


__all__ = [
    "API_VERSION",
    "ENTRY_POINT_GROUP",
    "ExtensionInfo",
    "ExtensionManager",
    "HookError",
    "PluginHost",
    "module_name_for",
]

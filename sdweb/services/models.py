"""ModelService: which checkpoints exist, which one is selected, and its loading state.

Listing and lookup use the registry (safetensors headers only, no torch). Loading runs on the GPU
worker so it never races a generation. The engine (torch, diffusers) is created lazily through
:class:`EngineProvider`, the first time something needs it — after the page is already served.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sdweb.config import LaunchSettings, OptionsStore
from sdweb.services.worker import GpuWorker

logger = logging.getLogger(__name__)

ModelState = Literal["none", "idle", "loading", "ready", "error"]


@dataclass(frozen=True)
class ModelStatus:
    """What the page shows about the model: none found / loading / ready / error (with the reason)."""

    state: ModelState
    title: str | None = None
    message: str = ""
    is_demo: bool = False


class EngineProvider:
    """Builds the engine (and imports torch) once, on first use, from any thread."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._engine: Any = None
        self._lock = threading.Lock()
        self._error: BaseException | None = None

    def __call__(self) -> Any:
        if self._engine is not None:
            return self._engine
        with self._lock:
            if self._engine is None:
                started = time.perf_counter()
                self._engine = self._factory()
                logger.info("engine ready in %.1f s", time.perf_counter() - started)
            return self._engine

    @property
    def started(self) -> bool:
        return self._engine is not None


class ModelService:
    """The checkpoint catalogue and the selected model."""

    def __init__(
        self,
        *,
        settings: LaunchSettings,
        registry: Any,
        vaes: Any,
        worker: GpuWorker,
        engine: EngineProvider,
        options: OptionsStore,
        plugins: Any | None = None,
        modules: Any | None = None,
    ) -> None:
        """``modules``: ``sdweb.engine.models.modules.ModuleRegistry`` (text encoders / VAEs for SD 3.x and
        Flux in models/text_encoder and models/VAE); None: no module files are offered.
        """
        self._settings = settings
        self._registry = registry
        self._vaes = vaes
        self._worker = worker
        self._engine = engine
        self._options = options
        self._plugins = plugins
        self._modules = modules
        self._status = ModelStatus("idle")
        self._lock = threading.Lock()
        self._loader: Callable[[Any], Any] | None = None
        #: (path, size, mtime) of model files that passed :meth:`check_file`.
        self._checked: set[tuple[str, int, int]] = set()

    def use_loader(self, loader: Callable[[Any], Any]) -> None:
        """Load selected checkpoints with ``loader(info)`` (on a cluster worker) instead of this process."""
        self._loader = loader

    # ------------------------------------------------------------------ catalogue
    @property
    def registry(self) -> Any:
        return self._registry

    @property
    def vae_registry(self) -> Any:
        return self._vaes

    def list_checkpoints(self) -> list[Any]:
        return list(self._registry.list())

    def has_own_checkpoint(self) -> bool:
        """Whether the user has a checkpoint of their own (anything listed besides the bundled demo)."""
        return any(not _is_demo(info) for info in self._registry.list())

    def refresh(self) -> list[Any]:
        found = self._registry.refresh()
        if not found:
            self._set_status(ModelStatus("none", message=self.empty_message()))
        return list(found)

    def list_vaes(self) -> list[Any]:
        return list(self._vaes.list())

    def refresh_vaes(self) -> list[Any]:
        refresh = getattr(self._vaes, "refresh", None)
        return list(refresh() if refresh else self._vaes.list())

    def find(self, query: str) -> Any:
        """Find a checkpoint by title, name, hash...; raise LookupError with a helpful message."""
        return self._registry.find(query)

    # ------------------------------------------------------------------ SD 3.x / Flux modules
    @property
    def module_registry(self) -> Any:
        return self._modules

    def list_modules(self) -> list[Any]:
        """Text encoders and VAEs in models/text_encoder and models/VAE that SD 3.x / Flux can use."""
        return list(self._modules.usable()) if self._modules is not None else []

    def refresh_modules(self) -> list[Any]:
        return list(self._modules.refresh()) if self._modules is not None else []

    def find_module(self, name: str) -> Any:
        """A module file by name or path; LookupError naming the folders otherwise."""
        if self._modules is None:
            raise LookupError(f"module {name!r}: no text encoder / VAE folders are configured")
        return self._modules.find(name)

    def family_of(self, query: str | None = None) -> str | None:
        """The model family (``sd1``, ``sdxl``, ``flux-dev``...) of a checkpoint, else of the selected one."""
        title = query or self.selected_title()
        if not title:
            return None
        try:
            return getattr(self.find(title), "family", None)
        except LookupError:
            return None

    def family_defaults(self, query: str | None = None) -> Any:
        """The request defaults that suit that checkpoint's family (``FamilyDefaults``, pure data)."""
        from sdweb.engine.families.defaults import family_defaults

        return family_defaults(self.family_of(query))

    # ------------------------------------------------------------------ downloads
    def known_downloads(self) -> list[tuple[str, str]]:
        """``(label, name)`` of the well-known checkpoints offered for download (SD 1.5, SDXL base)."""
        from sdweb.engine.models.download import KNOWN_MODELS

        return [(model.label, model.name) for model in KNOWN_MODELS]

    def download(self, spec: str, progress: Callable[[int, int], None] | None = None) -> Any:
        """Fetch ``spec`` (a well-known name, ``owner/repo`` or ``owner/repo:file``) from the hub into the
        first checkpoint folder, then list it at once. Returns its catalogue entry.

        Raises ValueError for a spec that names nothing downloadable and ``DownloadError`` (a
        RuntimeError; offline, not found, hash mismatch...) with a message a person can act on.
        """
        from sdweb.engine.models.download import download_model

        path = download_model(spec, self._settings.paths.ckpt_dirs[0], progress=progress)
        for info in self.refresh():
            if Path(info.path).resolve() == path.resolve():
                return info
        return self.find(path.name)

    def empty_message(self) -> str:
        # Relative to the data folder: the page and API clients may be on the LAN (no server paths).
        from sdweb.safepath import shown_path

        folder = shown_path(self._settings.paths.ckpt_dirs[0], self._settings.paths.root)
        return (f"No checkpoint found. Put a .safetensors (or .ckpt) Stable Diffusion checkpoint in "
                f"{folder} and press refresh.")

    # ------------------------------------------------------------------ selection
    def status(self) -> ModelStatus:
        """The state to show. A job that loaded another checkpoint (a per-request override, or the
        first generation before any explicit load) is reflected too: the engine knows what it holds.
        """
        status = self._status
        if status.state in ("loading", "error") or not self._engine.started:
            return status
        current_info = getattr(self._engine(), "current_info", None)
        info = current_info() if current_info is not None else None
        if info is None or info.title == status.title:
            return status
        return ModelStatus("ready", title=info.title, message=f"{info.title} is ready",
                           is_demo=_is_demo(info))

    def _set_status(self, status: ModelStatus) -> None:
        with self._lock:
            self._status = status

    def selected_title(self) -> str | None:
        """The title of the checkpoint requests without one use, or None when nothing is available."""
        wanted = self._options.get("sd_model_checkpoint")
        if wanted:
            try:
                return self.find(wanted).title
            except LookupError:
                logger.warning("the selected checkpoint %r is gone; picking another", wanted)
        checkpoints = self.list_checkpoints()
        usable = [info for info in checkpoints if not getattr(info, "detect_error", None)]
        if not usable:
            return None
        # The user's own checkpoints first; the bundled demo only when there is nothing else.
        usable.sort(key=_is_demo)
        return usable[0].title

    def select(self, query: str, *, wait: bool = True, remember: bool = True) -> Any:
        """Load ``query`` and make it the default. On failure the previous model stays selected.

        ``remember=False`` (the start-up load): config.json is not written; the choice is the one it
        already implies.
        """
        info = self.find(query)
        try:
            self.check_file(info)  # a cut or damaged file: said now, and the current model stays
        except ValueError as exc:
            logger.error("%s was not loaded: %s", info.title, exc)
            if self._status.state in ("idle", "none", "error"):  # nothing loaded: the page says why
                self._set_status(ModelStatus("error", title=info.title, message=str(exc),
                                             is_demo=_is_demo(info)))
            raise
        task = self._worker.submit(lambda: self._load(info, remember=remember), label=f"load {info.title}")
        if wait:
            return task.wait()
        return task

    def load_selected(self, *, wait: bool = False) -> Any:
        """Load the default checkpoint (at start-up, in the background)."""
        title = self.selected_title()
        if title is None:
            self._set_status(ModelStatus("none", message=self.empty_message()))
            return None
        return self.select(title, wait=wait, remember=False)

    def check_file(self, info: Any) -> None:
        """Raise ``CheckpointReadError`` (a ValueError naming the file) when ``info``'s file is cut,
        damaged or not a model at all. Reads headers only; a file unchanged since it passed is not read
        again.
        """
        from sdweb.engine.models.integrity import check_model_file

        path = Path(info.path)
        kind = str(getattr(info, "kind", "safetensors"))
        try:
            stat = path.stat()
        except OSError as exc:
            raise LookupError(f"checkpoint {info.title!r} is no longer there ({exc.strerror}); press "
                              "refresh") from None
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._checked:
                return
        check_model_file(path, kind)
        with self._lock:
            if len(self._checked) > 256:
                self._checked.clear()
            self._checked.add(key)

    def current_options(self) -> dict[str, str]:
        """A1111's ``sd_model_checkpoint`` (the title of the model requests without one use, from the
        moment the server starts) and ``sd_checkpoint_hash`` (its sha256, once known).
        """
        title = self.selected_title() or ""
        sha256 = ""
        if title:
            try:
                sha256 = getattr(self.find(title), "sha256", None) or ""
            except LookupError:
                pass
        return {"sd_model_checkpoint": title, "sd_checkpoint_hash": sha256}

    def checkpoint_choice(self, value: Any) -> str:
        """The ``sd_model_checkpoint`` option's check: a listed checkpoint, as its title ("" = automatic)."""
        if value == "":
            return ""
        return str(self.find(str(value)).title)

    def modules_choice(self, value: Any) -> list[str]:
        """The ``forge_additional_modules`` option's check: each a file listed in models/text_encoder or
        models/VAE.
        """
        names = [str(name) for name in value]
        for name in names:
            try:
                self.find_module(name)
            except LookupError as exc:
                raise LookupError(f"option 'forge_additional_modules': {str(exc).strip(chr(34) + chr(39))}") \
                    from None
        return names

    def vae_choice(self, value: Any) -> str:
        """The ``sd_vae`` option's check: Automatic, None or a VAE file listed in the VAE folder."""
        if value in ("Automatic", "None"):
            return str(value)
        try:
            return str(self._vaes.find(str(value)).name)
        except LookupError:
            names = [info.name for info in self._vaes.list()]
            listed = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
            folder = self._shown(self._vaes.folder) if hasattr(self._vaes, "folder") else "models/VAE"
            where = f"or a VAE in {folder}: {listed}" if names else f"(no VAE files in {folder})"
            raise LookupError(f"option 'sd_vae' must be Automatic, None {where}; got {value!r}") from None

    def _shown(self, path: Any) -> str:
        from sdweb.safepath import shown_path

        return shown_path(Path(path), self._settings.paths.root)

    def _load(self, info: Any, *, remember: bool = True) -> Any:
        self._set_status(ModelStatus("loading", title=info.title,
                                     message=f"Loading {info.title}...", is_demo=_is_demo(info)))
        try:
            loaded = self._loader(info) if self._loader is not None else self._engine().load(info)
        except Exception as exc:
            logger.exception("could not load %s", info.title)
            kept = self._still_loaded()
            if kept is not None:  # the engine kept the model it had: that one is still ready
                self._set_status(ModelStatus("ready", title=kept.title, is_demo=_is_demo(kept),
                                             message=f"{kept.title} is ready ({info.title} could not be "
                                                     f"loaded: {exc})"))
            else:
                self._set_status(ModelStatus("error", title=info.title, message=str(exc),
                                             is_demo=_is_demo(info)))
            raise
        info = getattr(loaded, "info", info)
        if remember:
            self._options.update({"sd_model_checkpoint": info.title})
        self._set_status(ModelStatus("ready", title=info.title, message=f"{info.title} is ready",
                                     is_demo=_is_demo(info)))
        if self._plugins is not None:
            self._plugins.notify("on_model_loaded", model_info=info)
        return info

    def _still_loaded(self) -> Any:
        """The checkpoint the engine holds now (after a failed load: the one it kept), or None."""
        if self._loader is not None or not self._engine.started:
            return None
        current_info = getattr(self._engine(), "current_info", None)
        try:
            return current_info() if current_info is not None else None
        except Exception:  # noqa: BLE001 - only for the status line
            return None

    def unload(self) -> None:
        def _unload() -> None:
            if self._engine.started:
                self._engine().unload_all()
            self._set_status(ModelStatus("idle", message="No model loaded (unloaded)."))

        self._worker.submit(_unload, label="unload").wait()

    def reload(self) -> Any:
        title = self.selected_title()
        if title is None:
            raise LookupError(self.empty_message())
        self.unload()
        return self.select(title)

    def embeddings(self) -> dict[str, Any]:
        """``{loaded: {name: item}, skipped: {name: item + reason}}`` for the current model.

        Reading embedding files needs torch, so this starts the engine (once).
        """
        listing = getattr(self._engine(), "embeddings", None)
        return dict(listing()) if listing is not None else {"loaded": {}, "skipped": {}}

    def refresh_embeddings(self) -> None:
        """Rescan the embeddings folder (before the engine exists there is nothing to rescan)."""
        if self._engine.started:
            refresh = getattr(self._engine(), "refresh_embeddings", None)
            if refresh is not None:
                refresh()

    def runtime_description(self) -> dict[str, Any]:
        """Device, precision and attention backend, once the engine exists."""
        if not self._engine.started:
            return {"state": "engine not started yet"}
        return dict(self._engine().describe())


def _is_demo(info: Any) -> bool:
    return bool(getattr(info, "demo", False) or getattr(info, "is_demo", False))

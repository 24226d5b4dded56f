"""The loaded-model cache: which pipelines are in memory, which one is on the accelerator, and who uses it.

Policy (one :class:`ModelCache` instance per app, passed in; nothing global):

* **Capacity.** Up to ``capacity`` loaded models stay in RAM (``--models-in-memory``, default 1). When a
  load succeeds and the cache is over capacity, the least recently used models are dropped.
* **One on the accelerator.** The model being used is on its home device (where the loader put it).
  Before another model is used or loaded, the current one is moved to ``offload_device`` (normally
  the CPU) so accelerator memory holds one model. Nothing moves when ``offload_device`` is None (CPU-only
  machines, or pipelines whose accelerate offload hooks place weights themselves) or when the home
  device already is the offload device.
* **Failed loads change nothing.** If the loader raises, the previous model is moved back to its home
  device, stays cached and usable, and the error propagates unchanged (it names the file). The price:
  during a load the previous model is still in RAM (on the offload device), so RAM must hold two models
  for a moment; the new load itself never holds two copies of its own weights (the loader's job).
* **Except when the new model takes the current one's place** (capacity 1, the default): then the
  current model is not parked on the offload device only to be dropped after the load (a full
  accelerator-to-RAM copy for nothing, and two models in RAM). ``precheck(info, vae)`` runs first (the
  loader's cheap check: header, family), so a wrong or unsupported file still changes nothing; after it
  passes, the current model is unloaded and its memory handed back, then the new one loads. A load that
  fails after that (a truncated file, out of memory) leaves no model loaded; the next request loads
  the one it names again, from disk.
* **Memory goes back.** ``on_evict(model)`` runs for each dropped model, then the garbage is collected
  and ``on_released()`` runs (the engine empties the accelerator's memory cache there).
* **Locking.** ``use()`` holds the cache's use lock for the whole ``with`` block: one model is in use at a
  time, a model in use is never moved or evicted, and two threads asking for different models are
  served one after the other (loads are serialized). Nested ``use()`` of the *same* model in one thread
  is allowed; of a different model it raises, since that would move the outer model from under it.
  Read-only queries (:meth:`loaded`, :attr:`current`) take a separate short lock and never wait for a
  generation.

The loader is injected: the engine passes :func:`sdweb.engine.models.loader` functions, tests a fake.
Pure python: this module does not import torch (devices are compared by ``str``).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeAlias

from sdweb.engine.models.registry import CheckpointInfo

logger = logging.getLogger(__name__)


class LoadedModelLike(Protocol):
    """What the cache needs of a loaded model (``sdweb.engine.models.loader.LoadedModel``)."""

    info: Any
    pipe: Any
    device: Any
    dtype: Any

    def to(self, device: Any) -> Any: ...

    def nbytes(self) -> int: ...


#: ``loader(info, vae)``: build the pipeline for ``info`` (with the VAE file ``vae``, or its own when None);
#: called ``loader(info, vae, modules=...)`` when modules were chosen (SD 3.x / Flux text encoders and VAE).
ModelLoader: TypeAlias = "Callable[..., LoadedModelLike]"
#: Called with each model the cache drops, after it is out of the cache (to free accelerator memory).
EvictCallback: TypeAlias = "Callable[[LoadedModelLike], None]"
#: ``precheck(info, vae)``: raises when ``info`` cannot be loaded, without loading it (cheap).
PrecheckCallback: TypeAlias = "Callable[[CheckpointInfo, str | None], None]"

_CacheKey: TypeAlias = "tuple[str, int, float, str | None, Modules | None]"
#: A VAE file chosen for a model (a path), or None for the checkpoint's own.
VaeChoice: TypeAlias = "str | os.PathLike[str] | None"
#: Module files chosen for an SD 3.x / Flux model: ``((slot, path), ...)``, sorted; None for UNet models.
Modules: TypeAlias = "tuple[tuple[str, str], ...]"


@dataclass
class _Entry:
    model: LoadedModelLike
    #: Where the loader put it; where it goes back to when used again.
    home: Any
    title: str


class ModelCache:
    """Loaded pipelines, least recently used out; see the module docstring for the policy."""

    def __init__(
        self,
        loader: ModelLoader,
        capacity: int = 1,
        *,
        offload_device: Any | None = "cpu",
        on_evict: EvictCallback | None = None,
        precheck: PrecheckCallback | None = None,
        on_released: Callable[[], None] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"the model cache must hold at least one model, got capacity={capacity}")
        self._loader = loader
        self._capacity = capacity
        self._offload_device = offload_device
        self._on_evict = on_evict
        self._precheck = precheck
        self._on_released = on_released
        self._use_lock = threading.RLock()
        self._state_lock = threading.Lock()
        #: Least recently used first.
        self._entries: OrderedDict[_CacheKey, _Entry] = OrderedDict()
        self._active: _CacheKey | None = None
        self._in_use: dict[int, tuple[_CacheKey, int]] = {}

    # -- queries (never wait for a generation) ----------------------------------------------------
    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def current(self) -> LoadedModelLike | None:
        """The model most recently used (on the accelerator when there is one), or None."""
        with self._state_lock:
            entry = self._entries.get(self._active) if self._active is not None else None
            return entry.model if entry is not None else None

    def loaded(self) -> list[str]:
        """Titles of the cached models, most recently used first."""
        with self._state_lock:
            return [entry.title for entry in reversed(self._entries.values())]

    # -- use ----------------------------------------------------------------------------------------
    @contextmanager
    def use(self, info: CheckpointInfo, vae: VaeChoice = None, *,
            modules: Modules | None = None) -> Iterator[LoadedModelLike]:
        """Yield the loaded model for ``info`` (+ ``vae`` / ``modules``), loaded or cached."""
        key = self._key(info, vae, modules)
        thread = threading.get_ident()
        with self._use_lock:
            held = self._in_use.get(thread)
            if held is not None and held[0] != key:
                raise RuntimeError(
                    f"cannot use {info.title} while this thread is still using another model; "
                    "finish the outer `with cache.use(...)` block first"
                )
            model = self._acquire(key, info, vae, modules)
            self._in_use[thread] = (key, held[1] + 1 if held else 1)
            try:
                yield model
            finally:
                depth = self._in_use[thread][1] - 1
                if depth:
                    self._in_use[thread] = (key, depth)
                else:
                    del self._in_use[thread]

    def _acquire(self, key: _CacheKey, info: CheckpointInfo, vae: VaeChoice,
                 modules: Modules | None = None) -> LoadedModelLike:
        with self._state_lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        if entry is not None:
            started = time.perf_counter()
            self._activate(key, entry)
            logger.info("using cached model %s (%.2f s)", entry.title, time.perf_counter() - started)
            return entry.model
        return self._load(key, info, vae, modules)

    def _load(self, key: _CacheKey, info: CheckpointInfo, vae: VaeChoice,
              modules: Modules | None = None) -> LoadedModelLike:
        vae_path = None if vae is None else os.fspath(vae)
        if self._active_is_replaced():
            # 1. The new model takes the current one's place: check it can load, then drop the current one.
            if self._precheck is not None:
                self._precheck(info, vae_path)
            with self._state_lock:
                replaced = [self._entries.pop(self._active)] if self._active is not None else []
                self._active = None
            logger.info("unloading %s to make room for %s", replaced[0].title if replaced else "?",
                        info.title)
            self._release(replaced)
        previous_key = self._active
        # Free the accelerator for the new model; moved back below if the load fails.
        self._park_active()
        started = time.perf_counter()
        logger.info("loading %s%s%s", info.title, f" with VAE {vae}" if vae is not None else "",
                    f" with {', '.join(Path(path).name for _slot, path in modules)}" if modules else "")
        try:
            model = (self._loader(info, vae_path, modules=modules) if modules is not None
                     else self._loader(info, vae_path))
        except BaseException:
            if previous_key is not None:
                with self._state_lock:
                    previous = self._entries.get(previous_key)
                if previous is not None:
                    self._activate(previous_key, previous)
            raise
        entry = _Entry(model=model, home=model.device, title=info.title)
        with self._state_lock:
            self._entries[key] = entry
            self._active = key
            evicted = self._evict_over_capacity()
        logger.info("loaded %s on %s in %.1f s", info.title, entry.home, time.perf_counter() - started)
        self._release(evicted)
        return model

    def _active_is_replaced(self) -> bool:
        """Would loading one more model evict the active one (it is among the least recently used)?"""
        with self._state_lock:
            if self._active is None:
                return False
            overflow = len(self._entries) + 1 - self._capacity
            return overflow > 0 and self._active in list(self._entries)[:overflow]

    def _activate(self, key: _CacheKey, entry: _Entry) -> None:
        if self._active != key:
            self._park_active()
            if self._moves(entry.home):
                entry.model.to(entry.home)
        with self._state_lock:
            self._active = key

    def _park_active(self) -> None:
        """Move the active model off the accelerator (no-op where nothing needs to move)."""
        with self._state_lock:
            active = self._entries.get(self._active) if self._active is not None else None
            self._active = None
        if active is not None and self._moves(active.home):
            active.model.to(self._offload_device)

    def _moves(self, home: Any) -> bool:
        return self._offload_device is not None and str(home) != str(self._offload_device)

    def _evict_over_capacity(self) -> list[_Entry]:
        evicted: list[_Entry] = []
        while len(self._entries) > self._capacity:
            oldest = next(iter(self._entries))
            if oldest == self._active:  # cannot happen with capacity >= 1, kept as a guard
                break
            evicted.append(self._entries.pop(oldest))
        return evicted

    # -- dropping ----------------------------------------------------------------------------------
    def set_capacity(self, capacity: int) -> None:
        """Change how many models stay in RAM (the "models in memory" setting), dropping extras now."""
        if capacity < 1:
            raise ValueError(f"the model cache must hold at least one model, got capacity={capacity}")
        with self._use_lock:
            with self._state_lock:
                self._capacity = capacity
                evicted = self._evict_over_capacity()
            self._release(evicted)

    def unload_all(self) -> None:
        """Drop every cached model (waits for a model in use to be released)."""
        with self._use_lock:
            with self._state_lock:
                evicted = list(self._entries.values())
                self._entries.clear()
                self._active = None
            self._release(evicted)

    def _release(self, evicted: list[_Entry]) -> None:
        if not evicted:
            return
        for entry in evicted:
            logger.info("unloading %s", entry.title)
            if self._on_evict is not None:
                try:
                    self._on_evict(entry.model)
                except Exception:  # freeing memory must not turn a successful load into an error
                    logger.exception("cleanup after unloading %s failed", entry.title)
        # No reference may survive here (not even this loop's variable), or the collection frees nothing.
        del entry
        evicted.clear()
        gc.collect()
        if self._on_released is not None:
            try:
                self._on_released()
            except Exception:  # as above: handing memory back is best effort
                logger.exception("releasing memory after unloading failed")

    @staticmethod
    def _key(info: CheckpointInfo, vae: VaeChoice, modules: Modules | None = None) -> _CacheKey:
        # By file identity, not title: a title gains its hash later, and a replaced file must reload.
        return (str(info.path), info.size, info.mtime, None if vae is None else os.fspath(vae), modules)


class SideModelCache:
    """Small models a job uses beside its checkpoint (ControlNets...), least recently used out.

    Policy: up to ``capacity`` models and ``max_bytes`` of weights (``nbytes(model)``; 0 = no byte
    limit) stay loaded; a load over either limit drops the least recently used others first (never the
    one just loaded). ``get(key, load)`` loads under the cache's lock, so two jobs never load one file
    twice; ``on_evict`` runs for each dropped model. Keys identify the file version (path, size, mtime)
    and whatever else the built model depends on. Pure python, like :class:`ModelCache`.
    """

    def __init__(self, capacity: int = 2, *, max_bytes: int = 0,
                 nbytes: Callable[[Any], int] | None = None,
                 on_evict: Callable[[Any], None] | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"a side-model cache must hold at least one model, got capacity={capacity}")
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._nbytes = nbytes or (lambda _model: 0)
        self._on_evict = on_evict
        self._lock = threading.RLock()
        self._entries: OrderedDict[Any, tuple[Any, int]] = OrderedDict()

    def get(self, key: Any, load: Callable[[], Any]) -> Any:
        """The model cached under ``key``, else ``load()``'s (cached; a failing load caches nothing)."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found[0]
            model = load()
            self._entries[key] = (model, int(self._nbytes(model)))
            self._shrink(keep=key)
            return model

    def loaded(self) -> list[Any]:
        """Keys of the cached models, most recently used first."""
        with self._lock:
            return list(reversed(self._entries))

    def total_bytes(self) -> int:
        with self._lock:
            return sum(size for _model, size in self._entries.values())

    def clear(self) -> None:
        with self._lock:
            dropped = list(self._entries.values())
            self._entries.clear()
        self._release([model for model, _size in dropped])

    def _shrink(self, *, keep: Any) -> None:
        dropped = []
        while len(self._entries) > 1 and (
                len(self._entries) > self._capacity
                or (self._max_bytes and self.total_bytes() > self._max_bytes)):
            oldest = next(key for key in self._entries if key != keep)
            dropped.append(self._entries.pop(oldest)[0])
        self._release(dropped)

    def _release(self, models: list[Any]) -> None:
        for model in models:
            if self._on_evict is not None:
                try:
                    self._on_evict(model)
                except Exception:  # freeing memory is best effort
                    logger.exception("cleanup after dropping a side model failed")
        if models:
            models.clear()
            gc.collect()

"""The worker side: one Ray actor per GPU (or per CPU box) that holds models and runs engine requests.

:class:`GenerationWorker` is a plain class; :mod:`sdweb.services.cluster.pool` makes it a Ray actor. It
runs in a Ray worker process on its node and builds its own engine from that node's data folder (the
``SDWEB_DATA_DIR`` that ``webui.py worker`` put in the node's environment, else the one the server
passed for local workers). Checkpoints are found by their sha256 among the node's own files, never sent
through Ray's object store; a node without the file raises :class:`MissingModelError` and the pool gives
the job to another worker.

Calls may overlap (the actor is threaded): ``run`` executes one request while ``progress``,
``interrupt`` and ``skip`` answer from other threads. Control flags are kept per job id, so an interrupt
that arrives before its ``run`` started still stops it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from sdweb.config import PROJECT_ROOT, DataPaths, LaunchSettings
from sdweb.option_catalog import BUILTIN_OPTIONS
from sdweb.params import EngineRun, GenerationParams, JobControl, StepProgress

logger = logging.getLogger(__name__)

#: Environment variable naming a node's data folder (models/, cache/), set by ``webui.py worker``.
DATA_DIR_ENV = "SDWEB_DATA_DIR"


class MissingModelError(LookupError):
    """This worker has no file with the requested checkpoint's sha256."""


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint as the server knows it: workers look it up by ``sha256`` (and ``size``)."""

    title: str
    name: str  # the A1111 model name written in infotexts
    sha256: str | None
    size: int | None


@dataclass(frozen=True)
class WorkRequest:
    """One engine request for a worker (a whole job, or a range of its batches)."""

    job_id: str
    kind: Literal["txt2img", "img2img"]
    params: GenerationParams
    checkpoint: CheckpointRef
    preview_every: int = 0
    init_images: tuple[Any, ...] = ()
    mask: Any = None
    #: The server's engine-relevant options (``sd_vae``, ``inpainting_mask_weight`` ...), read per job.
    options: dict[str, Any] = field(default_factory=dict)


class _JobOptions:
    """The engine's read-only view of options: the server's values sent with each request."""

    def __init__(self) -> None:
        self._defaults = {spec.key: spec.default for spec in BUILTIN_OPTIONS}
        self._values: dict[str, Any] = {}

    def use(self, values: dict[str, Any]) -> None:
        self._values = dict(values)

    def get(self, key: str) -> Any:
        if key in self._values:
            return self._values[key]
        return self._defaults[key]


class GenerationWorker:
    """Holds an engine on this node's device; runs one request at a time."""

    def __init__(self, data_dir: str | None = None, flags: dict[str, Any] | None = None) -> None:
        from sdweb.engine.extra_networks.lora import LoraLibrary
        from sdweb.engine.models.hashes import HashCache
        from sdweb.engine.models.registry import CheckpointRegistry, VaeRegistry
        from sdweb.engine.runtime import create_engine
        from sdweb.services.factory import DEMO_CHECKPOINT

        root = Path(data_dir or os.environ.get(DATA_DIR_ENV) or PROJECT_ROOT)
        paths = DataPaths.from_root(root)
        flags = dict(flags or {})
        flags.setdefault("device", "cuda" if _gpu_ids() else "cpu")
        self._settings = LaunchSettings(paths=paths, **flags)
        hashes = HashCache(paths.cache_dir / "hashes.json")
        self._registry = CheckpointRegistry(paths.ckpt_dirs, hashes, demo_files=(DEMO_CHECKPOINT,))
        self._registry.refresh()
        vaes = VaeRegistry(paths.vae_dir, hashes)
        loras = LoraLibrary(paths.lora_dir, hashes=hashes)
        self._options = _JobOptions()
        self._engine = create_engine(
            self._settings, self._registry, vaes, _samplers(paths), options=self._options, loras=loras
        )
        self._lock = threading.Lock()  # one request at a time; control calls do not take it
        self._controls: dict[str, JobControl] = {}
        self._progress: dict[str, StepProgress] = {}
        self._host = socket.gethostname()
        logger.info(
            "sdweb worker ready on %s (%s), models from %s", self._host, self._settings.device, paths.root
        )

    # -- asked by the pool -------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        described = self._engine.describe()
        device = str(described.get("device") or self._settings.device)
        if described.get("device_name"):
            device = f"{device} ({described['device_name']})"
        return {
            "host": self._host,
            "device": device,
            "pid": os.getpid(),
            "data_dir": str(self._settings.paths.root),
        }

    def run(self, request: WorkRequest) -> EngineRun:
        control = self._control(request.job_id)
        try:
            with self._lock:
                info = self._find(request.checkpoint)
                self._options.use(request.options)
                params = request.params.model_copy(update={"checkpoint": info.title})

                def on_step(step: StepProgress) -> None:
                    # The pool polls: keep the last preview until a newer one, so none is missed.
                    last = self._progress.get(request.job_id)
                    if step.preview is None and last is not None and last.preview is not None:
                        step = replace(step, preview=last.preview)
                    self._progress[request.job_id] = step

                if request.kind == "img2img":
                    run = self._engine.img2img(
                        params,
                        list(request.init_images),
                        control=control,
                        on_step=on_step,
                        preview_every=request.preview_every,
                        mask=request.mask,
                    )
                else:
                    run = self._engine.txt2img(
                        params, control=control, on_step=on_step, preview_every=request.preview_every
                    )
        finally:
            self._controls.pop(request.job_id, None)
            self._progress.pop(request.job_id, None)
        # Infotexts name the model as the server knows it, whatever the file is called here.
        run.model_name = request.checkpoint.name
        return run

    def load(self, checkpoint: CheckpointRef) -> str:
        """Load ``checkpoint`` ahead of a job (the model list's selection); returns the local title."""
        with self._lock:
            info = self._find(checkpoint)
            self._engine.load(info)
            return str(info.title)

    def progress(self, job_id: str) -> StepProgress | None:
        return self._progress.get(job_id)

    def interrupt(self, job_id: str) -> None:
        self._control(job_id).interrupt()

    def skip(self, job_id: str) -> None:
        self._control(job_id).skip()

    def ping(self) -> bool:
        return True

    # -- internals ---------------------------------------------------------------------------
    def _control(self, job_id: str) -> JobControl:
        control = self._controls.get(job_id)
        if control is None:
            control = self._controls.setdefault(job_id, JobControl())
        return control

    def _find(self, ref: CheckpointRef) -> Any:
        if ref.sha256 is None:  # a diffusers folder: no single-file hash, found by its title
            try:
                return self._registry.find(ref.title)
            except LookupError as exc:
                raise MissingModelError(f"no checkpoint {ref.title!r} on {self._host}") from exc
        for refresh in (False, True):
            infos = self._registry.refresh() if refresh else self._registry.list()
            # Only files of the same size can have the same sha256: nothing else is hashed.
            candidates = [info for info in infos if ref.size is None or info.size == ref.size]
            candidates.sort(key=lambda info: info.name != ref.title.split(" [")[0])
            for info in candidates:
                if (info.sha256 or self._registry.ensure_hash(info).sha256) == ref.sha256:
                    return self._registry.ensure_hash(info)
        folders = ", ".join(str(folder) for folder in self._settings.paths.ckpt_dirs)
        raise MissingModelError(
            f"{self._host} has no checkpoint with sha256 {ref.sha256[:10]} ({ref.title}) in {folders}"
        )


def _gpu_ids() -> list[Any]:
    try:
        import ray

        return list(ray.get_gpu_ids())
    except Exception:  # not inside a Ray worker (tests build the class directly)
        return []


def _samplers(paths: DataPaths) -> Any:
    """The built-in samplers and those of this node's extensions (as the server builds them)."""
    from sdweb.engine.samplers import builtin as builtin_samplers
    from sdweb.engine.samplers.registry import SamplerRegistry
    from sdweb.extensions.manager import ExtensionManager, PluginHost

    plugins = PluginHost()
    plugins.register_builtin(builtin_samplers, "builtin-samplers")
    ExtensionManager(
        paths.extensions_dir, plugins, disabled=set(), disable_all=False, changes_allowed=False
    ).load_all()
    return SamplerRegistry.from_plugin_results(
        plugins.collect("register_samplers"), plugins.collect("register_schedules")
    )

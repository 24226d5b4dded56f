"""AppServices: the one container of service instances, built once in ``webui.py`` and passed down.

The UI (``build_ui(services)``) and the API (``make_router(services)``) receive this object and nothing
else; tests build it with fakes (a fake engine, temporary folders).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sdweb import __version__
from sdweb.config import LaunchSettings, OptionsStore
from sdweb.ratelimit import LoginLimiter
from sdweb.services.generation import GenerationService
from sdweb.services.models import ModelService
from sdweb.services.worker import GpuWorker


@dataclass
class AppServices:
    """Everything the UI and the API may use."""

    settings: LaunchSettings
    options: OptionsStore
    worker: GpuWorker
    models: ModelService
    generation: GenerationService
    #: ``sdweb.images.store.ImageStore``
    images: Any
    #: ``sdweb.history.store.HistoryStore``
    history: Any
    #: ``sdweb.prompts.styles.StyleStore``
    styles: Any
    #: ``sdweb.extensions.manager.PluginHost``
    plugins: Any
    #: A callable returning the sampler registry (names, schedules, describe()).
    samplers: Callable[[], Any]
    #: ``sdweb.extensions.manager.ExtensionManager`` (None in tests that do not need it)
    extensions: Any = None
    #: ``sdweb.extensions.installer`` object
    installer: Any = None
    #: Restarts the server process cleanly (the Extensions tab's button).
    restart: Callable[[], None] = field(default=lambda: None)
    #: ``sdweb.engine.extra_networks.lora.LoraLibrary`` (torch-free listing of models/Lora); None in tests.
    loras: Any = None
    #: The noise source that reproduces A1111's default (CUDA) noise on this machine, for pasted infotexts
    #: without an ``RNG`` key: "GPU" where the models run on CUDA, "NV" (its CPU reproduction) elsewhere.
    pasted_gpu_rng: Callable[[], str] = field(default=lambda: "NV")
    #: Counts tokens for the UI counter: ``(text) -> (tokens, limit)``; None until the engine is up.
    token_counter: Callable[[str], tuple[int, int]] | None = None
    version: str = __version__
    #: ``sdweb.services.upscalers.UpscalerService``: the Pillow and models/ESRGAN upscalers; None in tests
    #: that build the container by hand.
    upscalers: Any = None
    #: ``sdweb.services.scripts.service.ScriptService``: X/Y/Z plot, prompt matrix ... (None in tests that
    #: build the container by hand).
    scripts: Any = None
    #: ``sdweb.services.merger.MergeService``: the Checkpoint Merger (None in hand-built containers).
    merger: Any = None
    #: ``sdweb.services.face_restore.FaceRestoreService``: GFPGAN / CodeFormer (None when hand-built).
    face_restorers: Any = None
    #: ``sdweb.services.controlnet.ControlNetService``: models/ControlNet and the preprocessors
    #: (None when hand-built).
    controlnet: Any = None
    #: Failed logins per client address (UI login and API basic auth share it): ``sdweb.ratelimit``.
    login_limiter: LoginLimiter = field(default_factory=LoginLimiter)

"""Test doubles shared by the service, API and UI tests.

:class:`FakeEngine` stands in for the torch engine: each image is a flat colour derived from its seed
and prompt (so tests can tell images apart and check seeds), it reports every step, honours
interrupt and skip, and can be slowed down per step to test progress and concurrency.
:func:`make_services` builds the real service container around it, in a temporary data folder.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from sdweb.config import DataPaths, LaunchSettings
from sdweb.params import EngineRun, GeneratedImage, GenerationParams, JobControl, StepProgress


def colour_for(seed: int, prompt: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(f"{seed}|{prompt}".encode()).digest()
    return digest[0], digest[1], digest[2]


#: The longest a step waits for :attr:`FakeEngine.gate` (seconds).
GATE_TIMEOUT = 120.0


@dataclass
class FakeLoaded:
    info: Any


@dataclass
class FakeEngine:
    step_delay: float = 0.0
    calls: list[GenerationParams] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    fail_with: Exception | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: The init images of each img2img call, in call order.
    init_images: list[list[Any]] = field(default_factory=list)
    #: The mask of each img2img call (None without one).
    masks: list[Any] = field(default_factory=list)
    #: Hand each finished batch to ``control.images_done`` as the real engine does (False: only at the end,
    #: as a cluster worker's results come).
    report_batches: bool = True
    #: A test holds a job running without racing a clock: while this is an unset Event, each step waits
    #: for it after reporting itself (set it to let the job go on; a safety timeout keeps a forgotten one
    #: from hanging the worker for good).
    gate: threading.Event | None = None

    current: Any = None

    def load(self, info: Any) -> FakeLoaded:
        self.loaded.append(info.title)
        self.current = info
        return FakeLoaded(info)

    def current_info(self) -> Any:
        return self.current

    def unload_all(self) -> None:
        self.loaded.clear()
        self.current = None

    def describe(self) -> dict[str, Any]:
        return {"device": "fake", "dtype": "float32", "attention": "none"}

    def img2img(self, params: Any, init_images: Any, *, control: JobControl, on_step: Any,
                preview_every: int, mask: Any = None) -> EngineRun:
        """As txt2img, each image the init image (resized) blended towards its seed's colour by the
        denoising strength: strength 0 gives the init image back, 1 the txt2img colour. With a mask,
        only its white part changes."""
        with self.lock:
            self.init_images.append(list(init_images))
            self.masks.append(mask)
        size = (params.width, params.height)
        sources = [image.convert("RGB").resize(size) for image in init_images]
        where = mask.convert("L").resize(size) if mask is not None else None

        def make(index: int, seed: int) -> Image.Image:
            colour = Image.new("RGB", size, colour_for(seed, params.prompt))
            source = sources[index % len(sources)]
            made = Image.blend(source, colour, params.denoising_strength)
            return made if where is None else Image.composite(made, source, where)

        return self.txt2img(params, control=control, on_step=on_step, preview_every=preview_every,
                            make_image=make)

    def txt2img(self, params: GenerationParams, *, control: JobControl, on_step: Any,
                preview_every: int, make_image: Any = None) -> EngineRun:
        with self.lock:
            self.calls.append(params)
        if self.fail_with is not None:
            raise self.fail_with
        images: list[GeneratedImage] = []
        interrupted = False
        for batch in range(params.n_iter):
            for step in range(1, params.steps + 1):
                if self.step_delay:
                    time.sleep(self.step_delay)
                preview = None
                if preview_every and step % preview_every == 0:
                    preview = Image.new("RGB", (8, 8), (128, 128, 128))
                on_step(StepProgress(step=step, total_steps=params.steps, batch_index=batch,
                                     batch_count=params.n_iter, preview=preview))
                gate = self.gate
                if gate is not None:
                    gate.wait(timeout=GATE_TIMEOUT)
                if control.stop_requested:
                    break
            if control.interrupted:
                interrupted = True
                break
            if control.skipped:
                control.clear_skip()
                continue
            finished: list[GeneratedImage] = []
            for index in range(params.batch_size):
                seed = params.seed + batch * params.batch_size + index
                size = (params.width, params.height)
                image = (make_image(index, seed) if make_image is not None
                         else Image.new("RGB", size, colour_for(seed, params.prompt)))
                finished.append(GeneratedImage(
                    image=image,
                    seed=seed, subseed=params.subseed + batch * params.batch_size + index,
                    prompt=params.prompt, negative_prompt=params.negative_prompt))
            images.extend(finished)
            if self.report_batches:  # as the real engine: each batch is handed on as soon as it is made
                control.images_done(EngineRun(images=finished, model_name="fake-model",
                                              model_hash="0123456789", clip_skip=params.clip_skip or 1))
        return EngineRun(images=images, model_name="fake-model", model_hash="0123456789",
                         clip_skip=params.clip_skip or 1, interrupted=interrupted)


def write_fake_checkpoint(folder: Path, name: str = "fake-model.safetensors") -> Path:
    """A small safetensors file whose keys and shapes look like an SD1 checkpoint to the registry."""
    from tests.fixtures.checkpoints import write_tiny_sd1

    folder.mkdir(parents=True, exist_ok=True)
    return write_tiny_sd1(folder / name)


def make_settings(root: Path, **overrides: Any) -> LaunchSettings:
    """Settings for a test data folder. The bundled demo model is left out unless a test asks for it,
    so each test sees exactly the checkpoints it wrote."""
    overrides.setdefault("skip_demo_model", True)
    return LaunchSettings(paths=DataPaths.from_root(root), **overrides)


def make_services(root: Path, *, engine: FakeEngine | None = None, with_checkpoint: bool = True,
                  **settings_overrides: Any) -> tuple[Any, FakeEngine]:
    """The real service container in ``root`` with a :class:`FakeEngine`."""
    from sdweb.services.factory import build_services

    settings = make_settings(root, **settings_overrides)
    if with_checkpoint:
        write_fake_checkpoint(settings.paths.ckpt_dirs[0])
    fake = engine or FakeEngine()
    services = build_services(settings, engine_factory=lambda _services: fake)
    return services, fake

"""UpscalerService: one list of Pillow and models/ESRGAN upscalers, model upscales on the GPU worker,
and a clear message (before anything is queued) when the optional extra is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sdweb.engine.upscalers import UpscalerModelLibrary
from sdweb.images.upscale import ModelUpscalerError, UnknownUpscalerError
from sdweb.services.upscalers import UpscalerService
from sdweb.services.worker import GpuWorker


class FakeModelEngine:
    """The engine's ``upscale``: nearest-neighbour to the asked size; records calls and their thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int, int], str]] = []

    def upscale(self, image: Image.Image, name: str, size: tuple[int, int]) -> Image.Image:
        import threading

        self.calls.append((name, size, threading.current_thread().name))
        return image.resize(size, Image.Resampling.NEAREST)


@pytest.fixture()
def esrgan_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ESRGAN"
    folder.mkdir()
    (folder / "4x-UltraSharp.pth").write_bytes(b"")
    return folder


def _service(folder: Path, problem: str | None = None, **kwargs: Any) -> UpscalerService:
    return UpscalerService(UpscalerModelLibrary(folder), spandrel_check=lambda: problem, **kwargs)


def test_the_list_is_the_builtins_then_the_models(esrgan_dir: Path) -> None:
    service = _service(esrgan_dir)
    items = service.items()
    assert [item.name for item in items] == ["None", "Lanczos", "Nearest", "4x-UltraSharp"]
    assert (items[-1].model_name, items[-1].model_path, items[-1].scale) == (
        "4x-UltraSharp", str(esrgan_dir / "4x-UltraSharp.pth"), 4.0)
    assert service.hires_names()[0] == "Latent" and service.hires_names()[-1] == "4x-UltraSharp"


def test_names_resolve_case_insensitively_and_new_files_are_found(esrgan_dir: Path) -> None:
    service = _service(esrgan_dir)
    assert service.find("4X-ultrasharp") == "4x-UltraSharp"
    assert service.find_hires("latent (nearest)") == "Latent (nearest)"
    (esrgan_dir / "2x-New.safetensors").write_bytes(b"")
    assert service.find("2x-new") == "2x-New"  # copied in after the service started
    with pytest.raises(UnknownUpscalerError, match="known: None, Lanczos, Nearest, 2x-New, 4x-UltraSharp"):
        service.find("R-ESRGAN 4x+")


def test_a_model_upscale_runs_on_the_gpu_worker_at_the_asked_size(esrgan_dir: Path) -> None:
    engine = FakeModelEngine()
    worker = GpuWorker(name="test-gpu")
    try:
        service = _service(esrgan_dir, worker=worker, engine=lambda: engine)
        out = service.upscale(Image.new("RGB", (10, 8), "red"), upscaler="4x-ultrasharp", mode=1,
                              to_width=30, to_height=20, crop=True)
    finally:
        worker.close()
    assert out.size == (30, 20)
    assert engine.calls == [("4x-UltraSharp", (30, 24), "test-gpu")]  # cover the box, then crop


def test_builtins_never_touch_the_engine(esrgan_dir: Path) -> None:
    service = _service(esrgan_dir, problem="no spandrel", engine=lambda: pytest.fail("engine started"))
    assert service.upscale(Image.new("RGB", (10, 8)), upscaler="Lanczos", factor=2).size == (20, 16)
    service.check_usable("Latent")


def test_without_the_extra_a_model_upscaler_says_how_to_install_it(esrgan_dir: Path) -> None:
    engine = FakeModelEngine()
    service = _service(esrgan_dir, problem="install it: pip install 'sdweb[upscalers]'",
                       engine=lambda: engine)
    with pytest.raises(ModelUpscalerError, match=r"'4x-UltraSharp' is a model upscaler .*sdweb\[upscalers\]"):
        service.upscale(Image.new("RGB", (10, 8)), upscaler="4x-UltraSharp")
    with pytest.raises(ModelUpscalerError):
        service.check_usable("4x-UltraSharp")
    assert engine.calls == []

"""The Extras tab's handler: upscale an uploaded file by a factor or to a size, errors as messages."""

from __future__ import annotations

import html
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdweb.ui.tabs.extras import upscale_upload


def _upload(path: Path, size: tuple[int, int] = (40, 30), parameters: str | None = None) -> str:
    info = PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    Image.new("RGB", size, "blue").save(path, pnginfo=info)
    return str(path)


def _run(path: str | None, **overrides: object) -> object:
    options: dict = dict(upscaler="Lanczos", mode=0, factor=2.0, to_width=512, to_height=512, crop=True)
    options.update(overrides)
    return upscale_upload(path, **options)


def test_scale_by_gives_the_exact_size_and_keeps_the_source_infotext(tmp_path: Path) -> None:
    got = _run(_upload(tmp_path / "a.png", parameters="a fox\nSteps: 20, Seed: 1"))
    assert got.image is not None and got.image.size == (80, 60)
    shown = html.unescape(got.info_html)
    assert "40x30 → 80x60" in shown
    assert "Postprocess upscale by: 2, Postprocess upscaler: Lanczos" in shown
    assert "a fox" in shown and "Seed: 1" in shown


def test_scale_to_with_crop_gives_exactly_the_box(tmp_path: Path) -> None:
    got = _run(_upload(tmp_path / "a.png"), mode=1, to_width=96, to_height=96, crop=True)
    assert got.image is not None and got.image.size == (96, 96)


def test_problems_come_back_as_messages_not_exceptions(tmp_path: Path) -> None:
    assert "Upload an image to upscale first" in _run(None).info_html
    too_big = _run(_upload(tmp_path / "b.png", size=(5000, 10)), factor=2.0)
    assert too_big.image is None and "at most 8192" in html.unescape(too_big.info_html)
    unknown = _run(_upload(tmp_path / "c.png"), upscaler="ESRGAN_4x")
    assert unknown.image is None and "not found" in html.unescape(unknown.info_html)


def _model_service(tmp_path: Path, problem: str | None) -> object:
    from sdweb.engine.upscalers import UpscalerModelLibrary
    from sdweb.services.upscalers import UpscalerService

    folder = tmp_path / "ESRGAN"
    folder.mkdir()
    (folder / "4x-UltraSharp.pth").write_bytes(b"")

    class Engine:
        def upscale(self, image: Image.Image, name: str, size: tuple[int, int]) -> Image.Image:
            return image.resize(size)

    return UpscalerService(UpscalerModelLibrary(folder), engine=Engine, spandrel_check=lambda: problem)


def test_a_model_upscaler_from_the_service(tmp_path: Path) -> None:
    service = _model_service(tmp_path, None)
    got = _run(_upload(tmp_path / "a.png"), upscaler="4x-UltraSharp", upscalers=service)
    assert got.image is not None and got.image.size == (80, 60)
    assert "Postprocess upscaler: 4x-UltraSharp" in html.unescape(got.info_html)


def test_a_model_upscaler_without_the_extra_says_how_to_install_it(tmp_path: Path) -> None:
    service = _model_service(tmp_path, "spandrel did not import; pip install 'sdweb[upscalers]'")
    got = _run(_upload(tmp_path / "a.png"), upscaler="4x-UltraSharp", upscalers=service)
    assert got.image is None and "pip install 'sdweb[upscalers]'" in html.unescape(got.info_html)


def test_a_model_dropped_into_the_folder_is_offered_when_a_page_opens(tmp_path: Path) -> None:
    from sdweb.ui.tabs.extras import upscaler_names
    from tests.fakes import make_services

    services, _engine = make_services(tmp_path)
    try:
        before = upscaler_names(services)
        assert "Lanczos" in before and "4x-New" not in before
        services.settings.paths.esrgan_dir.mkdir(parents=True, exist_ok=True)
        (services.settings.paths.esrgan_dir / "4x-New.pth").write_bytes(b"not read until used")
        assert upscaler_names(services) == [*before, "4x-New"]
    finally:
        services.worker.close(timeout=2)


def test_face_restoration_that_cannot_run_says_why_and_still_upscales(tmp_path: Path) -> None:
    from tests.fakes import make_services

    services, _ = make_services(tmp_path / "data")
    try:
        got = _run(_upload(tmp_path / "face.png"), faces=services.face_restorers, codeformer_visibility=1.0)
    finally:
        services.worker.close()
    assert got.image is not None and got.image.size == (80, 60)
    assert "face restoration was skipped: no CodeFormer model in" in html.unescape(got.info_html)

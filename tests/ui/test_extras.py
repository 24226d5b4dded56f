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

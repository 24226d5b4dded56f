"""Built-in upscalers and the Extras sizes: exact results, A1111's "scale to" and crop, clear refusals."""

from __future__ import annotations

import pytest
from PIL import Image

from sdweb.images.upscale import MAX_OUTPUT_SIDE, UpscaleError, list_upscalers, upscale_image


def test_lists_the_builtin_upscalers() -> None:
    assert [item.name for item in list_upscalers()] == ["None", "Lanczos", "Nearest"]


@pytest.mark.parametrize(("size", "factor", "expected"), [
    ((100, 60), 2.0, (200, 120)), ((100, 60), 1.5, (150, 90)), ((33, 17), 3.3, (109, 56)),
    ((64, 64), 0.5, (32, 32)),
])
def test_scale_by_gives_the_exact_size(size, factor, expected) -> None:
    for upscaler in ("Lanczos", "Nearest", "lanczos"):
        assert upscale_image(Image.new("RGB", size), upscaler=upscaler, factor=factor).size == expected


def test_scale_to_with_crop_is_exact_and_without_keeps_the_aspect_ratio() -> None:
    wide = Image.new("RGB", (200, 100))
    assert upscale_image(wide, upscaler="Lanczos", mode=1, to_width=300, to_height=300).size == (300, 300)
    assert upscale_image(wide, upscaler="Lanczos", mode=1, to_width=300, to_height=300,
                         crop=False).size == (600, 300)
    assert upscale_image(wide, upscaler="Nearest", mode=1, to_width=123, to_height=45).size == (123, 45)


def test_crop_keeps_the_centre() -> None:
    image = Image.new("RGB", (30, 10), (255, 0, 0))
    image.paste((0, 0, 255), (10, 0, 20, 10))
    out = upscale_image(image, upscaler="Nearest", mode=1, to_width=20, to_height=20)
    assert out.getpixel((10, 10)) == (0, 0, 255)


def test_nearest_keeps_hard_edges_and_none_changes_nothing() -> None:
    image = Image.new("RGB", (2, 1), (0, 0, 0))
    image.putpixel((1, 0), (255, 255, 255))
    out = upscale_image(image, upscaler="Nearest", factor=4)
    assert {out.getpixel((x, 0)) for x in range(8)} == {(0, 0, 0), (255, 255, 255)}
    assert upscale_image(image, upscaler="None", factor=4).size == (2, 1)


def test_bad_requests_are_refused_before_any_work() -> None:
    image = Image.new("RGB", (100, 100))
    with pytest.raises(UpscaleError, match="not found; known: None, Lanczos, Nearest"):
        upscale_image(image, upscaler="R-ESRGAN 4x+")
    with pytest.raises(UpscaleError, match="at most 8"):
        upscale_image(image, upscaler="Lanczos", factor=9)
    with pytest.raises(UpscaleError, match="above 0"):
        upscale_image(image, upscaler="Lanczos", factor=0)
    with pytest.raises(UpscaleError, match=f"at most {MAX_OUTPUT_SIDE}"):
        upscale_image(Image.new("RGB", (2000, 10)), upscaler="Lanczos", factor=5)
    with pytest.raises(UpscaleError, match="at least 1"):
        upscale_image(image, upscaler="Lanczos", mode=1, to_width=0, to_height=10)
    with pytest.raises(UpscaleError, match="resize_mode"):
        upscale_image(image, upscaler="Lanczos", mode=2)


def test_palette_and_transparent_images_are_resampled_in_rgb() -> None:
    assert upscale_image(Image.new("P", (4, 4)), upscaler="Lanczos").mode == "RGB"
    assert upscale_image(Image.new("RGBA", (4, 4)), upscaler="Lanczos").mode == "RGBA"

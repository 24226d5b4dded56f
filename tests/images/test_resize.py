"""img2img resize modes and transparency, as A1111 defines them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdweb.images.resize import flatten_alpha, latent_upscale_source_size, resize_image


def _halves(width: int, height: int) -> Image.Image:
    """Left half red, right half blue, a green 2-pixel border on the left and right."""
    image = Image.new("RGB", (width, height), (255, 0, 0))
    image.paste((0, 0, 255), (width // 2, 0, width, height))
    image.paste((0, 255, 0), (0, 0, 2, height))
    image.paste((0, 255, 0), (width - 2, 0, width, height))
    return image


@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("size", [(64, 64), (200, 40), (40, 200), (1, 1)])
def test_every_mode_gives_exactly_the_requested_size(mode: int, size: tuple[int, int]) -> None:
    assert resize_image(_halves(123, 77), mode, *size).size == size


def test_crop_and_resize_cuts_the_sides_of_a_wide_image() -> None:
    out = np.asarray(resize_image(_halves(200, 100), 1, 100, 100))
    # The green borders were cut off; the middle keeps red on the left and blue on the right.
    assert tuple(out[50, 0]) != (0, 255, 0) and out[50, 0, 0] > 200
    assert out[50, 99, 2] > 200
    assert out[50, 99, 1] < 50


def test_just_resize_keeps_everything_stretched() -> None:
    out = np.asarray(resize_image(_halves(200, 100), 0, 100, 100))
    assert out[50, 0, 1] > 150  # the green border is still there


def test_resize_and_fill_stretches_the_edges_into_the_bands() -> None:
    wide = _halves(200, 100)
    out = np.asarray(resize_image(wide, 2, 200, 200))
    # The image sits in the middle (rows 50..149); the bands above and below repeat its edge rows.
    assert np.array_equal(out[0], out[50])
    assert np.array_equal(out[199], out[149])
    tall = np.asarray(resize_image(_halves(100, 200), 2, 200, 200))
    assert np.array_equal(tall[:, 0], tall[:, 50])  # left band repeats the first column


def test_unknown_mode_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="0 = Just resize"):
        resize_image(_halves(10, 10), 7, 8, 8)
    with pytest.raises(ValueError, match="latent"):
        resize_image(_halves(10, 10), 3, 8, 8)


def test_transparency_is_flattened_onto_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    flat = flatten_alpha(rgba)
    assert flat.mode == "RGB"
    assert flat.getpixel((0, 0)) == (255, 0, 0)
    assert flat.getpixel((2, 2)) == (255, 255, 255)
    assert all(abs(c - 127) <= 1 for c in flat.getpixel((1, 0)))
    palette = Image.new("P", (2, 2), 0)
    palette.info["transparency"] = 0
    assert flatten_alpha(palette).getpixel((0, 0)) == (255, 255, 255)
    assert flatten_alpha(Image.new("L", (2, 2), 9)).getpixel((0, 0)) == (9, 9, 9)


def test_latent_upscale_encodes_at_the_image_size_on_the_vae_grid() -> None:
    assert latent_upscale_source_size(Image.new("RGB", (101, 37))) == (104, 40)
    assert latent_upscale_source_size(Image.new("RGB", (3, 3))) == (8, 8)

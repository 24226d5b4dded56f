"""SD upscale's tiles: they cover the picture with the overlap asked, and blend back without seams."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdweb.images.tiles import combine_tiles, plan_tiles, split_tiles


def gradient(width: int, height: int) -> Image.Image:
    xs = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    ys = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([xs, ys, 255 - xs], -1).astype(np.uint8), "RGB")


def test_tiles_cover_the_picture_with_the_overlap() -> None:
    layout = plan_tiles(256, 192, tile_w=128, tile_h=128, overlap=32)
    assert layout.columns == (0, 64, 128) and layout.rows == (0, 64)
    assert layout.count == 6
    for left, right in zip(layout.columns, layout.columns[1:], strict=False):
        assert left + 128 - right >= 32
    assert layout.columns[-1] + 128 == 256 and layout.rows[-1] + 128 == 192


def test_unchanged_tiles_put_back_give_the_picture_back() -> None:
    picture = gradient(200, 136)
    layout = plan_tiles(200, 136, tile_w=64, tile_h=64, overlap=16)
    again = combine_tiles(split_tiles(picture, layout), layout)
    assert np.abs(np.asarray(again, np.int16) - np.asarray(picture, np.int16)).max() <= 1


def test_overlaps_fade_from_one_tile_to_the_next() -> None:
    layout = plan_tiles(128, 64, tile_w=80, tile_h=64, overlap=32)
    assert layout.columns == (0, 48)
    dark, light = Image.new("RGB", (80, 64), (0, 0, 0)), Image.new("RGB", (80, 64), (255, 255, 255))
    row = np.asarray(combine_tiles([dark, light], layout))[32, :, 0].astype(int)
    assert (row[:48] == 0).all() and (row[80:] == 255).all()
    ramp = row[48:80]
    assert (np.diff(ramp) >= 0).all() and ramp[0] < 16 and ramp[-1] > 240


def test_bad_overlaps_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        plan_tiles(256, 256, tile_w=64, tile_h=64, overlap=64)

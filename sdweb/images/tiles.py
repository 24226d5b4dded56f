"""Cutting a picture into overlapping tiles and putting processed tiles back together (SD upscale).

:func:`split_tiles` places ``tile_w x tile_h`` tiles so they cover the picture with at least
``overlap`` pixels shared between neighbours, spread evenly, the last ones flush with the right and
bottom edges (A1111's layout: ``ceil((size - overlap) / (tile - overlap))`` tiles a side).
:func:`combine_tiles` pastes the processed tiles back where they came from; inside each overlap the
later tile fades in linearly over the earlier one, first within a row, then row over row, so no seam
shows where two tiles were denoised differently.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileLayout:
    """Where the tiles of one picture are: ``columns`` x-offsets and ``rows`` y-offsets."""

    width: int
    height: int
    tile_w: int
    tile_h: int
    columns: tuple[int, ...]
    rows: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.columns) * len(self.rows)

    def boxes(self) -> list[tuple[int, int, int, int]]:
        """Every tile's ``(left, top, right, bottom)``, row by row."""
        return [(x, y, x + self.tile_w, y + self.tile_h) for y in self.rows for x in self.columns]


def _offsets(size: int, tile: int, overlap: int) -> tuple[int, ...]:
    if size <= tile:
        return (0,)
    count = math.ceil((size - overlap) / (tile - overlap))
    step = (size - tile) / (count - 1) if count > 1 else 0
    return tuple(min(int(index * step), size - tile) for index in range(count))


def plan_tiles(width: int, height: int, *, tile_w: int, tile_h: int, overlap: int) -> TileLayout:
    """The tile layout of a ``width x height`` picture (tiles no larger than the picture).

    Raises:
        ValueError: a tile size below 1, or an overlap that is not smaller than both tile sides.
    """
    if tile_w < 1 or tile_h < 1:
        raise ValueError(f"tiles must be at least 1x1 pixels (got {tile_w}x{tile_h})")
    tile_w, tile_h = min(tile_w, width), min(tile_h, height)
    if overlap < 0 or overlap >= min(tile_w, tile_h):
        raise ValueError(f"the tile overlap must be from 0 to less than the tile size "
                         f"({tile_w}x{tile_h}); got {overlap}")
    return TileLayout(width, height, tile_w, tile_h, _offsets(width, tile_w, overlap),
                      _offsets(height, tile_h, overlap))


def split_tiles(image: Image.Image, layout: TileLayout) -> list[Image.Image]:
    """The tiles of ``image`` (RGB), row by row."""
    rgb = image.convert("RGB")
    return [rgb.crop(box) for box in layout.boxes()]


def combine_tiles(tiles: Sequence[Image.Image], layout: TileLayout) -> Image.Image:
    """Paste processed ``tiles`` (in :meth:`TileLayout.boxes` order) back as one picture, overlaps blended."""
    if len(tiles) != layout.count:
        raise ValueError(f"{len(tiles)} tiles for a layout of {layout.count}")
    canvas = np.zeros((layout.height, layout.width, 3), dtype=np.float32)
    columns = len(layout.columns)
    for row_index, top in enumerate(layout.rows):
        strip = np.zeros((layout.tile_h, layout.width, 3), dtype=np.float32)
        covered_to = 0
        for col_index, left in enumerate(layout.columns):
            tile = tiles[row_index * columns + col_index]
            if tile.size != (layout.tile_w, layout.tile_h):
                tile = tile.resize((layout.tile_w, layout.tile_h), Image.Resampling.LANCZOS)
            pixels = np.asarray(tile.convert("RGB"), dtype=np.float32)
            _blend_into(strip, pixels, start=left, covered_to=covered_to, axis=1)
            covered_to = left + layout.tile_w
        _blend_into(canvas, strip, start=top, covered_to=_covered_rows(layout, row_index), axis=0)
    return Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8), "RGB")


def _covered_rows(layout: TileLayout, row_index: int) -> int:
    return layout.rows[row_index - 1] + layout.tile_h if row_index else 0


def _blend_into(target: np.ndarray, piece: np.ndarray, *, start: int, covered_to: int, axis: int) -> None:
    """Write ``piece`` at ``start`` along ``axis``; where it overlaps what is there, fade it in linearly."""
    length = piece.shape[axis]
    shared = max(0, min(covered_to - start, length))
    index = [slice(None), slice(None)]
    index[axis] = slice(start, start + length)
    region = target[tuple(index)]
    if shared:
        ramp = (np.arange(shared, dtype=np.float32) + 0.5) / shared
        shape = [1, 1, 1]
        shape[axis] = shared
        weight = ramp.reshape(shape)
        head = [slice(None), slice(None)]
        head[axis] = slice(0, shared)
        region[tuple(head)] = region[tuple(head)] * (1 - weight) + piece[tuple(head)] * weight
        tail = [slice(None), slice(None)]
        tail[axis] = slice(shared, None)
        region[tuple(tail)] = piece[tuple(tail)]
    else:
        region[...] = piece

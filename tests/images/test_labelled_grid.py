"""Labelled grids as X/Y/Z plot and prompt matrix draw them, checked from their pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from sdweb.images.labelled_grid import (
    FONT_PATH,
    INACTIVE_COLOUR,
    GridLabel,
    check_grid_size,
    labelled_grid,
    legend_font,
)

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]


def cells(count: int, size: int = 64) -> list[Image.Image]:
    return [Image.new("RGB", (size, size), COLOURS[i]) for i in range(count)]


def where(grid: Image.Image, colour: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """The bounding box (left, top, right, bottom) of the pixels of exactly ``colour``."""
    pixels = np.asarray(grid)
    ys, xs = np.nonzero(np.all(pixels == colour, axis=-1))
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def dark(region: Image.Image) -> np.ndarray:
    return np.asarray(region.convert("L")) < 128


def rendered(text: str, size: int) -> np.ndarray:
    """``text`` drawn alone with the bundled font: what a label should look like."""
    font = legend_font(size)
    box = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font)
    image = Image.new("L", (box[2] + 4, box[3] + 4), 255)
    ImageDraw.Draw(image).text((2, 2), text, font=font, fill=0)
    return np.asarray(image) < 128


def ink_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_the_font_is_bundled_and_scalable() -> None:
    assert FONT_PATH.is_file() and (FONT_PATH.parent / "LICENSE-Roboto.txt").is_file()
    assert legend_font(20).getname() == ("Roboto", "Regular")


def test_cells_go_row_by_row_with_labels_over_columns_and_left_of_rows() -> None:
    grid = labelled_grid(cells(6), rows=2, column_labels=[[GridLabel(f"Seed: {i}")] for i in (1, 2, 3)],
                         row_labels=[[GridLabel("CFG: 5")], [GridLabel("CFG: 9")]], margin=6)
    boxes = [where(grid, colour) for colour in COLOURS]
    # Each cell is whole and 64x64, columns left to right, rows top to bottom, 6 px apart.
    assert all((right - left, bottom - top) == (64, 64) for left, top, right, bottom in boxes)
    assert [box[0] for box in boxes[:3]] == [boxes[0][0] + i * 70 for i in range(3)]
    assert [box[0] for box in boxes[3:]] == [box[0] for box in boxes[:3]]
    assert boxes[3][1] == boxes[0][1] + 70
    left_band, top_band = boxes[0][0], boxes[0][1]
    assert left_band == 64 * 3 // 4 and top_band > 0  # A1111's band for row labels: 3/4 of a cell
    assert grid.size == (left_band + 3 * 64 + 2 * 6, top_band + 2 * 64 + 6)
    # Each column's label is above it (its ink centred on the column) and not above the others.
    for col in range(3):
        left = boxes[col][0]
        band = dark(grid.crop((left, 0, left + 64, top_band)))
        assert band.any()
        x0, _, x1, _ = ink_box(band)
        assert abs((x0 + x1) / 2 - 32) <= 3
    # The row labels are in the left band at each row's height.
    for row in range(2):
        top = boxes[3 * row][1]
        assert dark(grid.crop((0, top, left_band, top + 64))).any()
    # A white gap, no ink, between the cells.
    assert not dark(grid.crop((boxes[0][2], boxes[0][1], boxes[1][0], boxes[0][3]))).any()


def test_labels_say_what_they_were_given_in_order() -> None:
    labels = ["Steps: 1", "Steps: 20", "Steps: 150"]
    grid = labelled_grid(cells(3, size=128), rows=1, column_labels=[[GridLabel(t)] for t in labels])
    top = where(grid, COLOURS[0])[1]
    font_size = (128 + 128) // 25
    expected = [rendered(text, font_size) for text in labels]
    for col in range(3):
        band = dark(grid.crop((col * 128, 0, col * 128 + 128, top)))
        x0, y0, x1, y1 = ink_box(band)
        ink = band[y0:y1, x0:x1]
        # The ink in column i has the size of label i drawn alone, and not of the other labels.
        sizes = [ink_box(mask)[2:] for mask in expected]
        widths = [box_w - ink_box(mask)[0] for mask, (box_w, _) in zip(expected, sizes, strict=True)]
        assert abs(ink.shape[1] - widths[col]) <= 1
        assert all(abs(ink.shape[1] - w) > 3 for i, w in enumerate(widths) if i != col)


def test_long_labels_wrap_inside_their_column() -> None:
    grid = labelled_grid(cells(2), rows=1, column_labels=[[GridLabel("a rather long label that wraps")],
                                                          [GridLabel("short")]])
    top = where(grid, COLOURS[0])[1]
    first = dark(grid.crop((0, 0, 64, top)))
    rows_with_ink = np.nonzero(first.any(axis=1))[0]
    assert np.diff(rows_with_ink).max() > 1  # at least two separate lines of text
    assert not dark(grid.crop((0, 0, 64, top))).all(axis=0).any()


def test_inactive_labels_are_grey_and_struck_through() -> None:
    grid = labelled_grid(cells(2, size=128), rows=1, column_labels=[[GridLabel("red hat", active=False)],
                                                                    [GridLabel("red hat")]])
    top = where(grid, COLOURS[0])[1]
    grey = np.asarray(grid.crop((0, 0, 128, top)))
    black = np.asarray(grid.crop((128, 0, 256, top)))
    is_grey = np.all(grey == INACTIVE_COLOUR, axis=-1)
    assert is_grey.sum() > 20 and (grey.min(axis=-1) < 100).sum() == 0  # grey, nothing darker
    assert (black.max(axis=-1) < 60).sum() > 20  # the active one is black
    # The strike: one row of pixels is grey across (nearly) the whole word.
    x0, _, x1, _ = ink_box(np.any(grey < 250, axis=-1))
    assert is_grey.sum(axis=1).max() >= 0.8 * (x1 - x0)
    assert np.all(black == INACTIVE_COLOUR, axis=-1).sum(axis=1).max() < 0.5 * (x1 - x0)


def test_without_labels_it_is_a_plain_grid() -> None:
    grid = labelled_grid(cells(4), rows=2)
    assert grid.size == (128, 128) and where(grid, COLOURS[3]) == (64, 64, 128, 128)


def test_counts_that_do_not_match_are_refused() -> None:
    with pytest.raises(ValueError, match="2 column labels for 3 columns"):
        labelled_grid(cells(3), rows=1, column_labels=[[GridLabel("a")], [GridLabel("b")]])
    with pytest.raises(ValueError, match="megapixels"):
        check_grid_size((2048, 2048), 100)

"""Grids with legends, as X/Y/Z plot and prompt matrix draw them (Pillow only).

:func:`labelled_grid` pastes cells row by row and writes a label above each column and left of each
row, in A1111's layout: white background, black text (grey and struck through for an "inactive"
label, as prompt matrix shows the parts a cell leaves out), the font size ``(cell width + cell height)
// 25``, labels wrapped to the column width, a left band of 3/4 of a cell width when there are row
labels, and ``margin`` pixels between cells. Without labels it is a plain grid (with margins when
asked).

The font is the bundled Roboto Regular (``sdweb/data/fonts``, Apache-2.0), so legends look the same on
every machine and need no system fonts. Pillow draws it with its FreeType support; a Pillow built
without FreeType gets its own small default font, with a warning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

logger = logging.getLogger(__name__)

FONT_PATH = Path(__file__).resolve().parent.parent / "data" / "fonts" / "Roboto-Regular.ttf"
ACTIVE_COLOUR = (0, 0, 0)
INACTIVE_COLOUR = (153, 153, 153)
BACKGROUND = (255, 255, 255)
#: Largest grid (pixels) a script may build: A1111's "Maximum grid size" default (200 megapixels).
MAX_GRID_PIXELS = 200_000_000

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass(frozen=True)
class GridLabel:
    """One line of a legend; an inactive one is grey and struck through."""

    text: str
    active: bool = True


#: The labels of one column (or row): usually one, prompt matrix gives several.
LabelGroup = Sequence[GridLabel]


def legend_font(size: int) -> Font:
    """The bundled font at ``size`` pixels."""
    try:
        return ImageFont.truetype(str(FONT_PATH), max(1, size))
    except (OSError, ImportError) as exc:  # a Pillow without FreeType, or the file removed
        logger.warning("grid legend font %s unusable (%s); using Pillow's default", FONT_PATH, exc)
        return ImageFont.load_default()


def check_grid_size(cell_size: tuple[int, int], count: int, limit: int = MAX_GRID_PIXELS) -> None:
    """Raise ValueError when ``count`` cells of ``cell_size`` would make a grid above ``limit`` pixels."""
    pixels = cell_size[0] * cell_size[1] * count
    if pixels > limit:
        raise ValueError(f"the grid would have {pixels / 1e6:.0f} megapixels ({count} images of "
                         f"{cell_size[0]}x{cell_size[1]}); at most {limit / 1e6:.0f} are allowed")


def grid_columns(count: int, rows: int) -> int:
    if count < 1 or rows < 1:
        raise ValueError("a grid needs at least one image and one row")
    return math.ceil(count / rows)


def labelled_grid(
    images: Sequence[Image.Image],
    *,
    rows: int,
    column_labels: Sequence[LabelGroup] | None = None,
    row_labels: Sequence[LabelGroup] | None = None,
    margin: int = 0,
) -> Image.Image:
    """``images`` in ``rows`` rows (filled row by row), with the legends given.

    Args:
        images: the cells; each is placed at the size of the largest (smaller ones are centred).
        rows: number of rows; the columns follow.
        column_labels: one label group per column (or None: no labels on top).
        row_labels: one label group per row (or None: no labels on the left).
        margin: pixels of white between cells.

    Raises:
        ValueError: the label counts do not match the grid, or a negative margin.
    """
    cols = grid_columns(len(images), rows)
    if margin < 0:
        raise ValueError(f"the grid margin must be 0 or more pixels (got {margin})")
    if column_labels is not None and len(column_labels) != cols:
        raise ValueError(f"{len(column_labels)} column labels for {cols} columns")
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"{len(row_labels)} row labels for {rows} rows")
    cell_w = max(image.width for image in images)
    cell_h = max(image.height for image in images)

    # 1. Measure the legends: wrap each label to its space, then the bands' sizes.
    font_size = max(8, (cell_w + cell_h) // 25)
    font = legend_font(font_size)
    spacing = font_size // 2
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    has_row_text = bool(row_labels) and any(label.text for group in row_labels or () for label in group)
    pad_left = cell_w * 3 // 4 if has_row_text else 0
    top_lines = [_wrap(measure, group, font, cell_w) for group in column_labels or ()]
    left_lines = [_wrap(measure, group, font, pad_left) for group in row_labels or ()] if has_row_text else []
    has_column_text = any(line.text for lines in top_lines for line in lines)
    top_heights = [_block_height(measure, lines, font, spacing) for lines in top_lines]
    pad_top = max(top_heights) + 2 * spacing if has_column_text else 0

    # 2. Paste the cells.
    width = pad_left + cols * cell_w + (cols - 1) * margin
    height = pad_top + rows * cell_h + (rows - 1) * margin
    labelled = has_column_text or has_row_text or margin > 0
    grid = Image.new("RGB", (width, height), BACKGROUND if labelled else (0, 0, 0))
    for index, image in enumerate(images):
        col, row = index % cols, index // cols
        left = pad_left + col * (cell_w + margin) + (cell_w - image.width) // 2
        top = pad_top + row * (cell_h + margin) + (cell_h - image.height) // 2
        grid.paste(image.convert("RGB"), (left, top))

    # 3. Write the legends, each block centred on its column / row.
    draw = ImageDraw.Draw(grid)
    if has_column_text:
        for col, lines in enumerate(top_lines):
            centre_x = pad_left + col * (cell_w + margin) + cell_w / 2
            _draw_block(draw, lines, font, spacing, centre_x, pad_top / 2 - top_heights[col] / 2)
    for row, lines in enumerate(left_lines):
        block = _block_height(measure, lines, font, spacing)
        centre_y = pad_top + row * (cell_h + margin) + cell_h / 2
        _draw_block(draw, lines, font, spacing, pad_left / 2, centre_y - block / 2)
    return grid


def _wrap(measure: ImageDraw.ImageDraw, group: LabelGroup, font: Font, width: int) -> list[GridLabel]:
    """Each label broken into lines that fit ``width`` pixels (a long word keeps its own line)."""
    lines: list[GridLabel] = []
    for label in group:
        current = ""
        for word in label.text.split():
            candidate = f"{current} {word}".strip()
            if not current or measure.textlength(candidate, font=font) <= width:
                current = candidate
            else:
                lines.append(GridLabel(current, label.active))
                current = word
        lines.append(GridLabel(current, label.active))
    return lines


def _line_height(measure: ImageDraw.ImageDraw, text: str, font: Font) -> int:
    box = measure.textbbox((0, 0), text or " ", font=font, anchor="lt")
    return int(box[3] - box[1])


def _block_height(measure: ImageDraw.ImageDraw, lines: Sequence[GridLabel], font: Font, spacing: int) -> int:
    if not lines:
        return 0
    return sum(_line_height(measure, line.text, font) for line in lines) + spacing * (len(lines) - 1)


def _draw_block(draw: ImageDraw.ImageDraw, lines: Sequence[GridLabel], font: Font, spacing: int,
                centre_x: float, top: float) -> None:
    y = top
    for line in lines:
        line_height = _line_height(draw, line.text, font)
        colour = ACTIVE_COLOUR if line.active else INACTIVE_COLOUR
        if line.text:
            draw.text((centre_x, y + line_height / 2), line.text, font=font, fill=colour, anchor="mm")
            if not line.active:
                half = draw.textlength(line.text, font=font) / 2
                middle = y + line_height / 2
                draw.line((centre_x - half, middle, centre_x + half, middle), fill=colour,
                          width=max(1, line_height // 8))
        y += line_height + spacing

"""The built-in ControlNet preprocessors: what each map shows, with the extension's slider defaults."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdweb.images.control_maps import PreprocessorNotFoundError, PreprocessorRegistry


def _square(size: int = 96, level: int = 200) -> Image.Image:
    array = np.zeros((size, size, 3), dtype=np.uint8)
    array[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = level
    return Image.fromarray(array)


@pytest.fixture(scope="module")
def registry() -> PreprocessorRegistry:
    return PreprocessorRegistry.with_builtins()


def test_canny_outlines_the_square_and_nothing_else(registry: PreprocessorRegistry) -> None:
    edges = np.asarray(registry.find("canny").run(_square(), 96))[:, :, 0]
    assert set(np.unique(edges)) == {0, 255}
    assert edges[48, 48] == 0 and edges[5, 5] == 0  # inside and outside are flat
    assert edges[20:28, 48].max() == 255 and edges[68:76, 48].max() == 255  # top and bottom sides
    assert edges[48, 20:28].max() == 255 and edges[48, 68:76].max() == 255  # left and right sides
    # A faint square's edges are below the default thresholds, not below low ones.
    assert np.asarray(registry.find("canny").run(_square(level=4), 96)).max() == 0
    assert np.asarray(registry.find("canny").run(_square(level=4), 96, 1, 5)).max() == 255


def test_invert_threshold_and_binary(registry: PreprocessorRegistry) -> None:
    inverted = np.asarray(registry.find("invert (from white bg & black line)").run(_square()))
    assert inverted[48, 48, 0] == 55 and inverted[0, 0, 0] == 255
    cut = np.asarray(registry.find("threshold").run(_square(), 96, 100))
    assert cut[48, 48, 0] == 255 and cut[0, 0, 0] == 0
    assert np.asarray(registry.find("threshold").run(_square(), 96, 250)).max() == 0
    binary = np.asarray(registry.find("binary").run(_square(), 96))  # Otsu: dark strokes become white
    assert binary[0, 0, 0] == 255 and binary[48, 48, 0] == 0


@pytest.mark.parametrize("name", ["none", "scribble_xdog", "blur_gaussian", "tile_resample",
                                  "t2ia_color_grid", "shuffle"])
def test_every_builtin_makes_an_rgb_map_at_the_processor_resolution(registry: PreprocessorRegistry,
                                                                    name: str) -> None:
    picture = Image.new("RGB", (128, 64), "white")
    result = registry.find(name).run(picture, 64, -1, -1)
    assert result.mode == "RGB"
    if name in ("scribble_xdog", "blur_gaussian", "t2ia_color_grid", "shuffle"):
        assert result.size == (128, 64)  # short side at the processor resolution
    if name == "tile_resample":
        assert registry.find(name).run(picture, 512, 2.0).size == (64, 32)


def test_out_of_range_sliders_take_the_defaults_and_unknown_names_are_refused(
        registry: PreprocessorRegistry) -> None:
    canny = registry.find("CANNY")
    assert canny.settings(-1, -1, -1) == (512, 100.0, 200.0)
    assert canny.settings(256, 50, 300) == (256, 50.0, 200.0)
    with pytest.raises(PreprocessorNotFoundError, match="depth_magic.*known: none"):
        registry.find("depth_magic")


def test_lineart_standard_turns_dark_strokes_into_white_lines(registry: PreprocessorRegistry) -> None:
    paper = np.full((96, 96, 3), 240, dtype=np.uint8)
    drawing = paper.copy()
    drawing[46:50, 10:86] = 20  # a dark horizontal stroke
    standard = registry.find("lineart_standard (from white bg & black line)")
    lines = np.asarray(standard.run(Image.fromarray(drawing), 96))[:, :, 0]
    assert lines[48, 48] > 100 and lines[10, 48] == 0 and lines[85, 10] == 0
    assert np.asarray(registry.find("lineart_standard").run(Image.fromarray(paper), 96)).max() == 0


def test_scribble_from_edges_keeps_the_strong_edges_as_white_strokes() -> None:
    from scipy import ndimage

    from sdweb.images.control_maps import scribble_from_edges

    soft = np.zeros((128, 128), dtype=np.float32)
    soft[:, 64] = 255.0
    soft = np.clip(ndimage.gaussian_filter(soft, sigma=(0, 20)) * 48, 0, 255).astype(np.uint8)  # a wide edge
    scribble = scribble_from_edges(soft)
    assert set(np.unique(scribble)) == {0, 255}
    assert scribble[64, 64] == 255 and scribble[64, 5] == 0 and scribble[64, 122] == 0
    # Where the edge is a maximum along some direction (all of a straight edge: it is flat along itself)
    # and above 127, spread by the second blur by at most 12 pixels on each side.
    bright = int((soft[64] > 127).sum())
    assert bright <= int((scribble[64] > 0).sum()) <= bright + 24
    assert scribble_from_edges(np.full((32, 32), 90, dtype=np.uint8)).max() == 0  # no edge above 127

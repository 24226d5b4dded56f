"""The demo model's data: the pixel checker reads ground-truth scenes right, and captions say what is drawn.

The evaluation of the demo model is only as good as :func:`demo_model.checker.read_scene`: if it misread
true renders, the quality bar would measure the checker, not the model.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from demo_model.checker import read_scene
from demo_model.dataset import (
    COLOURS,
    POSITION_PHRASES,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    batch,
    caption,
    random_scene,
    render,
)


@pytest.mark.parametrize("shape", SHAPES)
def test_the_checker_reads_every_colour_background_and_position_of_true_renders(shape: str) -> None:
    rng = np.random.default_rng(7)
    wrong = []
    for colour, background in itertools.permutations(COLOURS, 2):
        for position, size in itertools.product(POSITIONS, SIZES):
            scene = Scene(shape, colour, background, size, position)
            for jitter in (None, rng):  # the exact anchor, and the jittered renders the model trains on
                reading = read_scene(render(scene, jitter))
                if (reading.colour, reading.background, reading.position) != (colour, background, position):
                    wrong.append((scene, reading))
    assert not wrong, f"{len(wrong)} misread, e.g. {wrong[:3]}"


def test_the_checker_reads_renders_at_other_sizes_the_same() -> None:
    # The app may be asked for 128x128: the checker scales the image to the training size first.
    scene = Scene("circle", "orange", "purple", "small", "bottom")
    reading = read_scene(render(scene, size=128))
    assert (reading.colour, reading.background, reading.position) == ("orange", "purple", "bottom")


def test_an_empty_background_is_read_as_no_shape() -> None:
    from PIL import Image

    reading = read_scene(Image.new("RGB", (64, 64), COLOURS["green"]))
    assert (reading.background, reading.colour, reading.position) == ("green", None, None)
    assert reading.colour_shares["green"] == 1.0


def test_a_larger_shape_covers_more_pixels() -> None:
    small = read_scene(render(Scene("square", "red", "blue", "small", "center")))
    large = read_scene(render(Scene("square", "red", "blue", "large", "center")))
    assert large.shape_fraction > 2.5 * small.shape_fraction
    assert large.colour_shares["red"] > small.colour_shares["red"]


def test_captions_name_colour_shape_and_background_and_position_or_size_when_they_appear() -> None:
    rng = np.random.default_rng(3)
    for _ in range(500):
        scene = random_scene(rng)
        text = caption(scene, rng)
        words = set(re.findall(r"[a-z]+", text))
        assert {scene.colour, scene.shape, scene.background} <= words, text
        # A caption never names another shape, size or position than the scene's.
        assert not (words & (set(SHAPES) - {scene.shape})), text
        assert not (words & (set(SIZES) - {scene.size})), text
        named = {name for name, phrases in POSITION_PHRASES.items() if any(p in text for p in phrases)}
        assert named <= {scene.position}, text
        # The shape's colour comes before the shape; the background's before "background" or after "on".
        assert f"{scene.colour} {scene.shape}" in text, text
        assert re.search(rf"\b{scene.background} background\b|\bbackground is {scene.background}\b"
                         rf"|\bon {scene.background}$", text), text


def test_captions_vary_in_word_order_and_phrasing() -> None:
    rng = np.random.default_rng(4)
    scene = Scene("triangle", "yellow", "black", "large", "left")
    texts = {caption(scene, rng) for _ in range(300)}
    assert len(texts) >= 20
    starts = {text.split()[0] for text in texts}
    assert {"a", "the", "black", "yellow", "large"} <= starts  # the background first, the shape first...
    assert any(text.index("black") < text.index("yellow") for text in texts)
    assert any(text.index("yellow") < text.index("black") for text in texts)
    # People leave things out: some captions have no size, some no position.
    assert any("large" not in text for text in texts)
    assert any(not any(p in text for p in POSITION_PHRASES["left"]) for text in texts)
    assert all(" ," not in text and "  " not in text and not text.endswith(",") for text in texts)


def test_every_colour_shape_size_and_position_occurs_in_the_training_data() -> None:
    images, captions, scenes = batch(np.random.default_rng(5), 400)
    assert images.shape == (400, 3, 64, 64) and images.dtype == np.float32
    assert -1.0 <= images.min() and images.max() <= 1.0
    assert {s.colour for s in scenes} == set(COLOURS) == {s.background for s in scenes}
    assert {s.shape for s in scenes} == set(SHAPES)
    assert {s.size for s in scenes} == set(SIZES)
    assert {s.position for s in scenes} == set(POSITIONS)
    assert all(s.colour != s.background for s in scenes)
    assert len(set(captions)) > 350


def test_the_data_is_reproducible_from_a_seed() -> None:
    first = batch(np.random.default_rng(11), 8)
    second = batch(np.random.default_rng(11), 8)
    assert np.array_equal(first[0], second[0]) and first[1] == second[1]

"""Face alignment for restoration models: the landmarks land on FFHQ's template, and a face pasted back
changes the face and nothing else."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from sdweb.images.face_align import FACE_TEMPLATE_512, align_face, paste_face, similarity_transform


def picture() -> tuple[Image.Image, np.ndarray]:
    """A 320x240 picture with a tilted 'face' whose five landmarks are known."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), "RGB")
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    template = np.asarray(FACE_TEMPLATE_512)
    landmarks = (template - 256) @ rotation.T * 0.2 + np.array([170, 120])
    draw = ImageDraw.Draw(image)
    for x, y in landmarks:
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(255, 0, 0))
    return image, landmarks


def test_the_transform_is_exact_for_a_rotated_scaled_shifted_copy() -> None:
    _, landmarks = picture()
    matrix = similarity_transform(landmarks, np.asarray(FACE_TEMPLATE_512))
    mapped = np.c_[landmarks, np.ones(5)] @ matrix.T
    assert np.abs(mapped - np.asarray(FACE_TEMPLATE_512)).max() < 1e-6
    assert np.isclose(np.linalg.det(matrix[:, :2]), 25.0)  # the face is enlarged 5x, not mirrored


def test_the_aligned_crop_puts_the_landmarks_on_the_template() -> None:
    image, landmarks = picture()
    crop, _ = align_face(image, landmarks[[1, 0, 2, 4, 3]])  # detectors' order does not matter
    assert crop.size == (512, 512)
    pixels = np.asarray(crop)
    for x, y in FACE_TEMPLATE_512:
        red = pixels[int(y), int(x)]
        assert red[0] > 200 and red[1] < 80 and red[2] < 80, (x, y, red)


def test_an_unchanged_face_pasted_back_leaves_the_picture_as_it_was() -> None:
    image, landmarks = picture()
    crop, matrix = align_face(image, landmarks)
    again = np.asarray(paste_face(image, crop, matrix), np.int16)
    before = np.asarray(image, np.int16)
    face = (slice(95, 145), slice(145, 195))  # well inside the face
    assert np.abs(again - before)[face].mean() < 25  # noise resampled twice, nothing else
    assert np.array_equal(again[:, :60], before[:, :60]) and np.array_equal(again[:, 280:], before[:, 280:])


def test_a_restored_face_replaces_only_the_face() -> None:
    image, landmarks = picture()
    _, matrix = align_face(image, landmarks)
    restored = Image.new("RGB", (512, 512), (0, 255, 0))
    result = np.asarray(paste_face(image, restored, matrix))
    assert (result[120, 170] == (0, 255, 0)).all()  # the face's middle is the restored one
    before = np.asarray(image)
    assert np.array_equal(result[:40], before[:40]) and np.array_equal(result[:, :80], before[:, :80])
    with pytest.raises(ValueError, match="one point"):
        similarity_transform(np.zeros((5, 2)), np.asarray(FACE_TEMPLATE_512))

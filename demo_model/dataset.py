"""Procedural scenes: one shape (circle, square, triangle) of a named colour, size and position on a
coloured background, with captions that vary in word order and phrasing.

Pure numpy + Pillow; deterministic for a given ``numpy.random.Generator``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 225),
    "yellow": (240, 220, 30),
    "orange": (245, 135, 20),
    "purple": (135, 45, 185),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 9, "large": 17}  # half-extent in pixels at 64x64
POSITIONS: dict[str, tuple[int, int]] = {
    "left": (17, 32),
    "right": (47, 32),
    "top": (32, 17),
    "bottom": (32, 47),
    "center": (32, 32),
}
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "at the left", "left side", "left"),
    "right": ("on the right", "at the right", "right side", "right"),
    "top": ("at the top", "on top", "top", "near the top"),
    "bottom": ("at the bottom", "bottom", "near the bottom", "on the bottom"),
    "center": ("in the center", "in the middle", "center", "centered"),
}


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    size: str
    position: str


def random_scene(rng: np.random.Generator) -> Scene:
    colour, background = rng.choice(list(COLOURS), size=2, replace=False)
    return Scene(
        shape=str(rng.choice(SHAPES)),
        colour=str(colour),
        background=str(background),
        size=str(rng.choice(list(SIZES))),
        position=str(rng.choice(list(POSITIONS))),
    )


def render(scene: Scene, rng: np.random.Generator | None = None, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw ``scene``; ``rng`` adds a little jitter of position and size so the model generalises."""
    scale = size / IMAGE_SIZE
    image = Image.new("RGB", (size, size), COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    cx, cy = POSITIONS[scene.position]
    half = SIZES[scene.size]
    if rng is not None:
        cx += int(rng.integers(-3, 4))
        cy += int(rng.integers(-3, 4))
        half += int(rng.integers(-2, 3))
    cx, cy, half = cx * scale, cy * scale, half * scale
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        draw.ellipse((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif scene.shape == "square":
        side = half * 0.9
        draw.rectangle((cx - side, cy - side, cx + side, cy + side), fill=fill)
    else:
        corners = [(cx, cy - half), (cx - half, cy + half * 0.85), (cx + half, cy + half * 0.85)]
        draw.polygon(corners, fill=fill)
    return image


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """One of many phrasings; sometimes leaves out size or position, as people do."""
    position = str(rng.choice(POSITION_PHRASES[scene.position]))
    size = scene.size if rng.random() > 0.15 else ""
    where = position if rng.random() > 0.1 else ""
    thing = " ".join(part for part in (size, scene.colour, scene.shape) if part)
    background = scene.background
    templates = (
        f"a {thing} {where}, {background} background",
        f"a {thing} {where} on a {background} background",
        f"{thing}, {where}, {background} background",
        f"a {background} background with a {thing} {where}",
        f"{background} background, {thing} {where}",
        f"{where} a {thing} on {background}",
        f"the {thing} is {where}, the background is {background}",
        f"{thing} {where} {background} background",
    )
    text = str(rng.choice(templates))
    text = re.sub(r"\ba (?=[aeiou])", "an ", text)  # "an orange circle", as people write it
    return " ".join(text.replace(" ,", ",").split()).strip(" ,")


def batch(rng: np.random.Generator, count: int) -> tuple[np.ndarray, list[str], list[Scene]]:
    """``count`` images as float32 NCHW in [-1, 1], their captions and scenes."""
    scenes = [random_scene(rng) for _ in range(count)]
    images = np.stack([np.asarray(render(scene, rng), dtype=np.float32) for scene in scenes])
    images = images.transpose(0, 3, 1, 2) / 127.5 - 1.0
    return images, [caption(scene, rng) for scene in scenes], scenes

"""Read a generated scene back from pixel statistics: background colour, shape colour, position.

The background is the colour that dominates the border; the shape is the pixels far from it. Colours are
matched to the nearest named colour; the position is the shape's centroid compared with the five anchors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from demo_model.dataset import COLOURS, IMAGE_SIZE, POSITIONS

_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[name] for name in _NAMES], dtype=np.float32)


@dataclass(frozen=True)
class Reading:
    background: str
    colour: str | None  # None when no shape was found
    position: str | None
    shape_fraction: float
    colour_shares: dict[str, float]


def nearest_colour_indices(pixels: np.ndarray) -> np.ndarray:
    distances = ((pixels[:, None, :] - _PALETTE[None, :, :]) ** 2).sum(-1)
    return distances.argmin(1)


def read_scene(image: Image.Image) -> Reading:
    array = np.asarray(image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE)), dtype=np.float32)
    flat = array.reshape(-1, 3)
    labels = nearest_colour_indices(flat)
    shares = np.bincount(labels, minlength=len(_NAMES)) / labels.size
    colour_shares = {name: float(shares[i]) for i, name in enumerate(_NAMES)}

    border = np.concatenate([array[:3].reshape(-1, 3), array[-3:].reshape(-1, 3),
                             array[:, :3].reshape(-1, 3), array[:, -3:].reshape(-1, 3)])
    border_labels = nearest_colour_indices(border)
    background_index = int(np.bincount(border_labels, minlength=len(_NAMES)).argmax())
    background = _NAMES[background_index]

    label_grid = labels.reshape(IMAGE_SIZE, IMAGE_SIZE)
    mask = label_grid != background_index
    fraction = float(mask.mean())
    if fraction < 0.01:
        return Reading(background, None, None, fraction, colour_shares)
    shape_labels = label_grid[mask]
    colour = _NAMES[int(np.bincount(shape_labels, minlength=len(_NAMES)).argmax())]
    ys, xs = np.nonzero(mask)
    cx, cy = float(xs.mean()), float(ys.mean())
    position = min(POSITIONS,
                   key=lambda name: (POSITIONS[name][0] - cx) ** 2 + (POSITIONS[name][1] - cy) ** 2)
    return Reading(background, colour, position, fraction, colour_shares)

"""Cutting a face out upright for a face restoration model, and putting the restored face back.

Face restoration models (GFPGAN, CodeFormer) were trained on 512x512 FFHQ crops, where the eyes, nose
tip and mouth corners sit at fixed places (:data:`FACE_TEMPLATE_512`). For each face found:

1. :func:`similarity_transform` fits the rotation, uniform scale and shift that carry the five detected
   landmarks onto the template (least squares, Umeyama's method, no mirroring).
2. :func:`align_face` cuts that square out of the picture (outside it: FFHQ's grey).
3. :func:`paste_face` maps the restored square back with the inverse transform and blends it in
   through a mask that is eroded and feathered in proportion to the face's size, so no edge shows.

Pure numpy + Pillow; the detector and the models are the engine's (:mod:`sdweb.engine.face_restore`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFilter

logger = logging.getLogger(__name__)

#: Where FFHQ-aligned 512x512 crops have the eyes, the nose tip and the mouth corners (left to right in
#: the image), as the restoration models were trained.
FACE_TEMPLATE_512: tuple[tuple[float, float], ...] = (
    (192.98138, 239.94708), (318.90277, 240.1936), (256.63416, 314.01935),
    (201.26117, 371.41043), (313.08905, 371.15118),
)
FACE_SIZE = 512
#: FFHQ's background grey, used outside the picture when a face is near an edge.
BORDER_GREY = (135, 133, 132)


def ordered_landmarks(points: Sequence[Sequence[float]]) -> np.ndarray:
    """Five ``(x, y)`` points in the template's order: eyes, nose, mouth corners (left to right)."""
    array = np.asarray(points, dtype=np.float64).reshape(5, 2)
    eyes = array[:2][np.argsort(array[:2, 0])]
    mouth = array[3:][np.argsort(array[3:, 0])]
    return np.vstack([eyes, array[2:3], mouth])


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 matrix ``[s*R | t]`` that best maps ``source`` points onto ``target`` (least squares)."""
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    mean_s, mean_t = source.mean(axis=0), target.mean(axis=0)
    centred_s, centred_t = source - mean_s, target - mean_t
    covariance = centred_t.T @ centred_s / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    flip = np.diag([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) >= 0 else -1.0])
    rotation = u @ flip @ vt
    variance = (centred_s ** 2).sum() / len(source)
    if variance <= 0:
        raise ValueError("the landmarks are all at one point")
    scale = float(np.trace(np.diag(singular) @ flip) / variance)
    shift = mean_t - scale * rotation @ mean_s
    return np.hstack([scale * rotation, shift[:, None]])


def _inverse(matrix: np.ndarray) -> np.ndarray:
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def align_face(image: Image.Image, landmarks: Sequence[Sequence[float]], size: int = FACE_SIZE
               ) -> tuple[Image.Image, np.ndarray]:
    """``(crop, matrix)``: the upright ``size`` x ``size`` face and the picture -> crop transform."""
    template = np.asarray(FACE_TEMPLATE_512) * (size / FACE_SIZE)
    matrix = similarity_transform(ordered_landmarks(landmarks), template)
    # Pillow's AFFINE data maps output pixels to input pixels: the inverse of picture -> crop.
    inverse = _inverse(matrix)
    crop = image.convert("RGB").transform((size, size), Image.Transform.AFFINE, data=tuple(inverse.ravel()),
                                          resample=Image.Resampling.BICUBIC, fillcolor=BORDER_GREY)
    return crop, matrix


def paste_face(image: Image.Image, face: Image.Image, matrix: np.ndarray) -> Image.Image:
    """``image`` with the (restored) ``face`` crop mapped back through ``matrix`` and feathered in."""
    size = face.size
    data = tuple(np.asarray(matrix, dtype=np.float64).ravel())  # picture pixel -> crop pixel
    back = face.convert("RGB").transform(image.size, Image.Transform.AFFINE, data=data,
                                         resample=Image.Resampling.BICUBIC)
    mask = Image.new("L", size, 255).transform(image.size, Image.Transform.AFFINE, data=data,
                                               resample=Image.Resampling.BILINEAR, fillcolor=0)
    # Shrink, then feather, in proportion to the face's area in the picture (as face helpers do).
    area = float(np.asarray(mask, dtype=np.float32).sum() / 255.0)
    edge = max(1, int(math.sqrt(max(area, 1.0)) / 20))
    mask = mask.filter(ImageFilter.MinFilter(2 * edge + 1)).filter(ImageFilter.GaussianBlur(edge))
    return Image.composite(back, image.convert("RGB"), mask)

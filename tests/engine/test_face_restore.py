"""Face restoration: the faces the detector finds go through the model and back, the rest of the picture
does not change, and what is missing is said plainly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sdweb.engine.face_restore import FaceModelLibrary, FaceRestoreError, FaceRestorer, restoration_problem
from sdweb.images.face_align import FACE_TEMPLATE_512


class Inverting(torch.nn.Module):
    """A stand-in restorer: returns the negative of the face it is given, records its arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1), requires_grad=False)
        self.calls: list[dict[str, Any]] = []

    def forward(self, x: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, None]:
        self.calls.append({"shape": tuple(x.shape), "min": float(x.min()), "max": float(x.max()), **kwargs})
        return -x * self.scale, None


def scene() -> tuple[Image.Image, np.ndarray]:
    image = Image.new("RGB", (256, 192), (40, 90, 160))
    landmarks = (np.asarray(FACE_TEMPLATE_512) - 256) * 0.15 + np.array([128, 96])
    return image, landmarks


def library(tmp_path: Path, *names: str) -> FaceModelLibrary:
    for name in names:
        folder = tmp_path / "models" / ("Codeformer" if name == "CodeFormer" else name)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name.lower()}-test.pth").write_bytes(b"weights")
    return FaceModelLibrary(tmp_path / "models")


def test_found_faces_are_restored_and_the_rest_is_kept(tmp_path: Path) -> None:
    image, landmarks = scene()
    model = Inverting()
    loaded: list[tuple[str, str]] = []

    def loader(path: Path, name: str) -> Inverting:
        loaded.append((path.name, name))
        return model

    restorer = FaceRestorer(library(tmp_path, "CodeFormer"), loader=loader,
                            detector=lambda _image: [landmarks])
    result = np.asarray(restorer.restore(image, "CodeFormer", codeformer_weight=0.7))
    assert loaded == [("codeformer-test.pth", "CodeFormer")]
    call = model.calls[0]
    assert call["shape"] == (1, 3, 512, 512) and -1.0 <= call["min"] <= call["max"] <= 1.0
    assert call["weight"] == 0.7  # CodeFormer's fidelity weight reaches the model
    assert tuple(result[96, 128]) == (215, 165, 95)  # the face's middle: the negative of the colour
    assert tuple(result[5, 5]) == (40, 90, 160) and tuple(result[186, 250]) == (40, 90, 160)
    restorer.restore(image, "CodeFormer")
    assert len(loaded) == 1  # the model stays loaded


def test_a_picture_without_faces_comes_back_unchanged(tmp_path: Path) -> None:
    image, _ = scene()
    restorer = FaceRestorer(library(tmp_path, "GFPGAN"), loader=lambda _p, _n: pytest.fail("loaded"),
                            detector=lambda _image: [])
    assert restorer.restore(image, "GFPGAN") is image


def test_what_is_missing_is_said(tmp_path: Path) -> None:
    empty = FaceModelLibrary(tmp_path / "models")
    problem = restoration_problem(empty, "CodeFormer")
    assert problem is not None and "no CodeFormer model in" in problem
    assert str(tmp_path / "models" / "Codeformer") in problem and "codeformer-v0.1.0.pth" in problem
    assert "unknown face restorer 'Bob'" in (restoration_problem(empty, "Bob") or "")
    with_model = library(tmp_path, "GFPGAN")
    try:
        import cv2  # noqa: F401
        import spandrel  # noqa: F401
    except Exception:  # the optional extra is not installed here: the message says how to get it
        assert "pip install 'sdweb[upscalers]'" in (restoration_problem(with_model, "GFPGAN") or "")
    else:
        assert restoration_problem(with_model, "GFPGAN") is None
    restorer = FaceRestorer(empty, detector=lambda _image: [scene()[1]])
    with pytest.raises(FaceRestoreError, match="no CodeFormer model"):
        restorer.restore(scene()[0], "CodeFormer")

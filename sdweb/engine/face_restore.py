"""Face restoration (A1111's "Restore faces"): GFPGAN / CodeFormer models on the faces a detector finds.

Owns:

* :class:`FaceModelLibrary`: the model files of ``models/GFPGAN`` and ``models/Codeformer`` (A1111's
  folders; any ``.pth`` / ``.safetensors``) and the detector's folder, listed without torch.
* :func:`restoration_problem`: why restoration cannot run here (a missing model file, the optional
  ``upscalers`` extra not installed ...), a sentence saying what to do, or None.
* :class:`FaceRestorer`: for each face the detector finds, cut it out upright at 512x512
  (:mod:`sdweb.images.face_align`), run the model (spandrel builds it from the weights; CodeFormer's
  architecture is in ``spandrel_extra_arches``), and blend the restored face back in.

Faces are found by OpenCV's YuNet detector (``cv2.FaceDetectorYN``, maintained in OpenCV's model zoo,
MIT licence). Its weights (``face_detection_yunet_2023mar.onnx``, 233 kB) are read from
``models/facedetection``, fetched from the Hugging Face hub on first use when the machine is online.
spandrel, spandrel_extra_arches and opencv are optional (the ``upscalers`` extra); weights are read by
sdweb (``torch.load(weights_only=True)`` / safetensors), never by spandrel's file loader.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sdweb.images.face_align import FACE_SIZE, align_face, paste_face

logger = logging.getLogger(__name__)

#: The restorers A1111 offers, in its order, and the file it asks users to put in each folder.
FACE_RESTORERS = ("CodeFormer", "GFPGAN")
_FOLDER_NAMES = {"CodeFormer": "Codeformer", "GFPGAN": "GFPGAN"}
_EXPECTED_FILES = {"CodeFormer": "codeformer-v0.1.0.pth", "GFPGAN": "GFPGANv1.4.pth"}
MODEL_SUFFIXES = (".pth", ".safetensors")
DETECTOR_REPO = "opencv/face_detection_yunet"
DETECTOR_FILE = "face_detection_yunet_2023mar.onnx"
#: Faces below this detector score are left alone.
DETECTION_THRESHOLD = 0.8
INSTALL_HINT = ("install the optional upscalers extra: pip install 'sdweb[upscalers]' (spandrel, "
                "spandrel-extra-arches, opencv-python-headless, and a torchvision matching torch)")

#: ``detect(image) -> [five (x, y) landmarks per face]``.
Detector = Callable[[Image.Image], list[np.ndarray]]
#: ``load(path, name) -> torch module`` taking a (1, 3, 512, 512) tensor in [-1, 1].
ModelLoader = Callable[[Path, str], Any]


class FaceRestoreError(ValueError):
    """Face restoration cannot run (missing model, extra or detector weights); the message says what to do."""


@dataclass(frozen=True)
class FaceModelLibrary:
    """Where the restorers' model files and the detector's weights are (A1111's folders)."""

    models_root: Path

    def folder(self, name: str) -> Path:
        return self.models_root / _FOLDER_NAMES[name]

    @property
    def detector_folder(self) -> Path:
        return self.models_root / "facedetection"

    def model_file(self, name: str) -> Path | None:
        """The restorer's weights: the file whose name says the restorer, else the first one, else None."""
        folder = self.folder(name)
        if not folder.is_dir():
            return None
        files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in MODEL_SUFFIXES
                       and path.is_file())
        named = [path for path in files if name.lower() in path.name.lower()]
        return (named or files or [None])[0]


def restoration_problem(library: FaceModelLibrary, name: str) -> str | None:
    """None when ``name`` can restore faces here; else what is missing and how to fix it."""
    if name not in FACE_RESTORERS:
        return f"unknown face restorer {name!r}; known: {', '.join(FACE_RESTORERS)}"
    if library.model_file(name) is None:
        return (f"no {name} model in {library.folder(name)}: put {_EXPECTED_FILES[name]} (or another "
                f"{name} .pth / .safetensors file) there")
    for module, what in (("spandrel", "spandrel"), ("cv2", "opencv (the face detector)")):
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - torchvision beside a mismatched torch raises RuntimeError
            return f"{what} did not import ({type(exc).__name__}: {exc}); {INSTALL_HINT}"
    if name == "CodeFormer":
        try:
            importlib.import_module("spandrel_extra_arches")
        except Exception as exc:  # noqa: BLE001
            return f"CodeFormer needs spandrel-extra-arches ({type(exc).__name__}: {exc}); {INSTALL_HINT}"
    return None


def load_face_model(path: Path, name: str) -> Any:
    """The restorer network of ``path`` (spandrel, extra architectures installed), on the CPU, eval mode."""
    import spandrel

    from sdweb.engine.upscalers import read_state_dict

    if name == "CodeFormer":
        import spandrel_extra_arches

        spandrel_extra_arches.install(ignore_duplicates=True)
    state = read_state_dict(path)
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(spandrel.canonicalize_state_dict(state))
    except spandrel.UnsupportedModelError as exc:
        raise FaceRestoreError(f"{path.name}: spandrel does not recognise this as a {name} model") from exc
    return descriptor.model.eval()


def yunet_detector(weights: Path) -> Detector:
    """Faces found by OpenCV's YuNet in ``weights``: five landmarks each (eyes, nose, mouth corners)."""
    import cv2

    def detect(image: Image.Image) -> list[np.ndarray]:
        rgb = np.asarray(image.convert("RGB"))
        detector = cv2.FaceDetectorYN.create(str(weights), "", (rgb.shape[1], rgb.shape[0]),
                                             DETECTION_THRESHOLD, 0.3, 5000)
        _, faces = detector.detect(np.ascontiguousarray(rgb[:, :, ::-1]))
        if faces is None:
            return []
        return [np.asarray(face[4:14], dtype=np.float64).reshape(5, 2) for face in faces]

    return detect


def fetch_detector_weights(folder: Path) -> Path:
    """``models/facedetection/<YuNet weights>``, downloaded from the hub the first time when online."""
    target = folder / DETECTOR_FILE
    if target.is_file():
        return target
    try:
        from huggingface_hub import hf_hub_download

        folder.mkdir(parents=True, exist_ok=True)
        return Path(hf_hub_download(repo_id=DETECTOR_REPO, filename=DETECTOR_FILE, local_dir=str(folder)))
    except Exception as exc:  # noqa: BLE001 - offline, blocked, hub errors: one message for people
        raise FaceRestoreError(
            f"the face detector's weights ({DETECTOR_FILE}) are not in {folder} and could not be "
            f"downloaded ({type(exc).__name__}: {exc}); download them from the Hugging Face repository "
            f"{DETECTOR_REPO} into that folder") from exc


class FaceRestorer:
    """Restores the faces in pictures with one restorer at a time (the last one used stays loaded)."""

    def __init__(self, library: FaceModelLibrary, *, device: Any = "cpu", dtype: Any = None,
                 loader: ModelLoader = load_face_model, detector: Detector | None = None) -> None:
        """``loader`` and ``detector`` default to spandrel and YuNet; tests pass their own."""
        self.library = library
        self._device = device
        self._dtype = dtype
        self._loader = loader
        self._detector = detector
        self._lock = threading.Lock()
        self._loaded: tuple[str, Path, Any] | None = None

    def restore(self, image: Image.Image, name: str, *, codeformer_weight: float = 0.5) -> Image.Image:
        """``image`` with every face found restored by ``name`` (unchanged when there is none).

        Raises:
            FaceRestoreError: the restorer cannot run (see :func:`restoration_problem`).
        """
        with self._lock:
            detect = self._detector or self._default_detector()
            faces = detect(image)
            if not faces:
                logger.info("face restoration: no face found")
                return image
            model = self._model(name)
            result = image.convert("RGB")
            for landmarks in faces:
                crop, matrix = align_face(result, landmarks, FACE_SIZE)
                restored = self._run(model, crop, name, codeformer_weight)
                result = paste_face(result, restored, matrix)
            logger.info("face restoration: %d face(s) restored with %s", len(faces), name)
            return result

    def unload(self) -> None:
        with self._lock:
            self._loaded = None

    def _default_detector(self) -> Detector:
        self._detector = yunet_detector(fetch_detector_weights(self.library.detector_folder))
        return self._detector

    def _model(self, name: str) -> Any:
        if self._loader is load_face_model:
            problem = restoration_problem(self.library, name)
            if problem is not None:
                raise FaceRestoreError(problem)
        path = self.library.model_file(name)
        if path is None:
            raise FaceRestoreError(restoration_problem(self.library, name) or f"no {name} model")
        if self._loaded is None or self._loaded[:2] != (name, path):
            self._loaded = None  # drop the old one before loading the next
            model = self._loader(path, name)
            self._loaded = (name, path, model.to(self._device))
        return self._loaded[2]

    def _run(self, model: Any, crop: Image.Image, name: str, weight: float) -> Image.Image:
        import torch

        pixels = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        parameter = next(iter(model.parameters()), None)
        dtype = parameter.dtype if parameter is not None else torch.float32
        pixels = pixels.to(device=self._device, dtype=dtype)
        with torch.inference_mode():
            out = model(pixels, weight=weight) if name == "CodeFormer" else model(pixels)
        if isinstance(out, (tuple, list)):
            out = out[0]
        array = ((out[0].float().clamp(-1, 1) + 1.0) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(array, "RGB")


"""Model-based ControlNet annotators: the sd-webui-controlnet extension's soft-edge, lineart, depth ... maps.

Two kinds, both reading lllyasviel/Annotators' weight files from ``models/ControlNet/annotators/<file>``:

* sdweb's own networks for the small image-to-image ones (:data:`NATIVE`): ``softedge_hed`` /
  ``softedge_hedsafe`` / ``scribble_hed`` (``ControlNetHED.pth``, ControlNet 1.1's HED),
  ``softedge_pidinet`` / ``softedge_pidisafe`` / ``scribble_pidinet`` (``table5_pidinet.pth``, PiDiNet),
  ``lineart_realistic`` / ``lineart_coarse`` (``sk_model.pth`` / ``sk_model2.pth``, "informative
  drawings" generators), ``lineart_anime`` (``netG.pth``, a pix2pix U-Net), ``mlsd``
  (``mlsd_large_512_fp32.pth``, M-LSD large: line segments drawn 1 pixel wide) and ``openpose``
  (``body_pose_model.pth``, CMU's body model: skeletons, :mod:`sdweb.engine.control.openpose`). Their
  layer widths and depths are read from the file's tensor shapes, so a file is checked against the
  layout before anything runs;
* the others (:data:`VIA_CONTROLNET_AUX`: ``depth_midas``, ``depth_leres``, ``normal_bae``,
  ``openpose_full`` / ``_hand`` / ``_face`` / ``_faceonly``) through the controlnet-aux package when it
  imports (the ``annotators`` extra; it needs torchvision, whose PyPI build does not import beside the
  CPU torch build). ``seg_ufade20k`` (UniFormer) is in neither.

A missing file is fetched from the hub on first use (``hf_hub_download`` into that folder) unless
downloads are off (``HF_HUB_OFFLINE``, or ``download=False``); offline the message names the file and the
folder. Files are read with the weights-only unpickler (or as safetensors): a pickle that wants to run
code is refused. Loaded networks stay on the runner's device (the engine's) until :meth:`unload`.

The map of each annotator is made the extension's way: the picture's short side scaled to the
processor resolution, edge-padded to a multiple of 64 for the network, the padding cut off after.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdweb.engine.control.annotator_nets import (
    build_anime,
    build_hed,
    build_lineart,
    build_mlsd,
    build_pidinet,
    mlsd_segments,
)
from sdweb.engine.control.openpose import build_openpose, openpose_map
from sdweb.images.control_maps import (
    ANNOTATOR_REPO,
    PreprocessorUnavailableError,
    at_resolution,
    scribble_from_edges,
)

logger = logging.getLogger(__name__)

#: How to install the controlnet-aux annotators, and why they may not import.
AUX_INSTALL_HINT = (
    "install the optional annotators extra: pip install 'sdweb[annotators]' (controlnet-aux, which "
    "imports torchvision and timm). torchvision must match torch: PyPI's torchvision does not import "
    "beside the CPU torch 2.13.0 build ('operator torchvision::nms does not exist'), so install the "
    "torch and torchvision pair built for this machine (see the upscalers extra in pyproject.toml)"
)
#: Processing sizes are padded up to a multiple of this (the extension's rule).
PAD = 64


# ---------------------------------------------------------------------------------------------------
# Which annotator is what
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NativeAnnotator:
    """An annotator sdweb runs with its own network: the file and how its map is made."""

    kind: str  # "hed", "pidi", "lineart", "anime", "mlsd", "openpose"
    weights_file: str
    safe: bool = False  # softedge_hedsafe: the edges quantised to three levels
    scribble: bool = False  # scribble_hed / scribble_pidinet: the edges thinned to scribble lines


NATIVE: dict[str, NativeAnnotator] = {
    "softedge_hed": NativeAnnotator("hed", "ControlNetHED.pth"),
    "softedge_hedsafe": NativeAnnotator("hed", "ControlNetHED.pth", safe=True),
    "lineart_realistic": NativeAnnotator("lineart", "sk_model.pth"),
    "lineart_coarse": NativeAnnotator("lineart", "sk_model2.pth"),
    "lineart_anime": NativeAnnotator("anime", "netG.pth"),
    "softedge_pidinet": NativeAnnotator("pidi", "table5_pidinet.pth"),
    "softedge_pidisafe": NativeAnnotator("pidi", "table5_pidinet.pth", safe=True),
    "scribble_hed": NativeAnnotator("hed", "ControlNetHED.pth", scribble=True),
    "scribble_pidinet": NativeAnnotator("pidi", "table5_pidinet.pth", scribble=True),
    "mlsd": NativeAnnotator("mlsd", "mlsd_large_512_fp32.pth"),
    "openpose": NativeAnnotator("openpose", "body_pose_model.pth"),
}


@dataclass(frozen=True)
class AuxAnnotator:
    """An annotator run through controlnet-aux: its detector class, the files it loads, call options."""

    detector: str
    files: tuple[str, ...]
    #: ``from_pretrained`` keyword for each file after the first (the first is ``filename``).
    file_keywords: tuple[str, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    #: Names of the detector's keyword arguments that take threshold_a and threshold_b.
    thresholds: tuple[str | None, str | None] = (None, None)


VIA_CONTROLNET_AUX: dict[str, AuxAnnotator] = {
    "depth_midas": AuxAnnotator("MidasDetector", ("dpt_hybrid-midas-501f0c75.pt",)),
    "depth_leres": AuxAnnotator("LeresDetector", ("res101.pth", "latest_net_G.pth"), ("pix2pix_filename",),
                                thresholds=("thr_a", "thr_b")),
    "normal_bae": AuxAnnotator("NormalBaeDetector", ("scannet.pt",)),
    "openpose_full": AuxAnnotator("OpenposeDetector",
                                  ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
                                  ("hand_filename", "face_filename"),
                                  options=(("include_hand", True), ("include_face", True))),
    "openpose_hand": AuxAnnotator("OpenposeDetector",
                                  ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
                                  ("hand_filename", "face_filename"), options=(("include_hand", True),)),
    "openpose_face": AuxAnnotator("OpenposeDetector",
                                  ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
                                  ("hand_filename", "face_filename"), options=(("include_face", True),)),
    "openpose_faceonly": AuxAnnotator("OpenposeDetector",
                                      ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
                                      ("hand_filename", "face_filename"),
                                      options=(("include_body", False), ("include_face", True))),
}


def aux_problem() -> str | None:
    """None when controlnet-aux imports; else why not, and how to fix it (a message for people)."""
    try:
        importlib.import_module("controlnet_aux")
    except Exception as exc:  # noqa: BLE001 - torchvision beside a mismatched torch raises RuntimeError
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else "no detail"
        return (f"the controlnet-aux package, which did not import ({type(exc).__name__}: {detail}); "
                f"{AUX_INSTALL_HINT}")
    return None


# ---------------------------------------------------------------------------------------------------
# Reading weight files
# ---------------------------------------------------------------------------------------------------


def load_safely(path: Path) -> Any:
    """What ``path`` holds, read as safetensors or by torch's weights-only unpickler (no code runs).

    Raises :class:`PreprocessorUnavailableError` for a pickle that would run code or an unreadable file.
    """
    import pickle
    import zipfile

    import torch

    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), "")
        why = f" ({refused})" if refused else ""
        raise PreprocessorUnavailableError(
            f"refused to load {path.name}: it is a pickle that would run code or build objects other than "
            f"tensors when loaded{why}; use the file from https://huggingface.co/{ANNOTATOR_REPO}") from exc
    except (OSError, RuntimeError, ValueError, EOFError, zipfile.BadZipFile, TypeError, AttributeError,
            ImportError, KeyError, IndexError) as exc:
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise PreprocessorUnavailableError(f"cannot read annotator weights {path.name}: {detail}") from exc


def read_weights(path: Path) -> dict[str, Any]:
    """The tensors of an annotator file (see :func:`load_safely`), as a flat state dict.

    ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers and ``module.`` prefixes (DataParallel saves)
    are removed.
    """
    import torch

    loaded = load_safely(path)
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict) or not loaded or not all(
            isinstance(value, torch.Tensor) for value in loaded.values()):
        raise PreprocessorUnavailableError(f"{path.name} does not hold a state dict of tensors")
    return {str(key).removeprefix("module."): value for key, value in loaded.items()}


#: The networks by kind (:mod:`sdweb.engine.control.annotator_nets`, :mod:`sdweb.engine.control.openpose`).
BUILDERS: dict[str, Callable[[dict[str, Any], str], Any]] = {
    "hed": build_hed, "lineart": build_lineart, "anime": build_anime, "pidi": build_pidinet,
    "mlsd": build_mlsd, "openpose": build_openpose}


# ---------------------------------------------------------------------------------------------------
# Running them
# ---------------------------------------------------------------------------------------------------


def _padded(rgb: np.ndarray, multiple: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    pad_h, pad_w = -height % multiple, -width % multiple
    return np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge") if pad_h or pad_w else rgb


def _to_tensor(rgb: np.ndarray, device: Any) -> Any:
    import torch

    return torch.from_numpy(np.array(rgb, dtype=np.float32)).to(device).permute(2, 0, 1)[None]


def native_map(kind: str, network: Any, rgb: np.ndarray, resolution: int, *, safe: bool,
               device: Any, threshold_a: float = 0.1, threshold_b: float = 0.1) -> np.ndarray:
    """The uint8 map of ``rgb`` (uint8 HxWx3) by a native annotator network: HxW white lines on black, or
    HxWx3 (openpose's coloured skeletons).
    """
    import torch
    from torch.nn import functional

    picture = at_resolution(rgb, resolution)
    height, width = picture.shape[:2]
    with torch.inference_mode():
        if kind == "anime":
            # Its U-Net halves the size eight times: the extension resizes the picture to multiples of 256
            # (bicubic, no antialiasing, as OpenCV's) and the map back.
            size = (-(-height // 256) * 256, -(-width // 256) * 256)
            pixels = functional.interpolate(_to_tensor(picture, device), size=size, mode="bicubic",
                                            align_corners=False).round().clamp(0, 255)
            out = network(pixels / 127.5 - 1.0)
            out = functional.interpolate(out.float(), size=(height, width), mode="bicubic",
                                         align_corners=False)
            lines = 1.0 - (out[0, 0].cpu().numpy() + 1.0) / 2.0
        elif kind == "openpose":
            return openpose_map(network, picture, device)
        elif kind == "mlsd":
            # M-LSD: RGB and a constant channel of ones, all mapped from 0..255 to -1..1 (the ones too).
            padded = _padded(picture, PAD)
            pixels = _to_tensor(np.concatenate([padded, np.ones_like(padded[..., :1])], axis=2), device)
            segments = mlsd_segments(network(pixels / 127.5 - 1.0), threshold_a, threshold_b)
            return _draw_segments(segments, height, width)
        else:
            pixels = _to_tensor(_padded(picture, PAD), device)
            if kind in ("hed", "pidi"):
                if kind == "pidi":  # PiDiNet was trained on BGR pictures in 0..1
                    pixels = pixels.flip(1) / 255.0
                lines = network(pixels)[0, 0].float().cpu().numpy()[:height, :width]
                if safe:  # the extension's "safe" step: three levels, so faint noise does not become lines
                    lines = np.floor(lines * 3.0) / 2.0
            else:
                lines = 1.0 - network(pixels / 255.0)[0, 0].float().cpu().numpy()[:height, :width]
    return np.clip(np.rint(lines * 255.0), 0, 255).astype(np.uint8)


def _draw_segments(segments: np.ndarray, height: int, width: int) -> np.ndarray:
    """White 1-pixel lines on black (end points truncated to whole pixels, as the extension draws them)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for x0, y0, x1, y1 in segments:
        draw.line([(int(x0), int(y0)), (int(x1), int(y1))], fill=255, width=1)
    return np.asarray(canvas)


class AnnotatorRunner:
    """Runs the model-based annotators of ``folder`` (``models/ControlNet/annotators``) on one device.

    Loaded networks stay on the device (one copy per file) until :meth:`unload`, or with ``park_device``
    (``--medvram`` / ``--lowvram``) wait there and visit the device only to run; a lock makes calls from
    the API's preview threads and the generation worker take turns.
    """

    def __init__(self, folder: Path | None, *, device: Any = "cpu", park_device: Any = None,
                 download: bool | None = None, repo: str = ANNOTATOR_REPO) -> None:
        """``device`` / ``park_device``: a torch device (or None for no parking) or a callable giving one,
        resolved on first use, so building the runner imports no torch. ``download``: fetch missing files
        from the hub (default: unless ``HF_HUB_OFFLINE`` is set).
        """
        self.folder = folder
        self._device = device
        self._park = park_device
        self.download = download
        self.repo = repo
        self._lock = threading.Lock()
        self._loaded: dict[str, Any] = {}

    # -- what can run -----------------------------------------------------------------------------
    def downloads_allowed(self) -> bool:
        if self.download is not None:
            return self.download
        from huggingface_hub import constants

        return not constants.HF_HUB_OFFLINE

    def files_of(self, name: str) -> tuple[str, ...]:
        if name in NATIVE:
            return (NATIVE[name].weights_file,)
        if name in VIA_CONTROLNET_AUX:
            return VIA_CONTROLNET_AUX[name].files
        return ()

    def path_of(self, file: str) -> Path:
        """Where ``file`` (a published file name) goes."""
        return (self.folder or Path("models/ControlNet/annotators")) / file

    def local(self, file: str, *, safetensors: bool = True) -> Path | None:
        """The file on disk (``<name>.safetensors`` first unless ``safetensors`` is off: controlnet-aux
        reads only the published files; then the published ``.pth``), or None.
        """
        published = self.path_of(file)
        candidates = (published.with_suffix(".safetensors"), published) if safetensors else (published,)
        return next((path for path in candidates if path.is_file()), None)

    def problem(self, name: str) -> str | None:
        """Why ``name`` cannot run now (None: it can, possibly after fetching its files). Cheap: looks at
        files and imports, loads nothing.
        """
        if name not in NATIVE and name not in VIA_CONTROLNET_AUX:
            return (f"preprocessor {name!r} runs a model sdweb has no runner for (neither built in nor in "
                    "controlnet-aux); make the map elsewhere and send it with module 'none'")
        native = name in NATIVE
        missing = [file for file in self.files_of(name) if self.local(file, safetensors=native) is None]
        if name in VIA_CONTROLNET_AUX:
            package = aux_problem()
            if package is not None:
                files = ", ".join(str(self.path_of(file)) for file in self.files_of(name))
                return f"preprocessor {name!r} needs the weight file(s) {files} and {package}"
        if missing and not self.downloads_allowed():
            return self._missing_message(name, missing, self._offline_reason())
        return None

    def _offline_reason(self) -> str:
        return "downloads are off" + ("" if self.download is not None else " (HF_HUB_OFFLINE is set)")

    def _missing_message(self, name: str, missing: list[str], why: str) -> str:
        files = ", ".join(str(self.path_of(file)) for file in missing)
        return (f"preprocessor {name!r} needs {files}, which is not there and {why}; download "
                f"{', '.join(missing)} from https://huggingface.co/{self.repo} into {self.path_of('')}")

    # -- running ---------------------------------------------------------------------------------
    def run(self, name: str, rgb: np.ndarray, resolution: int, threshold_a: float,
            threshold_b: float) -> np.ndarray:
        """The map of ``rgb`` (uint8 HxWx3) at ``resolution``: uint8 HxW or HxWx3."""
        problem = self.problem(name)
        if problem is not None:
            raise PreprocessorUnavailableError(problem)
        with self._lock:
            if name in NATIVE:
                spec = NATIVE[name]
                network = self._native(spec)
                device = self.device()
                with self._visiting(network):
                    result = native_map(spec.kind, network, rgb, resolution, safe=spec.safe, device=device,
                                        threshold_a=threshold_a, threshold_b=threshold_b)
                return scribble_from_edges(result) if spec.scribble else result
            return self._run_aux(name, rgb, resolution, threshold_a, threshold_b)

    def device(self) -> Any:
        if callable(self._device):
            self._device = self._device()
        return self._device

    def park_device(self) -> Any:
        """Where loaded networks wait between runs (None: on the device)."""
        if callable(self._park):
            self._park = self._park()
        return self._park

    @contextlib.contextmanager
    def _visiting(self, network: Any) -> Iterator[None]:
        park = self.park_device()
        if park is None:
            yield
            return
        network.to(self.device())
        try:
            yield
        finally:
            network.to(park)

    def unload(self) -> None:
        with self._lock:
            self._loaded.clear()

    def _fetch(self, name: str, file: str) -> Path:
        found = self.local(file, safetensors=name in NATIVE)
        if found is not None:
            return found
        path = self.path_of(file)
        if not self.downloads_allowed():
            raise PreprocessorUnavailableError(self._missing_message(name, [file], self._offline_reason()))
        logger.info("downloading annotator weights %s from %s", file, self.repo)
        try:
            from huggingface_hub import hf_hub_download

            path.parent.mkdir(parents=True, exist_ok=True)
            return Path(hf_hub_download(repo_id=self.repo, filename=file, local_dir=str(path.parent)))
        except Exception as exc:  # noqa: BLE001 - offline, blocked, hub errors: one message for people
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
            raise PreprocessorUnavailableError(self._missing_message(
                name, [file], f"could not be downloaded ({type(exc).__name__}: {detail})")) from exc

    def _native(self, spec: NativeAnnotator) -> Any:
        network = self._loaded.get(spec.weights_file)
        if network is None:
            name = next(key for key, value in NATIVE.items() if value == spec)
            path = self._fetch(name, spec.weights_file)
            network = BUILDERS[spec.kind](read_weights(path), spec.weights_file)
            network.to(self.park_device() or self.device())
            self._loaded[spec.weights_file] = network
            logger.info("annotator %s loaded from %s on %s", spec.kind, path.name, self.device())
        return network

    def _run_aux(self, name: str, rgb: np.ndarray, resolution: int, threshold_a: float,
                 threshold_b: float) -> np.ndarray:
        spec = VIA_CONTROLNET_AUX[name]
        key = f"aux:{spec.detector}"
        detector = self._loaded.get(key)
        if detector is None:
            paths = [self._fetch(name, file) for file in spec.files]
            for path in paths:  # the weights-only reader refuses pickles that run code before aux loads them
                load_safely(path)
            module = importlib.import_module("controlnet_aux")
            keywords = dict(zip(spec.file_keywords, spec.files[1:], strict=True))
            detector = getattr(module, spec.detector).from_pretrained(
                str(paths[0].parent), filename=spec.files[0], **keywords)
            detector.to(self.park_device() or self.device())
            self._loaded[key] = detector
        options = dict(spec.options)
        for keyword, value in zip(spec.thresholds, (threshold_a, threshold_b), strict=True):
            if keyword is not None:
                options[keyword] = value
        picture = at_resolution(rgb, resolution)
        with self._visiting(detector):
            result = detector(picture, detect_resolution=resolution, image_resolution=min(picture.shape[:2]),
                              output_type="np", **options)
        return np.asarray(result, dtype=np.uint8)

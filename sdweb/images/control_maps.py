"""ControlNet preprocessors: a picture in, a control map out. Those without model weights are here.

Pure numpy / scipy / Pillow. Names, sliders and defaults are the sd-webui-controlnet extension's, so
API clients that send ``module: "canny", threshold_a: 100`` get what they expect:

========================  ======================================  ===========================
name                      what it makes                           sliders (threshold_a / _b)
========================  ======================================  ===========================
none                      the picture as it is                    -
invert                    255 - picture (white-background lines)  -
canny                     Canny edges (white on black)            low 100, high 200 (1..255)
threshold                 binary map at a grey level              level 127 (0..255)
binary                    same, Otsu's level when 0               level 0 (0..255)
scribble_xdog             difference-of-Gaussians scribble        threshold 32 (1..64)
lineart_standard          dark strokes as white lines             -
blur_gaussian             blurred picture (tile)                  sigma 9 (0.01..64)
tile_resample             picture downsampled by a rate (tile)    rate 1 (1..8)
t2ia_color_grid           64x64-cell colour grid                  -
shuffle                   content shuffle (random warp)           -
========================  ======================================  ===========================

Each map is made at the processor resolution (the picture's short side scaled to ``processor_res``,
A1111's "Preprocessor resolution"), except where the extension ignores it. Extensions add more through
:class:`PreprocessorRegistry.add` (the ``register_controlnet_preprocessors`` hook). The model-based
annotators (:data:`ANNOTATORS`) are listed here and run by an :class:`AnnotatorRunner` the registry is
given (sdweb.engine.control.annotators: this module stays torch-free).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from scipy import ndimage

logger = logging.getLogger(__name__)

#: ``fn(rgb uint8 HxWx3, resolution, threshold_a, threshold_b) -> uint8 HxWx3 (or HxW)``.
PreprocessorFn = Callable[[np.ndarray, int, float, float], np.ndarray]


@dataclass(frozen=True)
class Slider:
    """One preprocessor setting as the extension's UI and API describe it."""

    label: str
    value: float
    minimum: float
    maximum: float
    step: float = 1.0

    def detail(self) -> dict[str, float | str]:
        return {"name": self.label, "value": self.value, "min": self.minimum, "max": self.maximum,
                "step": self.step}


@dataclass(frozen=True)
class Preprocessor:
    """A preprocessor: its name, what it computes, its sliders, the control types it serves."""

    name: str
    fn: PreprocessorFn
    #: The processor resolution slider; None where the preprocessor ignores it.
    resolution: Slider | None = Slider("Resolution", 512, 64, 2048, 8)
    slider_a: Slider | None = None
    slider_b: Slider | None = None
    tags: tuple[str, ...] = ()
    #: Other names the API accepts for it (the extension's labels).
    aliases: tuple[str, ...] = ()
    #: The model-weight file it needs (model-based annotators); None for the built-in ones.
    weights_file: str | None = None
    #: Why it cannot run now (None: it can); a cheap look at files and packages, run before a request is
    #: queued. None for preprocessors that always run.
    check: Callable[[], str | None] | None = None

    def problem(self) -> str | None:
        """Why this preprocessor cannot run now, or None."""
        return self.check() if self.check is not None else None

    def settings(self, processor_res: float, threshold_a: float,
                 threshold_b: float) -> tuple[int, float, float]:
        """The values to use: a value out of its slider's range (such as the API's -1) is its default."""

        def pick(value: float, slider: Slider | None) -> float:
            if slider is None:
                return float(value)
            return float(value) if slider.minimum <= value <= slider.maximum else float(slider.value)

        resolution = int(pick(processor_res, self.resolution)) if self.resolution else 512
        return resolution, pick(threshold_a, self.slider_a), pick(threshold_b, self.slider_b)

    def run(self, image: Image.Image, processor_res: float = -1, threshold_a: float = -1,
            threshold_b: float = -1) -> Image.Image:
        """The control map of ``image`` (any mode) as an RGB image."""
        resolution, a, b = self.settings(processor_res, threshold_a, threshold_b)
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        result = self.fn(rgb, resolution, a, b)
        if result.ndim == 2:
            result = np.repeat(result[:, :, None], 3, axis=2)
        return Image.fromarray(np.ascontiguousarray(result.astype(np.uint8)), "RGB")

    def detail(self) -> dict[str, object]:
        """The extension's ``module_detail`` entry: ``{"model_free", "sliders": [...]}``."""
        sliders = [slider.detail() for slider in (self.resolution, self.slider_a, self.slider_b)
                   if slider is not None]
        return {"model_free": self.weights_file is None, "sliders": sliders}


# ---------------------------------------------------------------------------------------------------
# The maps
# ---------------------------------------------------------------------------------------------------


def at_resolution(rgb: np.ndarray, resolution: int) -> np.ndarray:
    """``rgb`` with its short side scaled to ``resolution`` (the extension's processor resolution)."""
    height, width = rgb.shape[:2]
    scale = resolution / max(1, min(height, width))
    if abs(scale - 1.0) < 1e-6:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(rgb).resize(size, resample))


def _grey(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _none(rgb: np.ndarray, _res: int, _a: float, _b: float) -> np.ndarray:
    return rgb


def _invert(rgb: np.ndarray, _res: int, _a: float, _b: float) -> np.ndarray:
    return 255 - rgb


def canny_edges(grey: np.ndarray, low: float, high: float) -> np.ndarray:
    """Canny's edges of a float greyscale picture: blur, gradients, thin, double threshold, hysteresis."""
    smooth = ndimage.gaussian_filter(grey, sigma=1.0)
    gx = ndimage.sobel(smooth, axis=1)
    gy = ndimage.sobel(smooth, axis=0)
    # Sobel's 3x3 kernel sums to 4x the central difference; OpenCV's thresholds are on the L1 norm of
    # its own (unnormalised) Sobel output, which this matches.
    magnitude = np.abs(gx) + np.abs(gy)
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    padded = np.pad(magnitude, 1)
    h, w = magnitude.shape
    neighbours = {
        0: ((0, 1), (0, -1)),
        45: ((-1, 1), (1, -1)),
        90: ((1, 0), (-1, 0)),
        135: ((1, 1), (-1, -1)),
    }
    direction = ((angle + 22.5) // 45 % 4 * 45).astype(int)
    keep = np.zeros_like(magnitude, dtype=bool)
    for value, ((dy1, dx1), (dy2, dx2)) in neighbours.items():
        first = padded[1 + dy1:1 + dy1 + h, 1 + dx1:1 + dx1 + w]
        second = padded[1 + dy2:1 + dy2 + h, 1 + dx2:1 + dx2 + w]
        keep |= (direction == value) & (magnitude >= first) & (magnitude >= second)
    thin = np.where(keep, magnitude, 0.0)
    strong = thin >= high
    weak = thin >= low
    labels, count = ndimage.label(weak, structure=np.ones((3, 3)))
    if count == 0:
        return np.zeros_like(grey, dtype=np.uint8)
    connected = np.zeros(count + 1, dtype=bool)
    connected[np.unique(labels[strong])] = True
    connected[0] = False
    return (connected[labels] * 255).astype(np.uint8)


def _canny(rgb: np.ndarray, res: int, low: float, high: float) -> np.ndarray:
    picture = at_resolution(rgb, res)
    return canny_edges(_grey(picture), min(low, high), max(low, high))


def _threshold(rgb: np.ndarray, res: int, level: float, _b: float) -> np.ndarray:
    picture = at_resolution(rgb, res)
    return np.where(_grey(picture) > level, 255, 0).astype(np.uint8)


def _otsu(grey: np.ndarray) -> float:
    histogram, _edges = np.histogram(grey, bins=256, range=(0, 256))
    total = grey.size
    weights = np.cumsum(histogram)
    means = np.cumsum(histogram * np.arange(256))
    between = np.zeros(256)
    for level in range(256):
        w0, w1 = weights[level], total - weights[level]
        if w0 == 0 or w1 == 0:
            continue
        m0 = means[level] / w0
        m1 = (means[-1] - means[level]) / w1
        between[level] = w0 * w1 * (m0 - m1) ** 2
    return float(np.argmax(between))


def _binary(rgb: np.ndarray, res: int, level: float, _b: float) -> np.ndarray:
    grey = _grey(at_resolution(rgb, res))
    cut = _otsu(grey) if level == 0 else level
    return np.where(grey > cut, 0, 255).astype(np.uint8)  # dark strokes become the white lines


def _scribble_xdog(rgb: np.ndarray, res: int, threshold: float, _b: float) -> np.ndarray:
    picture = at_resolution(rgb, res).astype(np.float32)
    fine = ndimage.gaussian_filter(picture, sigma=(0.5, 0.5, 0))
    coarse = ndimage.gaussian_filter(picture, sigma=(5.0, 5.0, 0))
    dog = np.clip(255 - np.min(coarse - fine, axis=2), 0, 255)
    return np.where(2 * (255 - dog) > threshold, 255, 0).astype(np.uint8)


def _blur(rgb: np.ndarray, res: int, sigma: float, _b: float) -> np.ndarray:
    picture = at_resolution(rgb, res).astype(np.float32)
    return np.clip(ndimage.gaussian_filter(picture, sigma=(sigma, sigma, 0)), 0, 255).astype(np.uint8)


def _tile_resample(rgb: np.ndarray, _res: int, rate: float, _b: float) -> np.ndarray:
    if rate <= 1.0:
        return rgb
    height, width = rgb.shape[:2]
    size = (max(1, round(width / rate)), max(1, round(height / rate)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))


def _color_grid(rgb: np.ndarray, res: int, _a: float, _b: float) -> np.ndarray:
    picture = at_resolution(rgb, res)
    height, width = picture.shape[:2]
    small = Image.fromarray(picture).resize((max(1, width // 64), max(1, height // 64)),
                                            Image.Resampling.BICUBIC)
    return np.asarray(small.resize((width, height), Image.Resampling.NEAREST))


def _shuffle(rgb: np.ndarray, res: int, _a: float, _b: float) -> np.ndarray:
    """A random smooth warp of the picture (content shuffle); seeded by the picture, so repeatable."""
    picture = at_resolution(rgb, res)
    height, width = picture.shape[:2]
    seed = int(np.frombuffer(picture.tobytes()[:4096].ljust(8, b"\0"), dtype=np.uint64).sum() % (2**32))
    rng = np.random.default_rng(seed)
    grid = max(2, min(height, width) // 64)

    def field_() -> np.ndarray:
        coarse = rng.uniform(0, 1, size=(grid, grid)).astype(np.float32)
        return np.asarray(Image.fromarray(coarse, "F").resize((width, height), Image.Resampling.BICUBIC))

    ys = np.clip(field_() * height, 0, height - 1).astype(int)
    xs = np.clip(field_() * width, 0, width - 1).astype(int)
    return picture[ys, xs]


def _lineart_standard(rgb: np.ndarray, res: int, _a: float, _b: float) -> np.ndarray:
    """Dark strokes on a light picture as white lines: how much darker each pixel is than its
    neighbourhood (Gaussian, sigma 6), scaled so the median stroke is mid-grey.
    """
    picture = at_resolution(rgb, res).astype(np.float32)
    blurred = ndimage.gaussian_filter(picture, sigma=(6.0, 6.0, 0), mode="mirror")
    darker = np.clip(np.min(blurred - picture, axis=2), 0, 255)
    strokes = darker[darker > 8]
    scale = max(16.0, float(np.median(strokes))) if strokes.size else 16.0
    return np.clip(darker / scale * 127, 0, 255).astype(np.uint8)


#: The four directions (horizontal, vertical, two diagonals) along which a soft edge must be a local
#: maximum to be kept as a scribble line.
_NMS_FOOTPRINTS = (np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0]], dtype=bool),
                   np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0]], dtype=bool),
                   np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=bool),
                   np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=bool))


def scribble_from_edges(edges: np.ndarray) -> np.ndarray:
    """A soft-edge map (uint8 HxW) as the extension's scribble (scribble_hed / scribble_pidinet): the
    edges blurred (sigma 3) and thinned to ridges (a pixel kept where it is the maximum along any of four
    directions) above 127, blurred again (sigma 3) and every pixel above 4 made white.
    """
    soft = ndimage.gaussian_filter(edges.astype(np.float32), sigma=3.0, mode="mirror")
    ridges = np.zeros_like(soft)
    for footprint in _NMS_FOOTPRINTS:
        peak = ndimage.grey_dilation(soft, footprint=footprint, mode="constant", cval=-np.inf) == soft
        ridges[peak] = soft[peak]
    thin = np.where(ridges > 127, 255.0, 0.0).astype(np.float32)
    spread = np.rint(ndimage.gaussian_filter(thin, sigma=3.0, mode="mirror"))
    return np.where(spread > 4, 255, 0).astype(np.uint8)


#: Where lllyasviel's annotator weight files are published (the files below).
ANNOTATOR_REPO = "lllyasviel/Annotators"

#: Model-based annotators (the extension's names): the (main) weight file each needs (lllyasviel/Annotators'
#: names) and its control types. sdweb.engine.control.annotators runs them (see :class:`AnnotatorRunner`).
ANNOTATORS: dict[str, tuple[str, tuple[str, ...]]] = {
    "depth_midas": ("dpt_hybrid-midas-501f0c75.pt", ("Depth",)),
    "depth_leres": ("res101.pth", ("Depth",)),
    "normal_bae": ("scannet.pt", ("NormalMap",)),
    "openpose": ("body_pose_model.pth", ("OpenPose",)),
    "openpose_full": ("body_pose_model.pth", ("OpenPose",)),
    "openpose_hand": ("hand_pose_model.pth", ("OpenPose",)),
    "openpose_face": ("facenet.pth", ("OpenPose",)),
    "openpose_faceonly": ("facenet.pth", ("OpenPose",)),
    "lineart_realistic": ("sk_model.pth", ("Lineart",)),
    "lineart_coarse": ("sk_model2.pth", ("Lineart",)),
    "lineart_anime": ("netG.pth", ("Lineart",)),
    "softedge_hed": ("ControlNetHED.pth", ("SoftEdge",)),
    "softedge_hedsafe": ("ControlNetHED.pth", ("SoftEdge",)),
    "softedge_pidinet": ("table5_pidinet.pth", ("SoftEdge",)),
    "softedge_pidisafe": ("table5_pidinet.pth", ("SoftEdge",)),
    "scribble_hed": ("ControlNetHED.pth", ("Scribble",)),
    "scribble_pidinet": ("table5_pidinet.pth", ("Scribble",)),
    "mlsd": ("mlsd_large_512_fp32.pth", ("MLSD",)),
    "seg_ufade20k": ("upernet_global_small.pth", ("Segmentation",)),
}


#: The extension's older names of the model-based annotators (its ``preprocessor_aliases``, and
#: ``fake_scribble`` from before them), which API clients still send.
ANNOTATOR_ALIASES: dict[str, tuple[str, ...]] = {
    "softedge_hed": ("hed",),
    "softedge_hedsafe": ("hed_safe",),
    "softedge_pidinet": ("pidinet",),
    "softedge_pidisafe": ("pidinet_safe",),
    "scribble_pidinet": ("pidinet_scribble",),
    "scribble_hed": ("fake_scribble",),
    "lineart_realistic": ("lineart",),
    "depth_midas": ("depth",),
    "seg_ufade20k": ("segmentation",),
}

#: The extension's sliders of the model-based annotators that have any (threshold_a, threshold_b).
ANNOTATOR_SLIDERS: dict[str, tuple[Slider, Slider]] = {
    "mlsd": (Slider("MLSD Value Threshold", 0.1, 0.01, 2.0, 0.01),
             Slider("MLSD Distance Threshold", 0.1, 0.01, 20.0, 0.01)),
    "depth_leres": (Slider("Remove Near %", 0, 0, 100, 0.1), Slider("Remove Background %", 0, 0, 100, 0.1)),
}


class AnnotatorRunner(Protocol):
    """Runs model-based annotators (sdweb.engine.control.annotators.AnnotatorRunner; tests pass others)."""

    def problem(self, name: str) -> str | None:
        """Why ``name`` cannot run now (a missing file offline, a missing package), or None."""

    def run(self, name: str, rgb: np.ndarray, resolution: int, threshold_a: float,
            threshold_b: float) -> np.ndarray:
        """The map of ``rgb`` (uint8 HxWx3); raises PreprocessorUnavailableError when it cannot run."""

    def unload(self) -> None:
        """Drop the loaded networks (``POST /sdapi/v1/unload-checkpoint``)."""


#: Preprocessors whose map is the picture with the mask's pixels at -1 (the extension's inpaint ones).
INPAINT_PREPROCESSORS = ("inpaint_global_harmonious", "inpaint_only", "inpaint")


class PreprocessorUnavailableError(ValueError):
    """A model-based preprocessor that cannot run here; the message names the file it needs."""


def annotator_problem(name: str, weights_file: str, annotators_dir: Path | None) -> str:
    """Why a model-based annotator cannot run where no runner is set up (its file, and what runs it)."""
    where = annotators_dir / weights_file if annotators_dir is not None else Path(weights_file)
    found = "found" if where.is_file() else "not found"
    return (f"preprocessor {name!r} runs a model: it needs {where} ({found}) and the engine's annotator "
            "runner, which this app was started without; make the map elsewhere and send it with module "
            "'none', or use a built-in preprocessor (canny, scribble_xdog, threshold, invert ...)")


def _annotator(name: str, weights_file: str, tags: tuple[str, ...], annotators_dir: Path | None,
               runner: AnnotatorRunner | None) -> Preprocessor:
    slider_a, slider_b = ANNOTATOR_SLIDERS.get(name, (None, None))
    aliases = ANNOTATOR_ALIASES.get(name, ())
    if runner is None:
        def check() -> str | None:
            return annotator_problem(name, weights_file, annotators_dir)

        def fn(_rgb: np.ndarray, _res: int, _a: float, _b: float) -> np.ndarray:
            raise PreprocessorUnavailableError(annotator_problem(name, weights_file, annotators_dir))

        return Preprocessor(name, fn, slider_a=slider_a, slider_b=slider_b, tags=tags, aliases=aliases,
                            weights_file=weights_file, check=check)

    def run(rgb: np.ndarray, res: int, a: float, b: float) -> np.ndarray:
        return runner.run(name, rgb, res, a, b)

    return Preprocessor(name, run, slider_a=slider_a, slider_b=slider_b, tags=tags, aliases=aliases,
                        weights_file=weights_file, check=lambda: runner.problem(name))


def builtin_preprocessors(annotators_dir: Path | None = None,
                          runner: AnnotatorRunner | None = None) -> list[Preprocessor]:
    """The preprocessors sdweb ships: those without model weights, then the model-based annotators
    (``annotators_dir``: ``models/ControlNet/annotators``; ``runner`` runs them; without one they are
    listed and refused with a message naming their file).
    """
    return [
        Preprocessor("none", _none, resolution=None, tags=("All",)),
        Preprocessor("invert", _invert, resolution=None, tags=("Canny", "Lineart", "Scribble", "MLSD"),
                     aliases=("invert (from white bg & black line)",)),
        Preprocessor("canny", _canny, slider_a=Slider("Low Threshold", 100, 1, 255),
                     slider_b=Slider("High Threshold", 200, 1, 255), tags=("Canny",)),
        Preprocessor("threshold", _threshold, slider_a=Slider("Binarization Threshold", 127, 0, 255),
                     tags=("Scribble",)),
        Preprocessor("binary", _binary, slider_a=Slider("Binary threshold", 0, 0, 255), tags=("Scribble",)),
        Preprocessor("scribble_xdog", _scribble_xdog, slider_a=Slider("XDoG Threshold", 32, 1, 64),
                     tags=("Scribble",)),
        Preprocessor("lineart_standard", _lineart_standard, tags=("Lineart",),
                     aliases=("lineart_standard (from white bg & black line)",)),
        Preprocessor("blur_gaussian", _blur, slider_a=Slider("Sigma", 9.0, 0.01, 64.0, 0.01), tags=("Tile",)),
        Preprocessor("tile_resample", _tile_resample, resolution=None,
                     slider_a=Slider("Down Sampling Rate", 1.0, 1.0, 8.0, 0.01), tags=("Tile",)),
        Preprocessor("t2ia_color_grid", _color_grid, tags=("T2I-Adapter",), aliases=("color",)),
        Preprocessor("shuffle", _shuffle, resolution=Slider("Resolution", 512, 64, 2048, 8),
                     tags=("Shuffle",)),
        # IP-Adapter units: the picture goes to the CLIP vision encoder as it is (the encoder is chosen by
        # what the adapter needs, whichever of these names the unit uses).
        *(Preprocessor(name, _none, resolution=None, tags=("IP-Adapter",))
          for name in ("ip-adapter-auto", "ip-adapter_clip_h", "ip-adapter_clip_g", "ip-adapter_clip_sd15")),
        # Inpaint units (control_v11p_sd15_inpaint): the picture with its masked pixels at -1; the engine
        # applies the unit's mask (or img2img's) when it fits the map to the image.
        *(Preprocessor(name, _none, resolution=None, tags=("Inpaint",)) for name in INPAINT_PREPROCESSORS),
        *(_annotator(name, file, tags, annotators_dir, runner) for name, (file, tags) in ANNOTATORS.items()),
    ]


def from_spec(spec: Any) -> Preprocessor:
    """A :class:`Preprocessor` from an extension's ``sdweb.plugin_api.ControlPreprocessorSpec``."""
    if not isinstance(getattr(spec, "name", None), str) or not spec.name.strip() or not callable(spec.run):
        raise TypeError(f"not a ControlPreprocessorSpec with a name and a run function: {spec!r}")
    run = spec.run

    def fn(rgb: np.ndarray, resolution: int, a: float, b: float) -> np.ndarray:
        result = run(Image.fromarray(rgb), resolution, a, b)
        if not isinstance(result, Image.Image):
            raise TypeError(f"preprocessor {spec.name!r} returned {type(result).__name__}, not a PIL image")
        return np.asarray(result.convert("RGB"))

    def slider(values: Any) -> Slider | None:
        return Slider(str(values[0]), *map(float, values[1:4])) if values else None

    resolution = Slider("Resolution", *map(float, spec.resolution)) if spec.resolution else None
    return Preprocessor(spec.name.strip(), fn, resolution=resolution, slider_a=slider(spec.threshold_a),
                        slider_b=slider(spec.threshold_b), tags=tuple(spec.tags), aliases=tuple(spec.aliases))


class PreprocessorNotFoundError(LookupError):
    """A unit names a preprocessor nobody registered."""


class PreprocessorRegistry:
    """Preprocessors by name (and alias, any case); built-ins first, then those extensions add."""

    def __init__(self, preprocessors: Iterable[Preprocessor] = (), *,
                 runner: AnnotatorRunner | None = None) -> None:
        self._items: dict[str, Preprocessor] = {}
        self._aliases: dict[str, str] = {}
        #: What runs the model-based annotators (None: they are refused).
        self.runner = runner
        for item in preprocessors:
            self.add(item)

    @classmethod
    def with_builtins(cls, annotators_dir: Path | None = None,
                      runner: AnnotatorRunner | None = None) -> PreprocessorRegistry:
        return cls(builtin_preprocessors(annotators_dir, runner), runner=runner)

    def unload_models(self) -> None:
        """Drop the annotator networks loaded so far (they load again on next use)."""
        if self.runner is not None:
            self.runner.unload()

    def add(self, item: Preprocessor) -> None:
        key = item.name.lower()
        if key in self._items or key in self._aliases:
            raise ValueError(f"preprocessor {item.name!r} is already registered")
        self._items[key] = item
        for alias in item.aliases:
            self._aliases.setdefault(alias.lower(), key)

    def names(self) -> list[str]:
        return [item.name for item in self._items.values()]

    def items(self) -> list[Preprocessor]:
        return list(self._items.values())

    def find(self, name: str) -> Preprocessor:
        key = (name or "none").strip().lower()
        found = self._items.get(key) or self._items.get(self._aliases.get(key, ""))
        if found is None:
            known = ", ".join(self.names())
            raise PreprocessorNotFoundError(f"preprocessor {name!r} not found; known: {known}")
        return found

    def tags(self) -> list[str]:
        seen: dict[str, None] = {"All": None}
        for item in self._items.values():
            for tag in item.tags:
                seen.setdefault(tag, None)
        return list(seen)

    def for_tag(self, tag: str) -> list[Preprocessor]:
        if tag == "All":
            return self.items()
        return [item for item in self._items.values() if tag in item.tags or item.name == "none"]

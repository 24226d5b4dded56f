"""Model upscalers (the ESRGAN family) from ``models/ESRGAN``: listing, safe loading, tiled runs.

Owns three things:

* :class:`UpscalerModelLibrary` lists the ``.pth`` / ``.safetensors`` files of the ESRGAN folder
  (recursive; the upscaler's name is the file stem, as A1111 lists them: "4x-UltraSharp"). Listing
  touches no torch and no file contents, so the service layer and the API list models without
  starting the engine, and without the optional ``upscalers`` extra installed.
* :func:`tiled_upscale` runs any image-to-image network tile by tile: tiles of at most ``tile`` input
  pixels a side overlapping by ``overlap``, cross-faded linearly where they overlap so no seam shows.
  The network only ever sees one tile, so its activations (which grow with the input: an ESRGAN
  holds dozens of feature maps of the input's size) stay bounded whatever the image size; the result
  is gathered on the CPU.
* :class:`ModelUpscalers` loads a model of the library through spandrel (architecture detected from
  the state-dict keys), keeps the last one loaded, and upscales PIL images with it on the engine's
  device and dtype, A1111's way: model passes until the image reaches the asked size (at most
  :data:`MAX_PASSES`), then Lanczos to that size exactly. Under ``--medvram``/``--lowvram`` (a
  ``park_device``) the model waits in RAM and is on the device only while it upscales, as the offloaded
  diffusion model's components are.

Weights are loaded here, never by spandrel's file loader: ``.safetensors`` through safetensors,
``.pth`` only through ``torch.load(weights_only=True)``, so a file that wants to run code when
unpickled is refused. spandrel gets the plain state dict.

spandrel is optional (the ``upscalers`` extra): it imports torchvision, and PyPI's torchvision does
not import beside the CPU torch 2.13.0 build of the core install. Without it the models are still
listed; using one raises :class:`UpscalerUnavailableError` saying how to install it. torch and
spandrel are imported inside the functions that need them.
"""

from __future__ import annotations

import importlib
import logging
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from sdweb.images.upscale import ModelUpscalerError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: File suffixes listed as upscaler models.
MODEL_SUFFIXES = (".pth", ".safetensors")
#: Tile side (input pixels) and overlap: A1111's ESRGAN defaults are 192 and 8; a wider overlap hides
#: the seams of networks with a large receptive field at little cost.
DEFAULT_TILE = 192
DEFAULT_OVERLAP = 16
#: Model passes per upscale (a 4x model reaches 8x in two), as A1111.
MAX_PASSES = 3
#: Largest image one model pass may make (its float32 result is gathered in RAM: 16 bytes a pixel).
MAX_PASS_PIXELS = 8192 * 8192
#: What to tell people who use a model upscaler without the extra.
INSTALL_HINT = (
    "install the optional upscalers extra: pip install 'sdweb[upscalers]' (spandrel, torchvision). "
    "torchvision must match torch: PyPI's torchvision does not import beside the CPU torch 2.13.0 build, "
    "so the extra brings torch 2.14.1 with torchvision 0.29.1 (on x86_64 a CUDA build, about 5.5 GB)"
)

#: Weight of the pixels at a tile's edge (not 0: every output pixel needs some weight).
_MIN_WEIGHT = 1e-4
_SCALE_IN_NAME = re.compile(r"(?:^|[^0-9a-z])(?:x([1-8])|([1-8])x)(?![0-9])", re.IGNORECASE)


class UpscalerModelError(ModelUpscalerError):
    """A model upscaler that cannot be used: unreadable or unsafe file, unknown architecture."""


class UpscalerUnavailableError(UpscalerModelError):
    """spandrel (the optional ``upscalers`` extra) is not importable; the message says how to fix it."""


@dataclass(frozen=True)
class UpscalerModelFile:
    """One model file of the ESRGAN folder."""

    name: str  # the file stem: what /sdapi/v1/upscalers lists and requests name
    path: Path

    @property
    def scale(self) -> int:
        """The scale the name announces ("4x-UltraSharp", "RealESRGAN_x2plus"); 4 when it says none.

        A guess for listing only: the loaded model's own scale is what upscaling uses.
        """
        found = _SCALE_IN_NAME.search(self.name)
        return int(found.group(1) or found.group(2)) if found else 4


class UpscalerModelLibrary:
    """The model files under one folder (``models/ESRGAN``), rescanned on :meth:`refresh`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._files: dict[str, UpscalerModelFile] = {}
        self.refresh()

    def refresh(self) -> None:
        """Rescan the folder (a missing folder lists nothing)."""
        found: dict[str, UpscalerModelFile] = {}
        if self.folder.is_dir():
            paths = sorted((path for path in self.folder.rglob("*")
                            if path.suffix.lower() in MODEL_SUFFIXES and path.is_file()),
                           key=lambda path: (path.stem.lower(), str(path)))
            for path in paths:
                if path.stem in found:
                    logger.warning("upscaler model %s has the same name as %s; the second is not listed",
                                   path, found[path.stem].path)
                    continue
                found[path.stem] = UpscalerModelFile(name=path.stem, path=path)
        with self._lock:
            self._files = found

    def files(self) -> list[UpscalerModelFile]:
        """The models, sorted by name (case-insensitive)."""
        with self._lock:
            return list(self._files.values())

    def find(self, name: str) -> UpscalerModelFile | None:
        """The model called ``name`` (its file stem, case-insensitive, or its file name), or None."""
        wanted = name.strip().lower()
        for item in self.files():
            if wanted in (item.name.lower(), item.path.name.lower()):
                return item
        return None


def spandrel_problem() -> str | None:
    """None when spandrel imports; else why not, and how to fix it (a message for people)."""
    try:
        importlib.import_module("spandrel")
    except Exception as exc:  # noqa: BLE001 - torchvision beside a mismatched torch raises RuntimeError
        return (f"model upscalers need spandrel, which did not import ({type(exc).__name__}: {exc}); "
                f"{INSTALL_HINT}")
    return None


# ---------------------------------------------------------------------------------------------
# Tiling
# ---------------------------------------------------------------------------------------------


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where the tiles along one side of ``length`` pixels start.

    Every tile is ``tile`` long (or the whole side when shorter), neighbours overlap by at least
    ``overlap``, the first starts at 0 and the last ends at the edge.
    """
    if tile <= 0 or length <= tile:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be at least 0 and less than the tile ({tile}), got {overlap}")
    count = math.ceil((length - overlap) / (tile - overlap))
    # Spread evenly, so that the overlaps are alike rather than one sliver tile at the end.
    return [round(index * (length - tile) / (count - 1)) for index in range(count)]


def tiled_upscale(
    pixels: torch.Tensor,
    network: Callable[[torch.Tensor], torch.Tensor],
    *,
    scale: int,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``network`` applied to ``pixels`` (``(N, C, H, W)``, values 0..1) tile by tile.

    Each tile (at most ``tile`` x ``tile`` input pixels; ``tile`` 0 = the whole image at once) goes to
    ``device`` as ``dtype``; its result comes back to the CPU as float32 and is added with a weight that
    cross-fades over the middle half of the overlap with each neighbour (a tile's outer pixels, which
    saw padding, count next to nothing), then divided by the summed weights. A
    network that works pixel by pixel (or whose receptive field fits in the overlap) gives the same
    result tiled and whole. Returns ``(N, C_out, H * scale, W * scale)`` float32 on the CPU.

    Raises:
        UpscalerModelError: the network's output is not ``scale`` times its input.
    """
    import torch

    batch, _, height, width = pixels.shape
    ys = tile_starts(height, tile, overlap)
    xs = tile_starts(width, tile, overlap)
    tile_h = height if len(ys) == 1 else tile
    tile_w = width if len(xs) == 1 else tile
    result: torch.Tensor | None = None
    weights = torch.zeros((1, 1, height * scale, width * scale), dtype=torch.float32)
    for row, top in enumerate(ys):
        for column, left in enumerate(xs):
            piece = pixels[:, :, top:top + tile_h, left:left + tile_w]
            with torch.inference_mode():
                out = network(piece.to(device=device or piece.device, dtype=dtype or piece.dtype))
            expected = (batch, piece.shape[2] * scale, piece.shape[3] * scale)
            if (out.shape[0], out.shape[2], out.shape[3]) != expected:
                raise UpscalerModelError(f"the model turned a {piece.shape[3]}x{piece.shape[2]} tile into "
                                         f"{out.shape[3]}x{out.shape[2]}, not {scale}x larger")
            if result is None:
                result = torch.zeros((batch, out.shape[1], height * scale, width * scale),
                                     dtype=torch.float32)
            # The ramps span the overlap actually shared with each neighbour, in output pixels.
            ramp_y = _ramp(tile_h * scale,
                           (ys[row - 1] + tile_h - top) * scale if row > 0 else 0,
                           (top + tile_h - ys[row + 1]) * scale if row + 1 < len(ys) else 0)
            ramp_x = _ramp(tile_w * scale,
                           (xs[column - 1] + tile_w - left) * scale if column > 0 else 0,
                           (left + tile_w - xs[column + 1]) * scale if column + 1 < len(xs) else 0)
            weight = ramp_y[:, None] * ramp_x[None, :]
            box = (slice(None), slice(None), slice(top * scale, (top + tile_h) * scale),
                   slice(left * scale, (left + tile_w) * scale))
            result[box] += out.to(device="cpu", dtype=torch.float32) * weight
            weights[box] += weight
    assert result is not None  # at least one tile ran
    return result / weights


def _ramp(length: int, start_overlap: int, end_overlap: int) -> torch.Tensor:
    # Across an overlap of n pixels the incoming tile's weight is ~0 for the first quarter (a tile's edge
    # pixels saw padding instead of their neighbours), rises linearly over the middle half and is 1 for
    # the last quarter; the outgoing tile's falls the same way, so the two always sum to 1. The floor
    # keeps every weight above 0, so the division in tiled_upscale is defined everywhere.
    import torch

    ramp = torch.ones(length, dtype=torch.float32)
    positions = torch.arange(length, dtype=torch.float32) + 0.5
    if start_overlap > 0:
        ramp = torch.minimum(ramp, (positions - start_overlap / 4) / (start_overlap / 2))
    if end_overlap > 0:
        ramp = torch.minimum(ramp, (length - positions - end_overlap / 4) / (end_overlap / 2))
    return ramp.clamp(min=_MIN_WEIGHT)


# ---------------------------------------------------------------------------------------------
# Loading and running models
# ---------------------------------------------------------------------------------------------


def read_state_dict(path: Path) -> dict[str, Any]:
    """The tensors of a model file, without running any code the file may carry.

    Raises:
        UpscalerModelError: unreadable file, or a pickle that needs more than tensors to load.
    """
    import pickle

    import torch

    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is a page long; the line naming the refused global is the useful part.
        refused = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), "")
        why = f" ({refused})" if refused else ""
        raise UpscalerModelError(f"refused to load {path.name}: it is a pickle that would run code or build "
                                 f"objects other than tensors when loaded{why}. Use a .safetensors "
                                 "version of the model, or one saved as a plain state dict") from exc
    except (OSError, RuntimeError, ValueError) as exc:
        raise UpscalerModelError(f"cannot read upscaler model {path.name}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise UpscalerModelError(f"{path.name} holds a {type(loaded).__name__}, not a state dict")
    return loaded


def load_spandrel_model(path: Path) -> Any:
    """The spandrel ``ImageModelDescriptor`` for an upscaler file, on the CPU, in eval mode.

    Raises:
        UpscalerUnavailableError: spandrel is not importable (the message says how to install it).
        UpscalerModelError: unsafe or unreadable file, or not an image-to-image model spandrel knows.
    """
    problem = spandrel_problem()
    if problem is not None:
        raise UpscalerUnavailableError(problem)
    import spandrel

    state = read_state_dict(path)
    try:
        # canonicalize: unwraps {"params_ema": ...}-style containers and "module." prefixes.
        descriptor = spandrel.ModelLoader().load_from_state_dict(spandrel.canonicalize_state_dict(state))
    except spandrel.UnsupportedModelError as exc:
        raise UpscalerModelError(f"{path.name}: spandrel does not recognise this model's "
                                 "architecture") from exc
    except (KeyError, RuntimeError, ValueError) as exc:
        raise UpscalerModelError(f"{path.name}: cannot build the model ({exc})") from exc
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UpscalerModelError(f"{path.name} is a {descriptor.architecture.name} model that needs more "
                                 "than an image (e.g. an inpainting mask); it cannot upscale")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise UpscalerModelError(f"{path.name} takes {descriptor.input_channels} and gives "
                                 f"{descriptor.output_channels} channels; upscalers need RGB in and out")
    return descriptor.eval()


class ModelUpscalers:
    """Upscales images with the models of a library on one device; keeps the last model loaded.

    Used from the GPU worker (one job at a time); a lock still guards the loaded model, so a stray
    call from another thread waits rather than racing a model switch.
    """

    def __init__(
        self,
        library: UpscalerModelLibrary,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        tile: int = DEFAULT_TILE,
        overlap: int = DEFAULT_OVERLAP,
        tiling: Callable[[], tuple[int, int]] | None = None,
        loader: Callable[[Path], Any] = load_spandrel_model,
        park_device: torch.device | str | None = None,
        memory: Any = None,
    ) -> None:
        """Args:
        library: where the model names come from.
        device, dtype: where and in what precision models run (the engine's runtime); the dtype falls
            back to float32 for models that do not support it.
        tile, overlap: :func:`tiled_upscale`'s, in input pixels (``tile`` 0: no tiling).
        tiling: ``() -> (tile, overlap)``, asked at each upscale (the settings); overrides the two above.
        loader: path -> spandrel ``ImageModelDescriptor`` (tests pass their own).
        park_device: where the model waits between upscales (the CPU under offload); None: it stays on
            ``device``.
        memory: ``sdweb.engine.accelerator.DeviceMemory``, emptied when the model leaves the device.
        """
        self.library = library
        self._device = device
        self._dtype = dtype
        self.tile = tile
        self.overlap = overlap
        self._tiling = tiling
        self._loader = loader
        self._park_device = park_device
        self._memory = memory
        self._lock = threading.Lock()
        self._loaded: tuple[Path, float, Any] | None = None

    def names(self) -> list[str]:
        """The library's model names (hires fix checks ``hr_upscaler`` against them)."""
        return [item.name for item in self.library.files()]

    def upscale(self, image: Image.Image, name: str, size: tuple[int, int]) -> Image.Image:
        """``image`` brought to ``size`` (width, height) with model ``name``.

        Model passes until both sides reach ``size`` (at most :data:`MAX_PASSES`), then Lanczos to
        ``size`` exactly. Alpha is scaled with Lanczos (the networks work on RGB).

        Raises:
            UpscalerUnavailableError / UpscalerModelError: see :func:`load_spandrel_model`; an unknown
                name or a pass too large also raise UpscalerModelError.
        """
        item = self.library.find(name)
        if item is None:
            raise UpscalerModelError(f"upscaler model {name!r} not found in {self.library.folder}")
        alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
        current = image.convert("RGB")
        with self._lock:
            model = self._model(item)
            if self._park_device is not None:
                model.to(self._device)
            try:
                for _ in range(MAX_PASSES):
                    if current.width >= size[0] and current.height >= size[1]:
                        break
                    current = self._pass(model, current, item.name)
            finally:
                if self._park_device is not None:
                    model.to(self._park_device)
                    if self._memory is not None:
                        self._memory.after_job()
        if current.size != size:
            current = current.resize(size, Image.Resampling.LANCZOS)
        if alpha is not None:
            current.putalpha(alpha.resize(size, Image.Resampling.LANCZOS))
        return current

    def unload(self) -> None:
        """Drop the loaded model (frees its memory; the engine then empties the device's cache)."""
        with self._lock:
            self._loaded = None

    def _model(self, item: UpscalerModelFile) -> Any:
        stamp = item.path.stat().st_mtime if item.path.exists() else 0.0
        if self._loaded is not None and self._loaded[:2] == (item.path, stamp):
            return self._loaded[2]
        self._loaded = None  # the previous model goes before the next one loads
        logger.info("loading upscaler model %s", item.path)
        model = self._loader(item.path)
        model = model.to(self._park_device or self._device, self._run_dtype(model))
        self._loaded = (item.path, stamp, model)
        return model

    def _pass(self, model: Any, image: Image.Image, name: str) -> Image.Image:
        import numpy as np
        import torch

        scale = int(model.scale)
        out_w, out_h = image.width * scale, image.height * scale
        if out_w * out_h > MAX_PASS_PIXELS:
            raise UpscalerModelError(f"{name} would make a {out_w}x{out_h} image in one pass; at most "
                                     f"{MAX_PASS_PIXELS // 1_000_000} megapixels are allowed: upscale a "
                                     "smaller image or use a model with a smaller scale")
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        # spandrel's own tiling advice: models that tile internally (or break when tiled) run whole.
        internal = getattr(getattr(model, "tiling", None), "name", "") == "INTERNAL"
        tile, overlap = self._tiling() if self._tiling is not None else (self.tile, self.overlap)
        if tile > 0 and not 0 <= overlap < tile:
            raise UpscalerModelError(f"the upscaler tile overlap ({overlap}) must be less than the tile size "
                                     f"({tile}): change ESRGAN_tile_overlap or ESRGAN_tile in Settings")
        result = tiled_upscale(pixels, model, scale=scale, tile=0 if internal else tile,
                               overlap=overlap, device=self._device, dtype=self._run_dtype(model))
        array = (result[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        return Image.fromarray(array, "RGB")

    def _run_dtype(self, model: Any) -> torch.dtype:
        import torch

        dtype = self._dtype or torch.float32
        if dtype == torch.float16 and not getattr(model, "supports_half", False):
            return torch.float32
        if dtype == torch.bfloat16 and not getattr(model, "supports_bfloat16", False):
            return torch.float32
        return dtype

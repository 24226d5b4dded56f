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


# ---------------------------------------------------------------------------------------------------
# The networks (built from the shapes in the file)
# ---------------------------------------------------------------------------------------------------


def _shape(state: dict[str, Any], key: str, file: str) -> tuple[int, ...]:
    if key not in state:
        raise PreprocessorUnavailableError(f"{file} is not the expected annotator model: it has no {key}")
    return tuple(state[key].shape)


def build_hed(state: dict[str, Any], file: str = "ControlNetHED.pth") -> Any:
    """ControlNet 1.1's HED: five VGG-like stages (max-pooled between), each with a 1x1 side output.

    The map is the sigmoid of the mean of the side outputs, each scaled back to the input size. The
    input is RGB in 0..255 less a learned per-channel offset (``norm``).
    """
    import torch
    from torch import nn
    from torch.nn import functional

    class Stage(nn.Module):
        def __init__(self, widths: list[tuple[int, int]]) -> None:
            super().__init__()
            self.convs = nn.ModuleList(nn.Conv2d(cin, cout, 3, padding=1) for cin, cout in widths)
            self.projection = nn.Conv2d(widths[-1][1], 1, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            for conv in self.convs:
                x = functional.relu(conv(x))
            return x, self.projection(x)

    class Hed(nn.Module):
        def __init__(self, stages: list[list[tuple[int, int]]]) -> None:
            super().__init__()
            self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
            self.stages = len(stages)
            for index, widths in enumerate(stages, 1):
                self.add_module(f"block{index}", Stage(widths))

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            h = pixels - self.norm
            sides = []
            for index in range(1, self.stages + 1):
                if index > 1:
                    h = functional.max_pool2d(h, 2, 2)
                h, side = getattr(self, f"block{index}")(h)
                sides.append(functional.interpolate(side, size=pixels.shape[-2:], mode="bilinear",
                                                    align_corners=False))
            return torch.sigmoid(torch.cat(sides, dim=1).mean(dim=1, keepdim=True))

    stages = []
    index = 1
    while f"block{index}.projection.weight" in state:
        widths = []
        conv = 0
        while f"block{index}.convs.{conv}.weight" in state:
            cout, cin = _shape(state, f"block{index}.convs.{conv}.weight", file)[:2]
            widths.append((cin, cout))
            conv += 1
        if not widths:
            raise PreprocessorUnavailableError(f"{file}: block{index} has no convolutions")
        stages.append(widths)
        index += 1
    if not stages or _shape(state, "norm", file) != (1, 3, 1, 1):
        raise PreprocessorUnavailableError(f"{file} is not a ControlNet HED model (no block1 / norm)")
    return _filled(Hed(stages), state, file)


def build_lineart(state: dict[str, Any], file: str = "sk_model.pth") -> Any:
    """The "informative drawings" generator: 7x7 conv, two stride-2 convs, residual blocks, two
    transposed convs back up, 7x7 conv to one channel and a sigmoid (instance norm without weights,
    reflection padding). Input RGB in 0..1; output 1 on paper, 0 on lines.
    """
    import torch
    from torch import nn

    def norm(width: int) -> nn.Module:
        return nn.InstanceNorm2d(width)

    class Residual(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.conv_block = nn.Sequential(
                nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3), norm(width), nn.ReLU(),
                nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3), norm(width))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv_block(x)

    class Lineart(nn.Module):
        def __init__(self, base: int, blocks: int, inputs: int, outputs: int) -> None:
            super().__init__()
            self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(inputs, base, 7), norm(base),
                                        nn.ReLU())
            self.model1 = nn.Sequential(
                nn.Conv2d(base, base * 2, 3, stride=2, padding=1), norm(base * 2), nn.ReLU(),
                nn.Conv2d(base * 2, base * 4, 3, stride=2, padding=1), norm(base * 4), nn.ReLU())
            self.model2 = nn.Sequential(*(Residual(base * 4) for _ in range(blocks)))
            self.model3 = nn.Sequential(
                nn.ConvTranspose2d(base * 4, base * 2, 3, stride=2, padding=1, output_padding=1),
                norm(base * 2), nn.ReLU(),
                nn.ConvTranspose2d(base * 2, base, 3, stride=2, padding=1, output_padding=1), norm(base),
                nn.ReLU())
            self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(base, outputs, 7), nn.Sigmoid())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))

    base, inputs = _shape(state, "model0.1.weight", file)[:2]
    outputs = _shape(state, "model4.1.weight", file)[0]
    blocks = len({key.split(".")[1] for key in state if key.startswith("model2.")})
    return _filled(Lineart(base, blocks, inputs, outputs), state, file)


def build_anime(state: dict[str, Any], file: str = "netG.pth") -> Any:
    """pix2pix's U-Net generator (lineart_anime): each level a stride-2 4x4 conv down and a transposed
    conv up, the level's input concatenated to its output (skip), instance norm without weights,
    LeakyReLU(0.2) down / ReLU up, tanh out. Input RGB in -1..1; output 1 on paper, -1 on lines.

    The levels (and their widths) are read from the file: level 0's keys are ``model.model.<i>``, each
    deeper level sits at index 1 (under the outermost level) or 3 (under a middle one) of its parent.
    """
    import torch
    from torch import nn

    def norm(width: int) -> nn.Module:
        return nn.InstanceNorm2d(width, affine=False, track_running_stats=False)

    class Level(nn.Module):
        def __init__(self, prefix: str, depth: int) -> None:
            super().__init__()
            self.outermost = depth == 0
            down_key = f"{prefix}0.weight" if self.outermost else f"{prefix}1.weight"
            inner, outer_in = _shape(state, down_key, file)[:2]
            inner_prefix = f"{prefix}1.model." if self.outermost else f"{prefix}3.model."
            innermost = not any(key.startswith(inner_prefix) for key in state)
            up_key = f"{prefix}{3 if self.outermost else 5}.weight" if not innermost else f"{prefix}3.weight"
            up_in, outer = _shape(state, up_key, file)[:2]
            down = nn.Conv2d(outer_in, inner, 4, stride=2, padding=1)
            up = nn.ConvTranspose2d(up_in, outer, 4, stride=2, padding=1)
            if self.outermost:
                layers = [down, Level(inner_prefix, depth + 1), nn.ReLU(), up, nn.Tanh()]
            elif innermost:
                layers = [nn.LeakyReLU(0.2), down, nn.ReLU(), up, norm(outer)]
            else:
                layers = [nn.LeakyReLU(0.2), down, norm(inner), Level(inner_prefix, depth + 1), nn.ReLU(), up,
                          norm(outer)]
            self.model = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.model(x)
            return y if self.outermost else torch.cat([x, y], dim=1)

    class Anime(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = Level("model.model.", 0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

    return _filled(Anime(), state, file)


#: PiDiNet's pixel-difference operation per layer (init block, then the 15 blocks): table5_pidinet.pth is
#: the "carv4" network, central / angular / radial differences and a plain conv, four times over.
PIDI_OPS = ("cd", "ad", "rd", "cv") * 4
#: Angular difference: each 3x3 tap minus its clockwise neighbour (flattened 3x3 indices).
_CLOCKWISE = [3, 0, 1, 6, 4, 2, 7, 8, 5]
#: Radial difference: the outer ring of a 5x5 kernel gets weights 1-8 of the flattened 3x3 kernel, the
#: inner ring their negatives (flattened 5x5 indices; the release pairs direction k with weight k + 1).
_RD_OUTER = [0, 2, 4, 10, 14, 20, 22, 24]
_RD_INNER = [6, 7, 8, 11, 13, 16, 17, 18]


def pixel_difference_kernel(op: str, weight: Any) -> Any:
    """The plain convolution kernel equal to a PiDiNet pixel-difference convolution of ``weight`` (3x3):
    ``cd`` takes the centre times the kernel's sum off, ``ad`` differences clockwise neighbours, ``rd``
    spreads it to a 5x5 ring pair; ``cv`` is plain.
    """
    if op == "cv":
        return weight
    flat = weight.flatten(2)
    if op == "cd":
        converted = weight.clone()
        converted[:, :, 1, 1] -= weight.sum(dim=(2, 3))
        return converted
    if op == "ad":
        return (flat - flat[:, :, _CLOCKWISE]).reshape(weight.shape)
    ring = weight.new_zeros(weight.shape[0], weight.shape[1], 25)
    ring[:, :, _RD_OUTER] = flat[:, :, 1:]
    ring[:, :, _RD_INNER] = -flat[:, :, 1:]
    return ring.reshape(weight.shape[0], weight.shape[1], 5, 5)


def build_pidinet(state: dict[str, Any], file: str = "table5_pidinet.pth") -> Any:
    """PiDiNet (softedge_pidinet): an init conv and four stages of depthwise pixel-difference blocks (the
    2nd-4th stages start with a max-pool and a 1x1 shortcut), each stage's features through a dilation
    module (1x1, then 3x3 convs dilated 5, 7, 9, 11, summed) and a spatial attention (1x1 to 4, 3x3 to 1,
    sigmoid gate), reduced to one channel, scaled up and fused by a 1x1 classifier; sigmoid out. Input
    BGR in 0..1. The pixel-difference convolutions become plain ones when loaded
    (:func:`pixel_difference_kernel`).
    """
    import torch
    from torch import nn
    from torch.nn import functional

    stages = ((1, 3), (2, 4), (3, 4), (4, 4))  # (stage, blocks)
    names = [f"block{stage}_{index}" for stage, count in stages for index in range(1, count + 1)]

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, kernel: int, downsample: bool) -> None:
            super().__init__()
            self.downsample = downsample
            if downsample:
                self.shortcut = nn.Conv2d(cin, cout, 1)
            self.conv1 = nn.Conv2d(cin, cin, kernel, padding=kernel // 2, groups=cin, bias=False)
            self.conv2 = nn.Conv2d(cin, cout, 1, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.downsample:
                x = functional.max_pool2d(x, 2, 2)
            y = self.conv2(functional.relu(self.conv1(x)))
            return y + (self.shortcut(x) if self.downsample else x)

    class Dilation(nn.Module):
        def __init__(self, cin: int, width: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, width, 1)
            for index, rate in enumerate((5, 7, 9, 11), 1):
                self.add_module(f"conv2_{index}", nn.Conv2d(width, width, 3, dilation=rate, padding=rate,
                                                            bias=False))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.conv1(functional.relu(x))
            return sum(getattr(self, f"conv2_{index}")(x) for index in range(1, 5))

    class Attention(nn.Module):
        def __init__(self, width: int, mid: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(width, mid, 1)
            self.conv2 = nn.Conv2d(mid, 1, 3, padding=1, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(self.conv2(self.conv1(functional.relu(x))))

    class Reduce(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(width, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    class PiDiNet(nn.Module):
        def __init__(self, base: int, dilation: int | None, attention: int | None) -> None:
            super().__init__()
            self.init_block = nn.Conv2d(3, base, 5 if PIDI_OPS[0] == "rd" else 3,
                                        padding=2 if PIDI_OPS[0] == "rd" else 1, bias=False)
            widths = []
            cin = base
            for layer, name in enumerate(names, 1):
                stage, index = (int(part) for part in name.removeprefix("block").split("_"))
                cout = base * min(2 ** (stage - 1), 4)
                kernel = 5 if PIDI_OPS[layer] == "rd" else 3
                self.add_module(name, Block(cin, cout, kernel, downsample=stage > 1 and index == 1))
                cin = cout
                if index == dict(stages)[stage]:
                    widths.append(cout)
            fused = [dilation or width for width in widths]
            self.dilations = nn.ModuleList(Dilation(w, dilation) for w in widths) if dilation else None
            self.attentions = nn.ModuleList(Attention(w, attention) for w in fused) if attention else None
            self.conv_reduces = nn.ModuleList(Reduce(w) for w in fused)
            self.classifier = nn.Conv2d(4, 1, 1)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            x = self.init_block(pixels)
            edges = []
            for stage, count in stages:
                for index in range(1, count + 1):
                    x = getattr(self, f"block{stage}_{index}")(x)
                y = x
                if self.dilations is not None:
                    y = self.dilations[stage - 1](y)
                if self.attentions is not None:
                    y = self.attentions[stage - 1](y)
                edges.append(functional.interpolate(self.conv_reduces[stage - 1](y), size=pixels.shape[-2:],
                                                    mode="bilinear", align_corners=False))
            return torch.sigmoid(self.classifier(torch.cat(edges, dim=1)))

    base = _shape(state, "init_block.weight", file)[0]
    dilation = state["dilations.0.conv1.weight"].shape[0] if "dilations.0.conv1.weight" in state else None
    attention = state["attentions.0.conv1.weight"].shape[0] if "attentions.0.conv1.weight" in state else None
    converted = dict(state)
    for layer, name in enumerate(["init_block", *(f"{block}.conv1" for block in names)]):
        key = f"{name}.weight"
        if _shape(state, key, file)[-2:] != (3, 3):
            raise PreprocessorUnavailableError(f"{file}: {key} is not a 3x3 pixel-difference kernel")
        converted[key] = pixel_difference_kernel(PIDI_OPS[layer], state[key].float())
    return _filled(PiDiNet(base, dilation, attention), converted, file)


#: M-LSD large's MobileNetV2 backbone: (expansion, width, blocks, first stride) after a stride-2 3x3 conv
#: to 32 from the picture plus a constant fourth channel; features 1, 3, 6, 10 and 13 feed the decoder.
MLSD_BACKBONE = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
MLSD_TAPS = (1, 3, 6, 10, 13)


def build_mlsd(state: dict[str, Any], file: str = "mlsd_large_512_fp32.pth") -> Any:
    """M-LSD large (mlsd): a MobileNetV2 trunk (ReLU6, batch norm; stride-2 convs pad right/bottom only)
    and a decoder that merges the trunk's taps coarse to fine (1x1 convs, bilinear x2 with aligned
    corners, residual 3x3 blocks), ending in a dilated 3x3, a 3x3 and a 1x1 conv to 16 maps at half the
    input size, of which the last 9 are kept: a line-centre score and the start/end offsets.
    """
    import torch
    from torch import nn
    from torch.nn import functional

    class ConvNorm(nn.Sequential):
        def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
            padding = 0 if stride == 2 else (kernel - 1) // 2
            super().__init__(nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU6())
            self.stride = stride

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.stride == 2:
                x = functional.pad(x, (0, 1, 0, 1))
            return super().forward(x)

    class Inverted(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
            super().__init__()
            hidden = cin * expansion
            layers: list[nn.Module] = [ConvNorm(cin, hidden, 1)] if expansion != 1 else []
            layers += [ConvNorm(hidden, hidden, stride=stride, groups=hidden),
                       nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.conv = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv(x) if self.residual else self.conv(x)

    class Trunk(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = [ConvNorm(4, 32, stride=2)]
            cin = 32
            for expansion, width, count, stride in MLSD_BACKBONE:
                for index in range(count):
                    layers.append(Inverted(cin, width, stride if index == 0 else 1, expansion))
                    cin = width
            self.features = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            taps = []
            for index, layer in enumerate(self.features):
                x = layer(x)
                if index in MLSD_TAPS:
                    taps.append(x)
            return taps

    def conv_norm_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Sequential:
        padding = dilation * (kernel // 2)
        return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation),
                             nn.BatchNorm2d(cout), nn.ReLU())

    class Merge(nn.Module):  # the fine tap and the coarse features, each to 64 channels, side by side
        def __init__(self, fine: int, coarse: int, upscale: bool) -> None:
            super().__init__()
            self.conv1 = conv_norm_relu(coarse, 64, 1)
            self.conv2 = conv_norm_relu(fine, 64, 1)
            self.upscale = upscale

        def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
            coarse = self.conv1(coarse)
            if self.upscale:
                coarse = functional.interpolate(coarse, scale_factor=2.0, mode="bilinear", align_corners=True)
            return torch.cat((self.conv2(fine), coarse), dim=1)

    class Refine(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = conv_norm_relu(128, 128, 3)
            self.conv2 = conv_norm_relu(128, 64, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv2(self.conv1(x) + x)

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = conv_norm_relu(64, 64, 3, dilation=5)
            self.conv2 = conv_norm_relu(64, 64, 3)
            self.conv3 = nn.Conv2d(64, 16, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv3(self.conv2(self.conv1(x)))

    class Mlsd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = Trunk()
            self.block15 = Merge(64, 96, upscale=False)
            self.block16 = Refine()
            self.block17 = Merge(32, 64, upscale=True)
            self.block18 = Refine()
            self.block19 = Merge(24, 64, upscale=True)
            self.block20 = Refine()
            self.block21 = Merge(16, 64, upscale=True)
            self.block22 = Refine()
            self.block23 = Head()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            c1, c2, c3, c4, c5 = self.backbone(x)
            x = self.block16(self.block15(c4, c5))
            x = self.block18(self.block17(c3, x))
            x = self.block20(self.block19(c2, x))
            x = self.block22(self.block21(c1, x))
            return self.block23(x)[:, 7:]

    return _filled(Mlsd(), state, file)


def mlsd_segments(maps: Any, score_threshold: float, distance_threshold: float,
                  candidates: int = 200) -> np.ndarray:
    """Line segments ``(x0, y0, x1, y1)`` in input pixels from M-LSD's maps (1 x 9 x H/2 x W/2).

    The centre scores (sigmoid) are kept where they are their 3x3 neighbourhood's maximum; of the best
    ``candidates``, those scoring above ``score_threshold`` whose segment is longer than
    ``distance_threshold`` (in map pixels) become segments: centre + start / end offsets, times 2.
    """
    import torch
    from torch.nn import functional

    heat = torch.sigmoid(maps[:, 0])
    peaks = heat * (functional.max_pool2d(heat, 3, stride=1, padding=1) == heat).float()
    width = heat.shape[-1]
    scores, indices = torch.topk(peaks.reshape(-1), min(candidates, peaks.numel()))
    offsets = maps[0, 1:5].permute(1, 2, 0).float().cpu().numpy()
    segments = []
    for score, index in zip(scores.tolist(), indices.tolist(), strict=True):
        y, x = divmod(index, width)
        dx0, dy0, dx1, dy1 = offsets[y, x]
        if score > score_threshold and float(np.hypot(dx0 - dx1, dy0 - dy1)) > distance_threshold:
            segments.append((x + dx0, y + dy0, x + dx1, y + dy1))
    return 2.0 * np.asarray(segments, dtype=np.float64).reshape(-1, 4)


def _filled(network: Any, state: dict[str, Any], file: str) -> Any:
    """``network`` with the file's tensors (every key and shape must match), in eval mode, float32."""
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise PreprocessorUnavailableError(
            f"{file} does not fit the annotator's layout: {' '.join(first[:3])[:400]}") from exc
    return network.float().eval()


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

"""sdweb's own annotator networks, built from the weight file's tensor shapes: ControlNet 1.1's HED,
the "informative drawings" lineart generators, the anime lineart U-Net, PiDiNet and M-LSD large (CMU's
body pose network is :mod:`sdweb.engine.control.openpose`).

Each ``build_*`` takes the file's state dict and name, reads the layer widths and depths from the shapes
(a file of another layout is refused with :class:`PreprocessorUnavailableError` naming the key or the
mismatch) and returns the network in eval mode, float32, with the file's weights.
:mod:`sdweb.engine.control.annotators` finds the files, runs the networks and makes the maps.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sdweb.images.control_maps import PreprocessorUnavailableError


def shape_of(state: dict[str, Any], key: str, file: str) -> tuple[int, ...]:
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
            cout, cin = shape_of(state, f"block{index}.convs.{conv}.weight", file)[:2]
            widths.append((cin, cout))
            conv += 1
        if not widths:
            raise PreprocessorUnavailableError(f"{file}: block{index} has no convolutions")
        stages.append(widths)
        index += 1
    if not stages or shape_of(state, "norm", file) != (1, 3, 1, 1):
        raise PreprocessorUnavailableError(f"{file} is not a ControlNet HED model (no block1 / norm)")
    return filled(Hed(stages), state, file)


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

    base, inputs = shape_of(state, "model0.1.weight", file)[:2]
    outputs = shape_of(state, "model4.1.weight", file)[0]
    blocks = len({key.split(".")[1] for key in state if key.startswith("model2.")})
    return filled(Lineart(base, blocks, inputs, outputs), state, file)


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
            inner, outer_in = shape_of(state, down_key, file)[:2]
            inner_prefix = f"{prefix}1.model." if self.outermost else f"{prefix}3.model."
            innermost = not any(key.startswith(inner_prefix) for key in state)
            up_key = f"{prefix}{3 if self.outermost else 5}.weight" if not innermost else f"{prefix}3.weight"
            up_in, outer = shape_of(state, up_key, file)[:2]
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

    return filled(Anime(), state, file)


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

    base = shape_of(state, "init_block.weight", file)[0]
    dilation = state["dilations.0.conv1.weight"].shape[0] if "dilations.0.conv1.weight" in state else None
    attention = state["attentions.0.conv1.weight"].shape[0] if "attentions.0.conv1.weight" in state else None
    converted = dict(state)
    for layer, name in enumerate(["init_block", *(f"{block}.conv1" for block in names)]):
        key = f"{name}.weight"
        if shape_of(state, key, file)[-2:] != (3, 3):
            raise PreprocessorUnavailableError(f"{file}: {key} is not a 3x3 pixel-difference kernel")
        converted[key] = pixel_difference_kernel(PIDI_OPS[layer], state[key].float())
    return filled(PiDiNet(base, dilation, attention), converted, file)


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

    return filled(Mlsd(), state, file)


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


def filled(network: Any, state: dict[str, Any], file: str) -> Any:
    """``network`` with the file's tensors (every key and shape must match), in eval mode, float32."""
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise PreprocessorUnavailableError(
            f"{file} does not fit the annotator's layout: {' '.join(first[:3])[:400]}") from exc
    return network.float().eval()

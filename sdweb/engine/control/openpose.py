"""OpenPose body keypoints (the sd-webui-controlnet ``openpose`` preprocessor), from ``body_pose_model.pth``.

The network is CMU's body model (the 18-keypoint COCO layout): a VGG-style trunk to 128 channels at 1/8
of the picture, then six stages, each with a part-affinity branch (38 maps: x and y of 19 limbs) and a
heatmap branch (19 maps: 18 parts and the background); later stages also see the trunk's features. The
file's keys are the layers' own names (``conv1_1.weight``, ``Mconv7_stage6_L2.bias`` ...).

From its maps (the last stage's, scaled back to the picture) people are found the published way:

1. part peaks: each heatmap smoothed (Gaussian, sigma 3); a peak is at least its four neighbours and
   above 0.1;
2. limbs: for each pair of parts a limb joins, every pair of candidate peaks is scored along ten points of
   the segment (the affinity field's projection on the segment's direction); a pair counts when more than
   8 of the 10 points score above 0.05 and the mean, less a penalty for segments longer than half the
   picture's height, is positive; the best-scoring pairs win, each peak used once per limb;
3. people: limbs are chained into people through shared peaks (two partial people with no part in common
   are merged); people with fewer than 4 parts or a mean score under 0.4 are dropped.

The map is drawn as the extension draws it, on black: each limb an ellipse 4 pixels wide in its colour at
60 %, each part a disc of radius 4 in its colour.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sdweb.images.control_maps import PreprocessorUnavailableError

#: The trunk: (name, in, out, kernel) convolutions, "pool" for a 2x2 max-pool (the released widths; the
#: network is built with the file's).
TRUNK = (("conv1_1", 3, 64, 3), ("conv1_2", 64, 64, 3), "pool",
         ("conv2_1", 64, 128, 3), ("conv2_2", 128, 128, 3), "pool",
         ("conv3_1", 128, 256, 3), ("conv3_2", 256, 256, 3), ("conv3_3", 256, 256, 3),
         ("conv3_4", 256, 256, 3), "pool",
         ("conv4_1", 256, 512, 3), ("conv4_2", 512, 512, 3), ("conv4_3_CPM", 512, 256, 3),
         ("conv4_4_CPM", 256, 128, 3))
PAF_MAPS = 38
HEAT_MAPS = 19
STAGES = 6


def _stage_layers(stage: int, branch: int) -> list[tuple[str, int, int, int]]:
    """The convolutions of stage ``stage`` (1-6), branch 1 (affinity fields) or 2 (heatmaps)."""
    out = PAF_MAPS if branch == 1 else HEAT_MAPS
    if stage == 1:
        return [(f"conv5_{index}_CPM_L{branch}", 128, 128, 3) for index in (1, 2, 3)] + [
            (f"conv5_4_CPM_L{branch}", 128, 512, 1), (f"conv5_5_CPM_L{branch}", 512, out, 1)]
    first = 128 + PAF_MAPS + HEAT_MAPS
    return [(f"Mconv1_stage{stage}_L{branch}", first, 128, 7),
            *((f"Mconv{index}_stage{stage}_L{branch}", 128, 128, 7) for index in (2, 3, 4, 5)),
            (f"Mconv6_stage{stage}_L{branch}", 128, 128, 1), (f"Mconv7_stage{stage}_L{branch}", 128, out, 1)]


def _no_relu(name: str) -> bool:
    """Each stage's last convolution is linear, except the last heatmap one (Mconv7_stage6_L2): the
    published model's list of linear layers names the stage-6 affinity layer twice and leaves that one
    out, so its heatmaps pass a ReLU; the released weights were used that way.
    """
    return name.startswith("conv5_5_CPM") or (name.startswith("Mconv7_") and name != "Mconv7_stage6_L2")


def build_openpose(state: dict[str, Any], file: str = "body_pose_model.pth") -> Any:
    """CMU's body pose network with the file's weights (see the module docstring)."""
    import torch
    from torch import nn
    from torch.nn import functional

    from sdweb.engine.control.annotator_nets import filled, shape_of

    class BodyPose(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            names = [layer[0] for layer in TRUNK if layer != "pool"] + [
                layer[0] for stage in range(1, STAGES + 1) for branch in (1, 2)
                for layer in _stage_layers(stage, branch)]
            for name in names:  # the widths and kernels are the file's (the tables above: the release's)
                cout, cin, kernel = shape_of(state, f"{name}.weight", file)[:3]
                self.add_module(name, nn.Conv2d(cin, cout, kernel, padding=kernel // 2))

        def _run(self, layers: list[tuple[str, int, int, int]], x: torch.Tensor) -> torch.Tensor:
            for name, *_ in layers:
                x = getattr(self, name)(x)
                if not _no_relu(name):
                    x = functional.relu(x)
            return x

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            for layer in TRUNK:
                if layer == "pool":
                    x = functional.max_pool2d(x, 2, 2)
                else:
                    x = functional.relu(getattr(self, layer[0])(x))
            features = x
            for stage in range(1, STAGES + 1):
                pafs = self._run(_stage_layers(stage, 1), x)
                heat = self._run(_stage_layers(stage, 2), x)
                x = torch.cat([pafs, heat, features], dim=1)
            return pafs, heat

    if "conv1_1.weight" not in state or "Mconv7_stage6_L2.weight" not in state:
        raise PreprocessorUnavailableError(
            f"{file} is not an OpenPose body model (no conv1_1 / Mconv7_stage6_L2)")
    return filled(BodyPose(), state, file)


# ---------------------------------------------------------------------------------------------------
# From maps to people
# ---------------------------------------------------------------------------------------------------

#: Parts (1-based, COCO order: nose, neck, right shoulder, elbow, wrist, left shoulder, elbow, wrist, right
#: hip, knee, ankle, left hip, knee, ankle, right eye, left eye, right ear, left ear) each limb joins...
LIMBS = ((2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13),
         (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (3, 17), (6, 18))
#: ... and the pair of affinity-field maps (x, y) of each limb.
LIMB_FIELDS = ((12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7),
               (8, 9), (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27))
#: Part and limb colours (RGB), as the extension draws them.
COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
PARTS = 18
PEAK_THRESHOLD = 0.1
FIELD_THRESHOLD = 0.05
SAMPLES = 10


def find_peaks(heatmaps: np.ndarray) -> list[list[tuple[float, float, float, int]]]:
    """Per part, its peaks ``(x, y, score, id)`` (ids count across parts) in HxWx19 heatmaps."""
    from scipy import ndimage

    peaks: list[list[tuple[float, float, float, int]]] = []
    next_id = 0
    for part in range(PARTS):
        raw = heatmaps[:, :, part]
        smooth = ndimage.gaussian_filter(raw, sigma=3)
        padded = np.pad(smooth, 1)  # zeros outside, as the shifted copies it is compared with
        centre = padded[1:-1, 1:-1]
        is_peak = ((centre >= padded[:-2, 1:-1]) & (centre >= padded[2:, 1:-1])
                   & (centre >= padded[1:-1, :-2]) & (centre >= padded[1:-1, 2:]) & (centre > PEAK_THRESHOLD))
        ys, xs = np.nonzero(is_peak)  # row by row
        found = []
        for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
            found.append((float(x), float(y), float(raw[y, x]), next_id))
            next_id += 1
        peaks.append(found)
    return peaks


def connect_limbs(peaks: list[list[tuple[float, float, float, int]]], fields: np.ndarray,
                  height: int) -> list[list[tuple[int, int, float]]]:
    """Per limb, the chosen ``(id_a, id_b, score)`` pairs of peaks (see the module docstring, step 2)."""
    limbs: list[list[tuple[int, int, float]]] = []
    for (part_a, part_b), (field_x, field_y) in zip(LIMBS, LIMB_FIELDS, strict=True):
        candidates_a, candidates_b = peaks[part_a - 1], peaks[part_b - 1]
        scored = []
        for i, a in enumerate(candidates_a):
            for j, b in enumerate(candidates_b):
                dx, dy = b[0] - a[0], b[1] - a[1]
                length = max(0.001, math.hypot(dx, dy))
                xs = np.rint(np.linspace(a[0], b[0], SAMPLES)).astype(int)
                ys = np.rint(np.linspace(a[1], b[1], SAMPLES)).astype(int)
                along = fields[ys, xs, field_x] * (dx / length) + fields[ys, xs, field_y] * (dy / length)
                score = float(along.mean()) + min(0.5 * height / length - 1.0, 0.0)
                if np.count_nonzero(along > FIELD_THRESHOLD) > 0.8 * SAMPLES and score > 0:
                    scored.append((score, i, j))
        chosen: list[tuple[int, int, float]] = []
        used_a: set[int] = set()
        used_b: set[int] = set()
        for score, i, j in sorted(scored, key=lambda item: item[0], reverse=True):
            if i in used_a or j in used_b:
                continue
            chosen.append((candidates_a[i][3], candidates_b[j][3], score))
            used_a.add(i)
            used_b.add(j)
            if len(chosen) >= min(len(candidates_a), len(candidates_b)):
                break
        limbs.append(chosen)
    return limbs


def group_people(peaks: list[list[tuple[float, float, float, int]]],
                 limbs: list[list[tuple[int, int, float]]]) -> list[list[int]]:
    """People as 18 peak ids each (-1: part not found), from the chosen limbs (module docstring, step 3)."""
    score_of = {peak[3]: peak[2] for part in peaks for peak in part}
    people: list[dict[str, Any]] = []  # {"parts": [id or -1] * 18, "score": float, "count": int}
    for limb, ((part_a, part_b), chosen) in enumerate(zip(LIMBS, limbs, strict=True)):
        a, b = part_a - 1, part_b - 1
        for id_a, id_b, score in chosen:
            holders = [person for person in people
                       if person["parts"][a] == id_a or person["parts"][b] == id_b][:2]
            if len(holders) == 2:
                first, second = holders
                pairs = list(zip(first["parts"], second["parts"], strict=True))
                if not any(p >= 0 and q >= 0 for p, q in pairs):  # two pieces of one person: join them
                    first["parts"] = [p if p >= 0 else q for p, q in pairs]
                    first["score"] += second["score"] + score
                    first["count"] += second["count"]
                    people.remove(second)
                else:  # they share a part: the limb's end goes to the first
                    first["parts"][b] = id_b
                    first["count"] += 1
                    first["score"] += score_of[id_b] + score
            elif len(holders) == 1:
                person = holders[0]
                if person["parts"][b] != id_b:
                    person["parts"][b] = id_b
                    person["count"] += 1
                    person["score"] += score_of[id_b] + score
            elif limb < 17:  # the last two limbs (ear-shoulder) only join parts of known people
                parts = [-1] * PARTS
                parts[a], parts[b] = id_a, id_b
                people.append({"parts": parts, "score": score_of[id_a] + score_of[id_b] + score, "count": 2})
    return [person["parts"] for person in people
            if person["count"] >= 4 and person["score"] / person["count"] >= 0.4]


def draw_people(people: list[list[int]], peaks: list[list[tuple[float, float, float, int]]], height: int,
                width: int) -> np.ndarray:
    """The extension's OpenPose map of ``people`` (RGB, black background)."""
    from PIL import Image, ImageDraw

    where = {peak[3]: (peak[0], peak[1]) for part in peaks for peak in part}
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for parts in people:
        for (part_a, part_b), colour in zip(LIMBS[:17], COLOURS, strict=False):
            id_a, id_b = parts[part_a - 1], parts[part_b - 1]
            if id_a < 0 or id_b < 0:
                continue
            (xa, ya), (xb, yb) = where[id_a], where[id_b]
            draw.polygon(_ellipse(((xa + xb) / 2, (ya + yb) / 2), math.hypot(xa - xb, ya - yb) / 2,
                                  math.degrees(math.atan2(ya - yb, xa - xb))),
                         fill=tuple(int(channel * 0.6) for channel in colour))
        for part, colour in enumerate(COLOURS):
            if parts[part] >= 0:
                x, y = (int(value) for value in where[parts[part]])
                draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
    return np.asarray(canvas)


def _ellipse(centre: tuple[float, float], half_length: float, angle: float) -> list[tuple[int, int]]:
    """An ellipse 4 pixels across (half axes: ``int(half_length)`` and 4) at ``angle`` degrees, as
    points at whole-degree steps rounded to pixels (the outline the extension fills).
    """
    cx, cy = int(centre[0]), int(centre[1])
    radians = math.radians(int(angle))
    cos, sin = math.cos(radians), math.sin(radians)
    axis = int(half_length)
    points = []
    for step in range(0, 361):
        t = math.radians(step)
        x, y = axis * math.cos(t), 4 * math.sin(t)
        point = (round(cx + x * cos - y * sin), round(cy + x * sin + y * cos))
        if not points or points[-1] != point:
            points.append(point)
    return points if len(points) > 2 else [*points, *points][:3]


def openpose_map(network: Any, rgb: np.ndarray, device: Any) -> np.ndarray:
    """The OpenPose map (RGB) of ``rgb`` (uint8 HxWx3, already at the processor resolution)."""
    people, peaks = detect_people(network, rgb, device)
    return draw_people(people, peaks, rgb.shape[0], rgb.shape[1])


def detect_people(network: Any, rgb: np.ndarray,
                  device: Any) -> tuple[list[list[int]], list[list[tuple[float, float, float, int]]]]:
    """The people in ``rgb`` (18 peak ids each) and the peaks: the network's maps, scaled back."""
    import torch
    from torch.nn import functional

    height, width = rgb.shape[:2]
    # The published preprocessing: BGR, scaled so the height is 0.5 x 368, padded right / down to a
    # multiple of 8 with grey 128, then x / 256 - 0.5.
    scale = 0.5 * 368 / height
    size = (max(1, int(height * scale)), max(1, int(width * scale)))
    with torch.inference_mode():
        bgr = np.array(rgb[:, :, ::-1], dtype=np.float32)
        pixels = torch.from_numpy(bgr).permute(2, 0, 1)[None].to(device)
        small = functional.interpolate(pixels, size=size, mode="bicubic", align_corners=False,
                                       antialias=scale < 1).round().clamp(0, 255)
        pad_h, pad_w = -size[0] % 8, -size[1] % 8
        small = functional.pad(small, (0, pad_w, 0, pad_h), value=128.0)
        pafs, heat = network(small / 256.0 - 0.5)
        maps = torch.cat([heat, pafs], dim=1).float()
        maps = functional.interpolate(maps, scale_factor=8, mode="bicubic", align_corners=False)
        maps = maps[:, :, :size[0], :size[1]]
        maps = functional.interpolate(maps, size=(height, width), mode="bicubic", align_corners=False,
                                      antialias=height < size[0])
        maps = maps[0].permute(1, 2, 0).cpu().numpy().astype(np.float64)
    heatmaps, fields = maps[:, :, :HEAT_MAPS], maps[:, :, HEAT_MAPS:]
    peaks = find_peaks(heatmaps)
    return group_people(peaks, connect_limbs(peaks, fields, height)), peaks

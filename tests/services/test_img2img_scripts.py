"""Loopback and SD upscale through the script service (real wiring, fake engine whose img2img blends the
init image towards a seed colour by the denoising strength)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image

from sdweb.params import Img2ImgParams
from sdweb.scripting import ScriptError
from sdweb.services.scripts.loopback import strength_at
from tests.services.scripts_support import checkpoint_file, scripted

__all__ = ["checkpoint_file", "scripted"]  # fixtures


def params(**changes: Any) -> Img2ImgParams:
    values: dict[str, Any] = {"prompt": "a house", "steps": 4, "width": 64, "height": 64, "seed": 20,
                              "denoising_strength": 0.5}
    values.update(changes)
    return Img2ImgParams(**values)


def gradient(width: int, height: int) -> Image.Image:
    xs = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    ys = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([xs, ys, 255 - xs], -1).astype(np.uint8), "RGB")


# -- loopback ------------------------------------------------------------------------------------

def test_loopback_feeds_each_output_back_with_a_moving_strength(scripted) -> None:
    services, engine = scripted
    init = Image.new("RGB", (64, 64), (255, 255, 255))
    result = services.scripts.run("Loopback", [3, 0.1, "Linear", "None"], params(), init_images=[init])
    assert [round(call.denoising_strength, 6) for call in engine.calls] == [0.5, 0.3, 0.1]
    assert [call.seed for call in engine.calls] == [20, 21, 22]
    # Loop 2 started from loop 1's output, loop 3 from loop 2's.
    assert engine.init_images[0][0].getpixel((0, 0)) == (255, 255, 255)
    assert engine.init_images[1][0].tobytes() == result.images[1].tobytes()
    assert engine.init_images[2][0].tobytes() == result.images[2].tobytes()
    grid, *loops = result.images
    assert len(loops) == 3 and grid.size == (3 * 64, 64)
    assert "Final denoising strength: 0.1" in result.infotexts[1]
    assert "Denoising curve: Linear" in result.infotexts[1]
    assert len(result.paths) == 3


def test_loopback_batch_count_keeps_each_runs_last_image(scripted) -> None:
    services, engine = scripted
    init = Image.new("RGB", (64, 64), (0, 0, 0))
    result = services.scripts.run("loopback", [2, 0.5, "Lazy", "None"], params(n_iter=2), init_images=[init])
    assert len(engine.calls) == 4 and len(result.images) == 1 + 2
    assert engine.init_images[2][0].getpixel((0, 0)) == (0, 0, 0)  # the second run starts from the original


def test_denoising_curves() -> None:
    assert strength_at(0, 5, 0.8, 0.2, "Linear") == pytest.approx(0.8)
    assert strength_at(4, 5, 0.8, 0.2, "Aggressive") == pytest.approx(0.2)
    assert strength_at(2, 5, 0.8, 0.2, "Aggressive") < strength_at(2, 5, 0.8, 0.2, "Linear")
    assert strength_at(2, 5, 0.8, 0.2, "Lazy") > strength_at(2, 5, 0.8, 0.2, "Linear")


def test_loopback_refuses_captioning(scripted) -> None:
    services, _ = scripted
    with pytest.raises(ScriptError, match="CLIP captioning is not available"):
        services.scripts.submit("Loopback", [2, 0.5, "Linear", "CLIP"], params(),
                                init_images=[Image.new("RGB", (64, 64))])


# -- SD upscale ----------------------------------------------------------------------------------

def test_sd_upscale_redraws_overlapping_tiles_and_blends_them(scripted) -> None:
    services, engine = scripted
    source = gradient(64, 64)
    # Denoising 0: the fake engine gives each tile back unchanged, so the result is the upscaled picture.
    result = services.scripts.run("SD upscale", [None, 32, "Lanczos", 2.0], params(denoising_strength=0.0,
                                                                                     batch_size=2),
                                  init_images=[source])
    assert [(call.width, call.height, call.batch_size) for call in engine.calls] == [(64, 64, 2)] * 4 + [
        (64, 64, 1)]
    assert [call.seed for call in engine.calls] == [20, 21, 22, 23, 24]
    assert sum(len(images) for images in engine.init_images) == 9  # 3x3 tiles of 64 over 128, overlap 32
    picture = result.images[0]
    assert picture.size == (128, 128) and len(result.images) == 1
    expected = np.asarray(source.resize((128, 128), Image.Resampling.LANCZOS), np.int16)
    assert np.abs(np.asarray(picture, np.int16) - expected).max() <= 2
    assert len(result.paths) == 1
    with Image.open(result.paths[0]) as saved:
        info = saved.info["parameters"]
        assert saved.size == (128, 128)
    assert "SD upscale overlap: 32" in info and "SD upscale upscaler: Lanczos" in info


def test_sd_upscale_tiles_are_redrawn(scripted) -> None:
    services, engine = scripted
    source = gradient(64, 64)
    result = services.scripts.run("SD upscale", [None, 0, 2, 2.0], params(denoising_strength=1.0),
                                  init_images=[source])
    # No overlap: 4 tiles, each the flat colour of its own seed, in their quarters.
    assert len(engine.calls) == 4
    picture = np.asarray(result.images[0])
    quarters = [picture[0, 0], picture[0, 127], picture[127, 0], picture[127, 127]]
    assert len({tuple(colour) for colour in quarters}) == 4
    assert (picture[:64, :64] == picture[0, 0]).all()


@pytest.mark.parametrize(("args", "words"), [
    ([None, 64, "Bicubic", 2.0], "upscaler_index): one of None, Lanczos, Nearest"),
    ([None, 64, 9, 2.0], "number 9 is out of range"),
    ([None, 64, 1, 5.0], "scale_factor): at most 4"),
    ([None, 64, 1, 2.0, "extra"], "takes at most 4 values"),
    ([None, 64, 1, 1.0], "overlap must be from 0 to less than the tile size"),
])
def test_sd_upscale_bad_arguments(scripted, args: list[Any], words: str) -> None:
    services, engine = scripted
    with pytest.raises(ScriptError) as info:
        services.scripts.submit("SD upscale", args, params(), init_images=[Image.new("RGB", (64, 64))])
    assert words in str(info.value)
    assert engine.calls == []

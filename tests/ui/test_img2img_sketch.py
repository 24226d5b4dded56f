"""img2img's drawn mask and outpainting, without a browser: the image editor's strokes become the mask
(white = repaint), the inpaint settings apply to it, and only the painted area of the picture changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageChops, ImageDraw

from sdweb.ui.components.uploads import UploadError
from sdweb.ui.fields import FORM_DEFAULTS
from sdweb.ui.tabs.img2img_inputs import OutpaintChoice, editor_value_for, img2img_request, mask_from_editor
from tests.fakes import make_services

SIZE = (96, 64)


def _layer(box: tuple[int, int, int, int] | None, size: tuple[int, int] = SIZE,
           colour: tuple[int, int, int, int] = (255, 255, 255, 255)) -> Image.Image:
    """A transparent layer with one painted rectangle, as the editor hands strokes back."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    if box is not None:
        ImageDraw.Draw(layer).rectangle(box, fill=colour)
    return layer


def _editor(*layers: Image.Image, background: Image.Image | None = None) -> dict:
    background = background or Image.new("RGB", SIZE, (10, 120, 30))
    return {"background": background, "layers": list(layers), "composite": background}


def _init(tmp_path: Path) -> str:
    path = tmp_path / "init.png"
    Image.new("RGB", SIZE, (10, 120, 30)).save(path)
    return str(path)


def test_strokes_become_a_white_mask_at_the_images_size() -> None:
    mask = mask_from_editor(_editor(_layer((10, 5, 19, 14))), SIZE)
    assert mask is not None and mask.mode == "L" and mask.size == SIZE
    assert mask.getbbox() == (10, 5, 20, 15)
    assert mask.getpixel((12, 8)) == 255 and mask.getpixel((40, 40)) == 0


def test_any_colour_and_every_layer_count_half_transparent_strokes_too() -> None:
    first = _layer((0, 0, 3, 3), colour=(255, 0, 0, 255))
    second = _layer((30, 30, 33, 33), colour=(0, 0, 0, 90))
    mask = mask_from_editor(_editor(first, second), SIZE)
    assert mask is not None
    assert mask.getpixel((1, 1)) == 255 and mask.getpixel((31, 31)) == 255
    assert mask.getpixel((15, 15)) == 0


def test_nothing_painted_is_no_mask() -> None:
    assert mask_from_editor(None, SIZE) is None
    assert mask_from_editor(_editor(), SIZE) is None
    assert mask_from_editor(_editor(_layer(None)), SIZE) is None


def test_a_canvas_of_another_size_is_scaled_to_the_picture() -> None:
    # The editor's canvas at half size: the strokes cover the same part of the picture.
    mask = mask_from_editor(_editor(_layer((24, 16, 47, 31), size=(48, 32))), SIZE)
    assert mask is not None and mask.size == SIZE
    assert mask.getbbox() == (48, 32, 96, 64)


def test_numpy_layers_work_as_well() -> None:
    array = np.zeros((64, 96, 4), np.uint8)
    array[0:5, 0:5] = (255, 255, 255, 255)
    mask = mask_from_editor({"background": None, "layers": [array], "composite": None}, SIZE)
    assert mask is not None and mask.getbbox() == (0, 0, 5, 5)


def test_a_new_picture_resets_the_editor_to_a_clean_sheet() -> None:
    assert editor_value_for("/x.png") == {"background": "/x.png", "layers": [], "composite": "/x.png"}
    assert editor_value_for(None) is None


def test_the_request_carries_the_drawn_mask_with_the_inpaint_settings(tmp_path: Path) -> None:
    values = dict(FORM_DEFAULTS, mask_blur=9, inpainting_fill=1, inpaint_full_res=False,
                  inpaint_full_res_padding=16, inpainting_mask_invert=True)
    params, images, mask = img2img_request(values, _init(tmp_path), None,
                                           drawn=_editor(_layer((10, 5, 19, 14))))
    assert mask is not None and mask.size == images[0].size == SIZE
    assert mask.getbbox() == (10, 5, 20, 15)
    assert (params.mask_blur, params.inpainting_fill, params.inpaint_full_res) == (9, 1, False)
    assert (params.inpaint_full_res_padding, params.inpainting_mask_invert) == (16, True)


def test_a_drawn_and_an_uploaded_mask_together_are_refused(tmp_path: Path) -> None:
    upload = tmp_path / "mask.png"
    Image.new("L", SIZE, 255).save(upload)
    with pytest.raises(UploadError, match="drawn mask and an uploaded mask"):
        img2img_request(FORM_DEFAULTS, _init(tmp_path), str(upload), drawn=_editor(_layer((0, 0, 4, 4))))
    # An editor with nothing painted leaves the uploaded mask in charge.
    _, _, mask = img2img_request(FORM_DEFAULTS, _init(tmp_path), str(upload), drawn=_editor(_layer(None)))
    assert mask is not None and mask.getbbox() == (0, 0, 96, 64)


def test_only_the_painted_area_of_the_picture_changes(tmp_path: Path) -> None:
    services, engine = make_services(tmp_path / "data")
    try:
        values = dict(FORM_DEFAULTS, width=96, height=64, steps=2, seed=3, denoising_strength=1.0)
        params, images, mask = img2img_request(values, _init(tmp_path), None,
                                               drawn=_editor(_layer((10, 5, 19, 14))))
        result = services.generation.submit_img2img(params, images, mask=mask).wait(30)
        changed = ImageChops.difference(result.images[0].convert("RGB"), images[0].convert("RGB")).getbbox()
        assert changed == (10, 5, 20, 15)
        assert "Mask blur: 4" in result.infotexts[0]
        assert engine.masks[-1] is mask
    finally:
        services.worker.close()


def test_outpainting_grows_the_picture_and_makes_the_mask(tmp_path: Path) -> None:
    choice = OutpaintChoice(enabled=True, pixels=16, sides=("left", "up"), fill="noise")
    params, images, mask = img2img_request(dict(FORM_DEFAULTS, mask_blur=2), _init(tmp_path), None,
                                           outpaint=choice)
    assert images[0].size == mask.size == (112, 80) == (params.width, params.height)
    assert images[0].crop((16, 16, 112, 80)).getcolors() == [(96 * 64, (10, 120, 30))]  # the picture in place
    assert mask.getpixel((17, 17)) == 255 and mask.getpixel((18, 18)) == 0  # overlap = mask blur 2
    assert params.inpaint_full_res is False
    off = img2img_request(FORM_DEFAULTS, _init(tmp_path), None, outpaint=OutpaintChoice(enabled=False))
    assert off[1][0].size == SIZE and off[2] is None


def test_outpainting_with_a_mask_or_bad_values_says_what_to_change(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="Outpainting makes its own mask"):
        img2img_request(FORM_DEFAULTS, _init(tmp_path), None, drawn=_editor(_layer((0, 0, 4, 4))),
                        outpaint=OutpaintChoice(enabled=True))
    with pytest.raises(UploadError, match="at least one outpainting direction"):
        img2img_request(FORM_DEFAULTS, _init(tmp_path), None, outpaint=OutpaintChoice(enabled=True, sides=()))

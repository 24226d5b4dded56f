"""Inpainting masks: reading, "only masked" boxes, filling from the surroundings, pasting back."""

from __future__ import annotations

import pytest
from PIL import Image

from sdweb.images.mask import MaskError, fill_masked, paste_back, prepare_inpaint, read_mask


def _picture() -> Image.Image:
    image = Image.new("RGB", (64, 64), (200, 0, 0))
    image.paste((0, 0, 255), (0, 32, 64, 64))
    image.paste((0, 255, 0), (24, 24, 40, 40))  # what the mask covers
    return image


def _mask(box: tuple[int, int, int, int], size: tuple[int, int] = (64, 64)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def test_a_transparent_layer_mask_is_read_from_its_alpha() -> None:
    layer = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    layer.putpixel((1, 1), (0, 0, 0, 255))  # drawn in black, opaque: repaint there
    mask = read_mask(layer)
    assert mask.getpixel((1, 1)) == 255 and mask.getpixel((0, 0)) == 0
    assert read_mask(Image.new("L", (2, 2), 255), invert=True).getpixel((0, 0)) == 0


def test_fill_uses_the_surrounding_colours_only() -> None:
    filled = fill_masked(_picture(), _mask((20, 20, 44, 44)))
    centre = filled.getpixel((32, 32))
    assert centre[1] < 30  # nothing of the green that was under the mask
    assert filled.getpixel((32, 22))[0] > 150 and filled.getpixel((32, 42))[2] > 150
    assert filled.getpixel((2, 2)) == (200, 0, 0)  # outside the mask unchanged


def test_only_masked_box_has_the_output_aspect_and_pastes_back_in_place() -> None:
    picture = _picture()
    plan = prepare_inpaint(picture, _mask((20, 20, 44, 44)), width=64, height=32, resize_mode=0,
                           mask_blur=0, invert=False, fill=1, only_masked=True, padding=4)
    left, top, right, bottom = plan.paste_box
    assert (right - left) / (bottom - top) == 2 and plan.init.size == (64, 32)
    out = paste_back(Image.new("RGB", (64, 32), (1, 2, 3)), plan)
    assert out.size == (64, 64)
    assert out.getpixel((32, 32)) == (1, 2, 3) and out.getpixel((2, 2)) == (200, 0, 0)


def test_bad_masks_are_refused() -> None:
    with pytest.raises(MaskError, match="same size"):
        prepare_inpaint(_picture(), _mask((0, 0, 8, 8), (32, 32)), width=64, height=64, resize_mode=0,
                        mask_blur=4, invert=False, fill=1, only_masked=False, padding=0)
    with pytest.raises(MaskError, match="empty"):
        prepare_inpaint(_picture(), Image.new("L", (64, 64)), width=64, height=64, resize_mode=0,
                        mask_blur=4, invert=False, fill=1, only_masked=False, padding=0)


def test_blur_across_and_down_may_differ_as_a1111s_mask_blur_x_and_y() -> None:
    def plan(blur: int, blur_y: int | None) -> Image.Image:
        return prepare_inpaint(_picture(), _mask((24, 24, 40, 40)), width=64, height=64, resize_mode=0,
                               mask_blur=blur, mask_blur_y=blur_y, invert=False, fill=1, only_masked=False,
                               padding=0).mask

    down_only = plan(0, 6)
    assert down_only.getpixel((20, 32)) == 0 and down_only.getpixel((23, 32)) == 0  # left edge stays sharp
    assert 0 < down_only.getpixel((32, 20)) < 255  # the top edge is soft
    across_only = plan(6, 0)
    assert 0 < across_only.getpixel((20, 32)) < 255 and across_only.getpixel((32, 20)) == 0
    both = plan(6, None)  # mask_blur alone blurs both ways, as before
    assert 0 < both.getpixel((20, 32)) < 255 and 0 < both.getpixel((32, 20)) < 255

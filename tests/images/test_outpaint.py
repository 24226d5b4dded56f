"""Outpainting's canvas: a bigger picture with the original in place, the new area filled from the edges,
and a mask over the new area reaching the overlap into the picture."""

from __future__ import annotations

import pytest
from PIL import Image, ImageChops

from sdweb.images.outpaint import OutpaintError, pad_for_outpainting, prepare_outpainting
from sdweb.params import Img2ImgParams


def _picture(size: tuple[int, int] = (64, 48)) -> Image.Image:
    """Left half red, right half blue, with a green top row: edges tell which way they were stretched."""
    image = Image.new("RGB", size, (200, 0, 0))
    image.paste((0, 0, 200), (size[0] // 2, 0, size[0], size[1]))
    image.paste((0, 200, 0), (0, 0, size[0], 1))
    return image


def test_all_sides_grow_and_the_original_stays_in_place() -> None:
    picture = _picture()
    canvas = pad_for_outpainting(picture, pixels=16, sides=["left", "right", "up", "down"])
    assert canvas.image.size == (96, 80)
    assert canvas.box == (16, 16, 80, 64)
    assert ImageChops.difference(canvas.image.crop(canvas.box), picture).getbbox() is None


def test_new_area_stretches_the_nearest_edge_pixels() -> None:
    canvas = pad_for_outpainting(_picture(), pixels=16, sides=["left", "right", "up", "down"])
    image = canvas.image
    assert image.getpixel((0, 40)) == (200, 0, 0)  # left: the red edge
    assert image.getpixel((95, 40)) == (0, 0, 200)  # right: the blue edge
    assert image.getpixel((40, 0)) == (0, 200, 0)  # up: the green top row
    assert image.getpixel((0, 0)) == (0, 200, 0)  # corner: the corner pixel
    assert image.getpixel((40, 79)) == (200, 0, 0)  # down: the bottom row


def test_mask_is_the_new_area_plus_the_overlap_into_the_picture() -> None:
    canvas = pad_for_outpainting(_picture(), pixels=16, sides=["right"], overlap=4)
    mask = canvas.mask
    assert canvas.image.size == (80, 48) and mask.size == (80, 48)
    assert mask.getpixel((79, 10)) == 255 and mask.getpixel((64, 10)) == 255  # the new area
    assert mask.getpixel((60, 10)) == 255 and mask.getpixel((59, 10)) == 0  # 4 pixels of overlap
    assert mask.getpixel((0, 0)) == 0 and mask.getpixel((30, 47)) == 0  # sides not grown: kept
    assert mask.getbbox() == (60, 0, 80, 48)


def test_only_the_chosen_sides_grow() -> None:
    canvas = pad_for_outpainting(_picture(), pixels=32, sides=["up"])
    assert canvas.image.size == (64, 80) and canvas.box == (0, 32, 64, 80)
    assert canvas.mask.getbbox() == (0, 0, 64, 32)


def test_canvas_is_rounded_up_to_the_grid_on_a_grown_side() -> None:
    canvas = pad_for_outpainting(_picture((60, 44)), pixels=10, sides=["left", "down"])
    assert canvas.image.size == (72, 56)  # 60 + 10 -> 72, 44 + 10 -> 56
    assert canvas.box[:2] == (12, 0)  # the extra went to the grown left side
    assert canvas.mask.getpixel((71, 0)) == 0  # nothing added on the right


def test_noise_fill_is_noisy_reproducible_and_keeps_the_picture() -> None:
    picture = _picture()
    edge = pad_for_outpainting(picture, pixels=16, sides=["left"])
    noisy = pad_for_outpainting(picture, pixels=16, sides=["left"], fill="noise", seed=3)
    again = pad_for_outpainting(picture, pixels=16, sides=["left"], fill="noise", seed=3)
    other = pad_for_outpainting(picture, pixels=16, sides=["left"], fill="noise", seed=4)
    assert ImageChops.difference(noisy.image, again.image).getbbox() is None
    assert ImageChops.difference(noisy.image, other.image).getbbox() is not None
    assert ImageChops.difference(noisy.image, edge.image).getbbox() == (0, 0, 16, 48)  # only the new area


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"sides": []}, "at least one"),
    ({"sides": ["sideways"]}, "'sideways'"),
    ({"pixels": 0}, "between 1"),
    ({"fill": "lava"}, "'lava'"),
    ({"pixels": 1024}, "at most 2048"),
])
def test_bad_values_are_refused_with_a_message(kwargs, words) -> None:
    values = {"pixels": 16, "sides": ["left"], **kwargs}
    with pytest.raises(OutpaintError, match=words):
        pad_for_outpainting(_picture((1200, 64)), **values)


def test_the_request_inpaints_the_whole_canvas_at_its_size() -> None:
    params = Img2ImgParams(prompt="sea", width=512, height=512, mask_blur=6, inpaint_full_res=True,
                           inpainting_mask_invert=True, resize_mode=2, seed=5)
    request, canvas, mask = prepare_outpainting(params, _picture(), pixels=32, sides=["left", "right"])
    assert (request.width, request.height) == (128, 48) == canvas.size == mask.size
    assert request.inpaint_full_res is False and request.inpainting_mask_invert is False
    assert request.resize_mode == 0 and request.prompt == "sea"
    assert mask.getpixel((32 + 5, 20)) == 255 and mask.getpixel((32 + 6, 20)) == 0  # overlap = mask blur

"""A write that fails does not cost the API caller the images: the answer is 200 with the images and a
warning in ``info.warnings`` that names the folder (relative to the data folder), nothing half-written is
left, and the next request saves again once the folder is usable."""

from __future__ import annotations

import json

from tests.api.conftest import ApiServer


def test_unwritable_outputs_folder_still_answers_the_images_with_a_warning(api: ApiServer) -> None:
    outputs = api.services.images.root
    blocked = [outputs / "txt2img-images", outputs / "txt2img-grids"]
    outputs.mkdir(parents=True, exist_ok=True)
    for path in blocked:
        path.write_text("not a folder")  # the folder cannot be made: every save fails
    request = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, "n_iter": 2, "seed": 5,
               "save_images": True}
    answer = api.client.post(api.url("txt2img"), json=request)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 3 and info["all_seeds"] == [5, 6]  # the grid first, as A1111
    warnings = [w for w in info["warnings"] if "could not save" in w]
    assert len(warnings) == 1, info["warnings"]
    assert "outputs/txt2img-images" in warnings[0] and "not kept on the server" in warnings[0]
    assert str(api.services.settings.paths.root) not in warnings[0]
    assert sorted(p.name for p in outputs.rglob("*")) == ["txt2img-grids", "txt2img-images"]  # nothing else
    # Once the folder is usable again, images are saved as before.
    for path in blocked:
        path.unlink()
    again = api.client.post(api.url("txt2img"), json={**request, "seed": 7, "n_iter": 1})
    assert again.status_code == 200
    assert not [w for w in json.loads(again.json()["info"])["warnings"] if "could not save" in w]
    assert [p.name for p in (outputs / "txt2img-images").rglob("*.png")] == ["00000-7.png"]

"""A corrupt or truncated checkpoint is a clear error at selection; the model in use stays usable
(issue 13.9). Real damaged files, as a user ends up with them: an interrupted download (cut
safetensors), a file whose first 8 bytes are wrong, a text file renamed .safetensors or .ckpt."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.api.conftest import ApiServer

REQUEST = {"steps": 1, "width": 64, "height": 64}


def _cut(good: Path, target: Path) -> None:
    data = good.read_bytes()
    target.write_bytes(data[: len(data) * 2 // 3])


def _wrong_header_length(good: Path, target: Path) -> None:
    data = bytearray(good.read_bytes())
    (length,) = struct.unpack("<Q", bytes(data[:8]))
    data[:8] = struct.pack("<Q", length + 4096)  # points past the real header, into the tensors
    target.write_bytes(bytes(data))


def _text(good: Path, target: Path) -> None:
    target.write_text("<html><body>404 Not Found</body></html>\n" * 20, encoding="utf-8")


DAMAGED = [
    ("cut.safetensors", _cut, "truncated"),
    ("badlength.safetensors", _wrong_header_length, "header"),
    ("page.safetensors", _text, "not a safetensors file"),
    ("page.ckpt", _text, "not a PyTorch checkpoint"),
]


@pytest.fixture()
def damaged(start_api: Callable[..., ApiServer]) -> ApiServer:
    api = start_api()
    folder = api.services.settings.paths.ckpt_dirs[0]
    good = next(folder.glob("*.safetensors"))
    for name, make, _ in DAMAGED:
        make(good, folder / name)
    assert api.post("refresh-checkpoints").status_code == 200
    return api


@pytest.mark.parametrize(("name", "words"), [(name, words) for name, _, words in DAMAGED])
def test_selecting_a_damaged_checkpoint_says_why_and_keeps_the_model(
    damaged: ApiServer, name: str, words: str
) -> None:
    api = damaged
    good_title = api.get("options").json()["sd_model_checkpoint"]
    assert api.post("options", json={"sd_model_checkpoint": good_title}).status_code == 200
    assert api.post("txt2img", json=REQUEST).status_code == 200
    loads = len(api.engine.loaded)

    response = api.post("options", json={"sd_model_checkpoint": name})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "sd_model_checkpoint" in detail and name in detail and words in detail, detail
    assert str(api.services.settings.paths.root) not in response.text
    assert len(api.engine.loaded) == loads  # nothing was handed to the engine

    assert api.get("options").json()["sd_model_checkpoint"] == good_title
    again = api.post("txt2img", json=REQUEST)
    assert again.status_code == 200
    assert api.engine.calls[-1].checkpoint in (None, good_title)


def test_a_damaged_checkpoint_per_request_is_refused_too(damaged: ApiServer) -> None:
    response = damaged.post("txt2img", json={**REQUEST, "override_settings": {
        "sd_model_checkpoint": "cut.safetensors"}})
    assert response.status_code == 422 and "truncated" in response.text
    assert damaged.post("txt2img", json=REQUEST).status_code == 200


def test_a_file_cut_after_it_was_listed_is_caught_at_selection(start_api: Callable[..., ApiServer]) -> None:
    """A copy still in progress when the list was made: the file is checked again when chosen."""
    api = start_api()
    folder = api.services.settings.paths.ckpt_dirs[0]
    good = next(folder.glob("*.safetensors"))
    later = folder / "later.safetensors"
    later.write_bytes(good.read_bytes())
    assert api.post("refresh-checkpoints").status_code == 200
    _cut(good, later)
    response = api.post("options", json={"sd_model_checkpoint": "later.safetensors"})
    assert response.status_code == 422 and "truncated" in response.json()["detail"]


def test_the_ui_selector_says_why(damaged: ApiServer) -> None:
    from sdweb.ui.components.checkpoints import load_checkpoint

    title = next(info.title for info in damaged.services.models.list_checkpoints()
                 if info.name == "cut.safetensors")
    message, ok = load_checkpoint(damaged.services, title)
    assert not ok and "cut.safetensors" in message and "truncated" in message
    assert "previous model stays" in message


@pytest.mark.slow
def test_the_real_engine_keeps_the_loaded_model(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """With the real engine: a cut file is refused before loading, a whole file that is no checkpoint
    fails in the loader; either way the tiny model stays loaded and draws."""
    import shutil

    import httpx
    import numpy as np
    from safetensors.numpy import save_file

    from sdweb.services.factory import build_services
    from tests.api.conftest import served_api
    from tests.fakes import make_settings

    settings = make_settings(tmp_path)
    folder = settings.paths.ckpt_dirs[0]
    folder.mkdir(parents=True)
    good = folder / tiny_checkpoint.name
    shutil.copy(tiny_checkpoint, good)
    _cut(good, folder / "cut.safetensors")
    save_file({"some.weight": np.zeros((4, 4), dtype=np.float32)}, str(folder / "notamodel.safetensors"))
    services = build_services(settings)
    services.models.load_selected(wait=True)
    loaded = services.models.status().title
    with served_api(services) as url, httpx.Client(timeout=300) as client:
        titles = [item["title"] for item in client.get(f"{url}/sd-models").json()]
        options = client.get(f"{url}/options").json()
        assert options["sd_model_checkpoint"] == loaded and loaded in titles
        assert len(options["sd_checkpoint_hash"]) == 64  # A1111's: the loaded file's sha256
        for name, status in (("cut.safetensors", 422), ("notamodel.safetensors", 422)):
            response = client.post(f"{url}/options", json={"sd_model_checkpoint": name})
            assert response.status_code == status, response.text
            assert name in response.json()["detail"]
            assert client.get(f"{url}/options").json()["sd_model_checkpoint"] == loaded
            drawn = client.post(f"{url}/txt2img", json={**REQUEST, "steps": 2})
            assert drawn.status_code == 200, drawn.text
            assert services.models.status().title == loaded

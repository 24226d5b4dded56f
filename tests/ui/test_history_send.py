"""History's "Send to img2img": the entry's first picture still on disk and its parameters."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from sdweb.history.store import HistoryEntry
from sdweb.params import GenerationParams
from sdweb.ui.app import build_ui
from sdweb.ui.tabs.history import picture_to_send
from sdweb.ui.tabs.img2img import values_for_img2img
from tests.fakes import make_services

INFOTEXTS = ["a boat\nSteps: 9, Sampler: Euler, CFG scale: 6, Seed: 11, Size: 384x256",
             "a boat\nSteps: 9, Sampler: Euler, CFG scale: 6, Seed: 12, Size: 384x256"]


def _entry(paths: list[str]) -> HistoryEntry:
    return HistoryEntry(params=GenerationParams(prompt="a boat", seed=11), seeds=[11, 12], subseeds=[1, 2],
                        output_paths=paths, infotexts=list(INFOTEXTS))


def test_the_first_picture_on_disk_goes_with_its_own_parameters(tmp_path: Path) -> None:
    first, second = tmp_path / "1.png", tmp_path / "2.png"
    Image.new("RGB", (8, 8)).save(second)  # the first was deleted
    path, text = picture_to_send(_entry([str(first), str(second)]))
    assert path == str(second) and text == INFOTEXTS[1]
    values, notes = values_for_img2img(text)
    assert (values["prompt"], values["seed"], values["width"], values["height"]) == ("a boat", 12, 384, 256)
    assert notes == []


def test_nothing_on_disk_means_nothing_to_send(tmp_path: Path) -> None:
    assert picture_to_send(_entry([str(tmp_path / "gone.png")])) is None
    assert picture_to_send(_entry([])) is None


def test_the_history_tab_has_the_button(tmp_path: Path) -> None:
    services, _ = make_services(tmp_path)
    try:
        demo = build_ui(services)
        buttons = [block for block in demo.blocks.values() if getattr(block, "elem_id", None)
                   == "history-send-to-img2img"]
        assert len(buttons) == 1 and buttons[0].visible is True
    finally:
        services.worker.close()

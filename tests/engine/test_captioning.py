"""The BLIP captioner behind /sdapi/v1/interrogate: a model in models/BLIP is loaded from its files and
captions an image; one that is missing and cannot be downloaded (offline) says what to download where."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from sdweb.engine.captioning import BLIP_REPO, CaptionerUnavailable, blip_folder, ensure_model, load_captioner
from tests.fixtures.captioning import WORDS, write_tiny_blip


def test_a_model_in_models_blip_captions_without_any_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    def no_download(**kwargs: object) -> None:
        raise AssertionError("the model was there: nothing should be downloaded")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    write_tiny_blip(blip_folder(tmp_path / "models"))
    captioner = load_captioner(tmp_path / "models")
    picture = Image.new("RGBA", (50, 40), (200, 10, 10, 255))
    caption = captioner.caption(picture)
    assert caption and set(caption.split()) <= set(WORDS)
    assert captioner.caption(picture) == caption  # the same image, the same caption


def test_offline_without_the_model_says_what_to_download_and_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    folder = blip_folder(tmp_path / "models")
    with pytest.raises(CaptionerUnavailable) as caught:
        ensure_model(folder)
    message = str(caught.value)
    assert (
        BLIP_REPO in message and str(folder) in message and f"https://huggingface.co/{BLIP_REPO}" in message
    )
    assert "model.safetensors" in message


def test_the_model_is_fetched_on_first_use(tmp_path: Path) -> None:
    from tests.fixtures.fake_hub import running_hub

    made = write_tiny_blip(tmp_path / "made")
    folder = blip_folder(tmp_path / "models")
    with running_hub() as hub:
        for path in made.iterdir():
            hub.add(BLIP_REPO, path.name, path.read_bytes())
        assert ensure_model(folder, endpoint=hub.url) == folder
    assert (folder / "model.safetensors").read_bytes() == (made / "model.safetensors").read_bytes()
    picture = Image.new("RGB", (32, 32), (10, 200, 10))
    assert load_captioner(tmp_path / "models").caption(picture)

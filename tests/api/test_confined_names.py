"""No user-supplied name becomes a path outside the folder it belongs to (issue 13.2): checkpoints, VAE,
LoRA, styles and outputs through the real API; extension names, merge names and hub file names through
the code that turns them into paths. Each is tried with '..', absolute paths, NUL bytes, Windows
separators and drive letters; a symlink leading out of a folder is covered in tests/test_safepath.py."""

from __future__ import annotations

import json

import pytest

from tests.api.conftest import ApiServer

ESCAPES = ["../../../../etc/passwd", "/etc/passwd", "..\\..\\..\\windows\\win.ini", "C:\\Windows\\win.ini",
           "C:/x", "a\u0000b", "~/x", "\\\\host\\share\\x"]
REQUEST = {"steps": 1, "width": 64, "height": 64}


def test_checkpoint_names(api: ApiServer) -> None:
    for name in ESCAPES:
        assert api.post("options", json={"sd_model_checkpoint": name}).status_code == 404, name
        response = api.post("txt2img", json={**REQUEST, "override_settings": {"sd_model_checkpoint": name}})
        assert response.status_code == 404, name
    assert api.engine.loaded == []


def test_vae_names(api: ApiServer) -> None:
    for name in ESCAPES:
        assert api.post("options", json={"sd_vae": name}).status_code == 400, name
        response = api.post("txt2img", json={**REQUEST, "override_settings": {"sd_vae": name}})
        assert response.status_code == 404, name
    assert api.engine.calls == []


def test_lora_names(api: ApiServer) -> None:
    for name in ESCAPES:
        response = api.post("txt2img", json={**REQUEST, "prompt": f"a cat <lora:{name}:1>"})
        assert 400 <= response.status_code < 500, name
    assert api.engine.calls == []


def test_style_names_are_only_names(api: ApiServer) -> None:
    response = api.post("txt2img", json={**REQUEST, "styles": ESCAPES[:3]})
    assert response.status_code == 200
    assert "style" in " ".join(json.loads(response.json()["info"]).get("warnings", []))


def test_output_folder_options(api: ApiServer) -> None:
    for name in ESCAPES:
        response = api.post("options", json={"outdir_txt2img_samples": name})
        assert response.status_code == 400, name
    root = api.services.settings.paths.root
    assert api.post("txt2img", json={**REQUEST, "save_images": True}).status_code == 200
    assert len(list((root / "outputs" / "txt2img-images").rglob("*.png"))) == 1


def test_output_image_paths(api: ApiServer) -> None:
    from sdweb.images.store import PathOutsideOutputsError

    for name in [*ESCAPES, "txt2img-images/../../config.json"]:
        with pytest.raises(PathOutsideOutputsError):
            api.services.images.resolve(name)


@pytest.mark.parametrize("name", ["../escape", "..", "a/b", "a\\b", "C:x", "x\u0000", ".hidden"])
def test_extension_folder_names(api: ApiServer, name: str) -> None:
    from sdweb.extensions.installer import InstallError

    with pytest.raises(InstallError):
        api.services.installer._folder_of(name)


@pytest.mark.parametrize("name", ["../escape", "a/b", "a\\b", "C:x", ".hidden", "x\u0000"])
def test_merge_names(name: str) -> None:
    from sdweb.services.merger import _unsafe_name

    assert _unsafe_name(name)
    assert not _unsafe_name("alpha + beta")


@pytest.mark.parametrize("spec", ["owner/repo:../x.safetensors", "owner/repo:/etc/x", "owner/repo:..\\x",
                                  "owner/repo:C:x", "owner/repo:a\u0000b"])
def test_hub_file_names(spec: str) -> None:
    from sdweb.engine.models.download import parse_model_spec

    with pytest.raises(ValueError, match="cannot download"):
        parse_model_spec(spec)

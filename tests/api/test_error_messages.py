"""Errors say what to do without leaking (issue 13.4): messages to clients name folders relative to the
data folder, never the server's absolute paths nor a traceback; the server log keeps the full detail."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from sdweb.safepath import PathScrubber, set_client_scrubber
from tests.api.conftest import ApiServer
from tests.fakes import FakeEngine

REQUEST = {"steps": 1, "width": 64, "height": 64}


def assert_no_server_path(api: ApiServer, text: str) -> None:
    root = api.services.settings.paths.root
    assert str(root) not in text and str(root.parent) not in text, text
    assert "Traceback" not in text and 'File "' not in text, text


def test_a_missing_vae_names_the_folder_relative_to_the_data_folder(api: ApiServer) -> None:
    response = api.post("txt2img", json={**REQUEST, "override_settings": {"sd_vae": "missing.pt"}})
    assert response.status_code == 404
    body = response.text
    assert "missing.pt" in body and "models/VAE" in body
    assert_no_server_path(api, body)


def test_no_checkpoint_says_where_to_put_one(start_api: Callable[..., ApiServer]) -> None:
    api = start_api()
    for path in api.services.settings.paths.ckpt_dirs[0].iterdir():
        path.unlink()
    assert api.post("refresh-checkpoints").status_code == 200
    response = api.post("txt2img", json=REQUEST)
    assert 400 <= response.status_code < 500
    assert "models/Stable-diffusion" in response.text
    assert_no_server_path(api, response.text)


def test_an_unknown_lora_names_the_lora_folder(api: ApiServer) -> None:
    response = api.post("txt2img", json={**REQUEST, "prompt": "a cat <lora:nothere:1>"})
    assert 400 <= response.status_code < 500
    assert "nothere" in response.text and "models/Lora" in response.text
    assert_no_server_path(api, response.text)


def test_an_engine_failure_keeps_its_detail_in_the_log_only(
    start_api: Callable[..., ApiServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = FakeEngine()
    api = start_api(engine=engine)
    broken = api.services.settings.paths.root / "models" / "Stable-diffusion" / "broken.safetensors"
    engine.fail_with = RuntimeError(f"could not read {broken}: header too large")
    with caplog.at_level(logging.INFO):
        response = api.post("txt2img", json=REQUEST)
    assert response.status_code >= 400
    assert "header too large" in response.text and "broken.safetensors" in response.text
    assert_no_server_path(api, response.text)
    assert str(broken) in caplog.text  # the server log keeps the full path


def test_folders_given_by_flags_are_named_by_their_flag(start_api: Callable[..., ApiServer],
                                                         tmp_path: Path) -> None:
    from sdweb.config import DataPaths

    vaes = tmp_path / "shared-vaes"
    vaes.mkdir()
    paths = DataPaths.from_root(tmp_path / "data", vae_dir=vaes)
    scrub = paths.client_scrubber()
    shown = scrub(f"VAE 'x' not found; no VAE files in {vaes}")
    assert shown == "VAE 'x' not found; no VAE files in --vae-dir"
    assert scrub(f"see {tmp_path / 'data' / 'models' / 'Lora'}") == "see models/Lora"
    assert scrub("use POST /sdapi/v1/options") == "use POST /sdapi/v1/options"
    assert scrub('File "/usr/lib/python3/dist-packages/x.py", line 1') == 'File "x.py", line 1'


def test_ui_error_lines_are_scrubbed_too(tmp_path: Path) -> None:
    from sdweb.ui.components.messages import error_html

    set_client_scrubber(PathScrubber(tmp_path))
    try:
        html = error_html(f"checkpoint {tmp_path / 'models' / 'x.safetensors'} is truncated")
    finally:
        set_client_scrubber(None)
    assert "models/x.safetensors" in html and str(tmp_path) not in html


def test_warnings_in_answers_name_folders_relative_to_the_data_folder(api: ApiServer) -> None:
    import json

    response = api.post("txt2img", json={**REQUEST, "restore_faces": True})
    assert response.status_code == 200
    warnings = " | ".join(json.loads(response.json()["info"])["warnings"])
    assert "face restoration was skipped" in warnings and "models/" in warnings
    assert_no_server_path(api, warnings)

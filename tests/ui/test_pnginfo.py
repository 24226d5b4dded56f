"""PNG Info: A1111 parameters as a table, other tools' metadata raw, and a clear word when there is none."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdweb.ui.tabs.pnginfo import read_png_info

INFOTEXT = (
    "a lighthouse at dusk\nNegative prompt: fog\n"
    "Steps: 12, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 987, Size: 576x384, "
    'Model hash: 0123456789, Model: dreamy, Lora hashes: "detail: 7c6bad76eb54", Version: v1.10.1'
)


def _png(path: Path, **texts: str) -> str:
    info = PngInfo()
    for key, value in texts.items():
        info.add_text(key, value)
    Image.new("RGB", (16, 16)).save(path, pnginfo=info)
    return str(path)


def test_a1111_parameters_become_a_table(tmp_path: Path) -> None:
    shown = read_png_info(_png(tmp_path / "a.png", parameters=INFOTEXT))
    table = dict(shown.table)
    assert shown.parameters == INFOTEXT and not shown.message
    assert table["Prompt"] == "a lighthouse at dusk" and table["Negative prompt"] == "fog"
    assert table["Size"] == "576x384" and "Size-1" not in table
    assert table["Lora hashes"] == "detail: 7c6bad76eb54"
    assert "parameters:" in shown.raw


def test_comfyui_metadata_is_shown_raw_with_a_note(tmp_path: Path) -> None:
    graph = json.dumps({"3": {"class_type": "KSampler", "inputs": {"seed": 5}}})
    shown = read_png_info(_png(tmp_path / "c.png", prompt=graph, workflow="{}"))
    assert shown.parameters == "" and shown.table == []
    assert "ComfyUI" in shown.message and "KSampler" in shown.raw


def test_an_image_without_metadata_says_so(tmp_path: Path) -> None:
    shown = read_png_info(_png(tmp_path / "n.png"))
    assert shown.parameters == "" and "no generation parameters" in shown.message


def test_a_broken_file_is_a_message_not_an_exception(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    shown = read_png_info(str(broken))
    assert shown.is_error and "Cannot read this image" in shown.message

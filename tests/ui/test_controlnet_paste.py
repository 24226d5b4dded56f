"""A pasted infotext's ``ControlNet N`` lines refill the ControlNet unit tabs of txt2img and img2img
("Send to txt2img / img2img" from PNG Info, Gallery), as the sd-webui-controlnet extension's paste does."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pytest

from sdweb.ui.components.paste import read_prompt_parameters
from sdweb.ui.fields import form_from_infotext
from sdweb.ui.sections.controlnet import ControlNetSection
from sdweb.ui.tabs import img2img, txt2img
from sdweb.ui.tabs.img2img import values_for_img2img
from tests.fakes import make_services

CANNY, DEPTH = "control_v11p_sd15_canny", "control_v11f1p_sd15_depth"


def write_fake_controlnets(folder: Path, *names: str) -> None:
    """Pickle-named files the model list shows (their family is only known once loaded), each with its
    own A1111 hash (the 64 KiB read at 1 MiB)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.pth").write_bytes(os.urandom(0x110000))


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Any]:
    services, _engine = make_services(tmp_path)
    write_fake_controlnets(tmp_path / "models" / "ControlNet", CANNY, DEPTH)
    yield services
    services.worker.close()


def _title(services: Any, name: str) -> str:
    return next(title for title in services.controlnet.model_titles() if title.startswith(name + " ["))


def _pages(services: Any) -> tuple[txt2img.Txt2ImgTab, img2img.Img2ImgTab]:
    with gr.Blocks(), gr.Tabs() as tabs:
        with gr.Tab("txt2img"):
            t2i = txt2img.render_txt2img_tab(services, tabs)
        with gr.Tab("img2img"):
            i2i = img2img.render_img2img_tab(services, tabs)
    return t2i, i2i


def _section(tab: Any) -> ControlNetSection:
    return next(section for section in tab.sections if isinstance(section, ControlNetSection))


def _value(update: Any) -> Any:
    return update["value"] if isinstance(update, dict) else update


def _infotext(services: Any) -> str:
    canny, depth = _title(services, CANNY), _title(services, DEPTH)
    return (
        "a lighthouse\nSteps: 2, Sampler: Euler, Seed: 5, Size: 64x64, "
        f'ControlNet 0: "Module: canny, Model: {canny}, Weight: 0.75, Resize Mode: Just Resize, '
        "Processor Res: 384, Threshold A: 90.0, Threshold B: 210.0, Guidance Start: 0.1, Guidance End: 0.85, "
        'Pixel Perfect: True, Control Mode: My prompt is more important", '
        f'ControlNet 1: "Module: depth_midas, Model: {depth}, Weight: 1, Resize Mode: Resize and Fill, '
        "Low Vram: False, Processor Res: 512, Guidance Start: 0, Guidance End: 1, Pixel Perfect: False, "
        'Control Mode: ControlNet is more important, Hr Option: Low res only, Save Detected Map: True"'
    )


def test_send_to_txt2img_refills_the_named_units_and_turns_the_others_off(services: Any) -> None:
    t2i, _ = _pages(services)
    units = _section(t2i).units
    assert len(units) == 3
    pasted = form_from_infotext(_infotext(services), services.models)
    updates = t2i.fill(pasted.values, pasted.notes)
    assert set(updates) <= t2i.outputs()  # every update reaches a wired output

    first, second, third = units
    got = {name: _value(updates[component]) for name, component in first.pasted().items()}
    assert got == {
        "enabled": True, "module": "canny", "model": _title(services, CANNY), "weight": 0.75,
        "resize_mode": "Just Resize", "processor_res": 384, "threshold_a": 90.0, "threshold_b": 210.0,
        "guidance_start": 0.1, "guidance_end": 0.85, "pixel_perfect": True,
        "control_mode": "My prompt is more important", "hr_option": "Both"}
    assert _title(services, CANNY) in updates[first.model]["choices"]
    assert _value(updates[second.enabled]) is True
    assert _value(updates[second.module]) == "depth_midas"
    assert _value(updates[second.model]) == _title(services, DEPTH)
    assert _value(updates[second.hr_option]) == "Low res only"
    assert _value(updates[second.control_mode]) == "ControlNet is more important"
    assert _value(updates[second.resize_mode]) == "Resize and Fill"
    assert updates[third.enabled] is False and third.module not in updates  # not in the infotext: off
    assert updates[_section(t2i).accordion].open is True  # the accordion opens on what was restored
    assert first.image not in updates and second.image not in updates  # each keeps its picture
    message = updates[t2i.message]
    assert "ControlNet units 0, 1 restored; the infotext holds no control image" in message


def test_an_infotext_without_controlnet_lines_turns_every_unit_off(services: Any) -> None:
    t2i, _ = _pages(services)
    pasted = form_from_infotext("a house\nSteps: 2, Sampler: Euler, Seed: 1, Size: 64x64", services.models)
    updates = t2i.fill(pasted.values, pasted.notes)
    assert [updates[unit.enabled] for unit in _section(t2i).units] == [False, False, False]
    assert _section(t2i).accordion not in updates  # nothing restored: it stays as it is


def test_values_that_are_not_a_paste_leave_the_units_alone(services: Any) -> None:
    t2i, _ = _pages(services)
    updates = t2i.fill({"prompt": "restored from history", "steps": 3})
    assert not any(unit.enabled in updates for unit in _section(t2i).units)


def test_missing_models_units_beyond_the_tabs_and_unknown_values_are_named(services: Any) -> None:
    services.options.update({"control_net_unit_count": 2})
    t2i, _ = _pages(services)
    units = _section(t2i).units
    assert len(units) == 2
    text = ("a house\nSteps: 2, Sampler: Euler, Seed: 1, Size: 64x64, "
            'ControlNet 0: "Module: canny, Model: control_v11p_sd15_lineart [43d4be0d], Weight: 0.6, '
            'Pixel Perfect: sure", '
            f'ControlNet 1: "Module: instant_id_face_keypoints, Model: {_title(services, DEPTH)}, '
            'Weight: 0.3", '
            f'ControlNet 2: "Module: canny, Model: {_title(services, CANNY)}"')
    pasted = form_from_infotext(text, services.models)
    updates = t2i.fill(pasted.values, pasted.notes)
    message = updates[t2i.message]
    # Not installed: the model is "None" (Generate asks for one), the rest of the unit is restored.
    assert _value(updates[units[0].model]) == "None" and _value(updates[units[0].weight]) == 0.6
    assert "ControlNet unit 0: model control_v11p_sd15_lineart [43d4be0d] is not installed" in message
    # A value that cannot be read keeps the default, named.
    assert _value(updates[units[0].pixel_perfect]) is False
    assert "ControlNet 0: Pixel Perfect &#x27;sure&#x27; is not True or False" in message
    # A preprocessor this program lacks: the tab keeps its own, the note says so.
    assert units[1].module not in updates and _value(updates[units[1].weight]) == 0.3
    assert ("ControlNet unit 1: preprocessor &#x27;instant_id_face_keypoints&#x27; is not available "
            "here") in message
    # A unit beyond the tabs shown.
    assert (f"ControlNet 2 (canny, {_title(services, CANNY)}) not restored: this page shows 2 ControlNet "
            "units") in message


def test_send_to_img2img_refills_its_units_too(services: Any) -> None:
    _, i2i = _pages(services)
    values, notes = values_for_img2img(_infotext(services), services.models)
    updates = i2i.fill("picture.png", values, notes)
    assert set(updates) <= i2i.outputs()
    first, second, third = _section(i2i).units
    assert first.hr_option is None  # img2img has no hires fix
    assert _value(updates[first.enabled]) is True and _value(updates[first.module]) == "canny"
    assert _value(updates[first.guidance_end]) == 0.85
    assert _value(updates[second.model]) == _title(services, DEPTH)
    assert updates[third.enabled] is False


def test_the_read_parameters_button_takes_the_infotext_pasted_into_the_prompt(services: Any) -> None:
    got = read_prompt_parameters(services, _infotext(services))
    assert got is not None
    values, _notes = got
    assert values["prompt"] == "a lighthouse" and values["steps"] == 2
    assert [unit.index for unit in values["controlnet_units"]] == [0, 1]


def test_a_prompt_without_parameters_is_not_read_and_an_empty_one_reads_the_last_generation(
    services: Any,
) -> None:
    from sdweb.history.store import HistoryEntry
    from sdweb.params import GenerationParams

    with pytest.warns(UserWarning, match="no generation parameters to read"):
        assert read_prompt_parameters(services, "just a prompt, nothing else") is None
    with pytest.warns(UserWarning, match="Paste generation parameters"):
        assert read_prompt_parameters(services, "  ") is None  # no generation yet

    services.history.add(HistoryEntry(params=GenerationParams(prompt="a lighthouse"), seeds=(5,),
                                      infotexts=(_infotext(services),)))
    got = read_prompt_parameters(services, "")
    assert got is not None and got[0]["prompt"] == "a lighthouse"
    assert len(got[0]["controlnet_units"]) == 2


def test_parameters_read_from_the_img2img_prompt_keep_its_picture_and_refill_its_units(services: Any) -> None:
    _, i2i = _pages(services)
    got = read_prompt_parameters(services, _infotext(services))
    assert got is not None
    updates = i2i.fill(None, *got)
    assert i2i.image not in updates and i2i.mask not in updates  # the picture and its mask stay
    assert updates[i2i.form["prompt"]] == "a lighthouse"
    first, second, third = _section(i2i).units
    assert _value(updates[first.module]) == "canny" and _value(updates[second.module]) == "depth_midas"
    assert updates[third.enabled] is False
    assert "Parameters restored. ControlNet units 0, 1 restored" in updates[i2i.message]


def test_history_restore_brings_back_the_units_of_the_stored_request(services: Any) -> None:
    from sdweb.history.store import HistoryEntry
    from sdweb.params import ControlNetUnit, GenerationParams
    from sdweb.ui.tabs.history import restore_values

    depth = _title(services, DEPTH)
    params = GenerationParams(prompt="a mill", controlnet_units=(
        ControlNetUnit(enabled=False, module="canny", model=_title(services, CANNY)),
        ControlNetUnit(module="depth_midas", model=depth, weight=0.55, guidance_end=0.6, pixel_perfect=True,
                       hr_option="Low res only", control_mode="ControlNet is more important"),
    ))
    entry_id = services.history.add(HistoryEntry(params=params, seeds=(3,)))
    t2i, _ = _pages(services)
    values, notes = restore_values(services, services.history.get(entry_id))
    updates = t2i.fill(values, notes)
    first, second, third = _section(t2i).units
    # Unit 1 of the request ran (unit 0 was off): its fields go to tab 1, as its infotext line would.
    assert updates[first.enabled] is False and updates[third.enabled] is False
    names = ("enabled", "module", "model", "weight", "guidance_end", "hr_option", "control_mode",
             "pixel_perfect")
    assert {name: _value(updates[second.pasted()[name]]) for name in names} == {
        "enabled": True, "module": "depth_midas", "model": depth, "weight": 0.55, "guidance_end": 0.6,
        "hr_option": "Low res only", "control_mode": "ControlNet is more important", "pixel_perfect": True}

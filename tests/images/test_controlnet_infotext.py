"""The extension's ``ControlNet N`` infotext lines read back into unit fields (what a paste restores)."""

from __future__ import annotations

import pytest

from sdweb.images.controlnet_infotext import (
    controlnet_units_from_infotext,
    match_model,
    parse_unit_line,
    resolve_names,
    unit_defaults,
)
from sdweb.images.infotext import parse_infotext

#: As sdweb's engine and the extension's 1.1.45x write a unit (tests/engine/test_controlnet.py).
CURRENT = ("Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 0.75, "
           "Resize Mode: Just Resize, Processor Res: 384, Threshold A: 90.0, Threshold B: 210.0, "
           "Guidance Start: 0.1, Guidance End: 0.85, Pixel Perfect: True, "
           "Control Mode: My prompt is more important")
#: The extension's 1.1.4xx line: every field but -1 ones, memory options and the hires option included.
OLDER = ("Module: depth_midas, Model: control_v11f1p_sd15_depth [cfd03158], Weight: 1, "
         "Resize Mode: Resize and Fill, Low Vram: False, Processor Res: 512, Guidance Start: 0, "
         "Guidance End: 1, Pixel Perfect: False, Control Mode: ControlNet is more important, "
         "Hr Option: Low res only, Save Detected Map: True")
#: The extension's 2023 layout.
LEGACY = ("preprocessor: canny, model: control_sd15_canny [fef5e48e], weight: 0.5, "
          "starting/ending: (0.2, 0.7), resize mode: Inner Fit (Scale to Fit), pixel perfect: False, "
          "control mode: Balanced, preprocessor params: (256, 50, 150)")


def test_the_current_line_fills_every_field_it_names_and_enables_the_unit() -> None:
    unit = parse_unit_line(0, CURRENT)
    assert unit.notes == ()
    assert dict(unit.values) == {
        "enabled": True, "module": "canny", "model": "control_v11p_sd15_canny [d14c016b]", "weight": 0.75,
        "resize_mode": "Just Resize", "processor_res": 384, "threshold_a": 90.0, "threshold_b": 210.0,
        "guidance_start": 0.1, "guidance_end": 0.85, "pixel_perfect": True,
        "control_mode": "My prompt is more important", "hr_option": "Both"}
    assert isinstance(unit.values["processor_res"], int)


def test_the_older_line_reads_its_hires_option_and_leaves_out_fields_at_their_defaults() -> None:
    unit = parse_unit_line(1, OLDER)
    assert unit.notes == ()  # Low Vram / Save Detected Map do not change the picture
    assert unit.values["hr_option"] == "Low res only"
    assert unit.values["control_mode"] == "ControlNet is more important"
    assert unit.values["resize_mode"] == "Resize and Fill"
    assert unit.values["weight"] == 1.0 and unit.values["processor_res"] == 512
    # Threshold A / B were -1 (hidden sliders), so the extension left them out: the defaults.
    assert unit.values["threshold_a"] == -1.0 and unit.values["threshold_b"] == -1.0


def test_the_2023_layout_splits_its_grouped_values() -> None:
    unit = parse_unit_line(0, LEGACY)
    assert unit.notes == ()
    values = unit.values
    assert values["module"] == "canny" and values["model"] == "control_sd15_canny [fef5e48e]"
    assert values["weight"] == 0.5
    assert (values["guidance_start"], values["guidance_end"]) == (0.2, 0.7)
    assert (values["processor_res"], values["threshold_a"], values["threshold_b"]) == (256, 50.0, 150.0)
    assert values["resize_mode"] == "Crop and Resize"  # the old "Inner Fit" label


def test_enum_names_as_some_versions_wrote_them_are_understood() -> None:
    unit = parse_unit_line(0, "Module: none, Model: None, Resize Mode: ResizeMode.OUTER_FIT, "
                              "Control Mode: ControlMode.PROMPT, Hr Option: HiResFixOption.HIGH_RES_ONLY")
    assert unit.notes == ()
    assert unit.values["resize_mode"] == "Resize and Fill"
    assert unit.values["control_mode"] == "My prompt is more important"
    assert unit.values["hr_option"] == "High res only"


def test_fields_the_line_leaves_out_take_the_unit_defaults() -> None:
    unit = parse_unit_line(2, "Module: canny, Model: x [12345678]")
    assert dict(unit.values) == unit_defaults() | {"module": "canny", "model": "x [12345678]"}
    assert unit.values["enabled"] is True and unit.values["weight"] == 1.0


@pytest.mark.parametrize(
    ("text", "field", "note"),
    [
        ("Weight: heavy", "weight", "ControlNet 0: Weight 'heavy' is not a number; left at 1.0"),
        ("Weight: 3.5", "weight", "ControlNet 0: Weight '3.5' is out of range (0 to 2); left at 1.0"),
        ("Processor Res: 4096", "processor_res",
         "Processor Res '4096' is out of range (-1 to 2048); left at -1"),  # the slider's top
        ("Processor Res: 512.5", "processor_res",
         "Processor Res '512.5' is not a whole number; left at -1"),
        ("Pixel Perfect: maybe", "pixel_perfect",
         "Pixel Perfect 'maybe' is not True or False; left at False"),
        ("Control Mode: Loud", "control_mode",
         "Control Mode 'Loud' is not one of Balanced, My prompt is more important, ControlNet is more "
         "important; left at 'Balanced'"),
        ("Resize Mode: Stretch", "resize_mode", "Resize Mode 'Stretch' is not one of Just Resize"),
        ("Guidance Start: nan", "guidance_start", "Guidance Start 'nan' is out of range (0 to 1)"),
    ],
)
def test_a_value_that_cannot_be_used_keeps_the_default_with_a_note_naming_it(text: str, field: str,
                                                                               note: str) -> None:
    unit = parse_unit_line(0, f"Module: canny, Model: x [12345678], {text}")
    assert unit.values[field] == unit_defaults()[field]
    assert unit.values["module"] == "canny"  # the rest of the line is still read
    assert len(unit.notes) == 1 and note in unit.notes[0]


def test_keys_and_items_with_no_field_here_are_named_never_dropped_silently() -> None:
    unit = parse_unit_line(3, "Module: canny, Model: x [12345678], Union Control Type: Canny, garbage")
    assert unit.values["module"] == "canny"
    assert unit.notes == ("ControlNet 3: Union Control Type 'Canny' is not supported here; left out",
                          "ControlNet 3: cannot read 'garbage' (not 'Name: value'); left out")


def test_an_end_before_the_start_resets_both_with_a_note() -> None:
    unit = parse_unit_line(0, "Module: canny, Model: x, Guidance Start: 0.8, Guidance End: 0.2")
    assert (unit.values["guidance_start"], unit.values["guidance_end"]) == (0.0, 1.0)
    assert "Guidance End 0.2 is before Guidance Start 0.8" in unit.notes[0]


def test_the_units_of_a_whole_infotext_come_by_index() -> None:
    text = (f'a house\nSteps: 2, Sampler: Euler, Seed: 1, Size: 64x64, ControlNet 1: "{OLDER}", '
            f'ControlNet 0: "{CURRENT}", Version: v1.10.1')
    units = controlnet_units_from_infotext(parse_infotext(text))
    assert [unit.index for unit in units] == [0, 1]
    assert units[0].values["module"] == "canny" and units[1].values["module"] == "depth_midas"
    assert units[0].summary == "ControlNet 0 (canny, control_v11p_sd15_canny [d14c016b])"
    assert controlnet_units_from_infotext(parse_infotext("a house\nSteps: 2, Seed: 1")) == []


INSTALLED = ["control_v11f1p_sd15_depth [cfd03158]", "control_v11p_sd15_canny [d14c016b]",
             "renamed_openpose [aabbccdd]"]


@pytest.mark.parametrize(
    ("wanted", "title", "note"),
    [
        ("control_v11p_sd15_canny [d14c016b]", "control_v11p_sd15_canny [d14c016b]", None),
        ("Control_V11p_SD15_Canny [D14C016B]", "control_v11p_sd15_canny [d14c016b]", None),
        ("control_v11p_sd15_openpose [aabbccdd]", "renamed_openpose [aabbccdd]", None),  # a renamed file
        ("control_v11p_sd15_canny", "control_v11p_sd15_canny [d14c016b]", None),  # a name alone
        ("control_v11p_sd15_canny [00000000]", "control_v11p_sd15_canny [d14c016b]",
         "model control_v11p_sd15_canny [00000000] is not installed; using "
         "control_v11p_sd15_canny [d14c016b] (same name, another hash: the picture may differ)"),
        ("None", "None", None),
        ("control_v11p_sd15_lineart [43d4be0d]", None,
         "model control_v11p_sd15_lineart [43d4be0d] is not installed (models/ControlNet)"),
    ],
)
def test_a_pasted_model_is_matched_by_title_hash_then_name(
    wanted: str, title: str | None, note: str | None
) -> None:
    assert match_model(wanted, INSTALLED) == (title, note)


def _find_module(name: str) -> str:
    known = {"canny": "canny", "depth": "depth_midas", "depth_midas": "depth_midas"}
    if name.lower() not in known:
        raise LookupError(name)
    return known[name.lower()]


def test_resolving_names_maps_aliases_and_says_what_is_missing() -> None:
    line = "Module: Depth, Model: control_v11f1p_sd15_depth [cfd03158]"
    values, notes = resolve_names(parse_unit_line(0, line), INSTALLED, _find_module)
    assert (values["module"], values["model"]) == ("depth_midas", "control_v11f1p_sd15_depth [cfd03158]")
    assert notes == []

    line = "Module: mlsd, Model: control_v11p_sd15_mlsd [aca30ff0], Weight: 0.4"
    values, notes = resolve_names(parse_unit_line(1, line), INSTALLED, _find_module)
    assert "module" not in values  # the tab keeps its preprocessor
    assert values["model"] == "None" and values["weight"] == 0.4  # the rest of the unit is still restored
    assert notes == ["ControlNet unit 1: preprocessor 'mlsd' is not available here; the unit's preprocessor "
                     "was left unchanged",
                     "ControlNet unit 1: model control_v11p_sd15_mlsd [aca30ff0] is not installed "
                     "(models/ControlNet); choose a model"]


def test_the_2023_layouts_with_a_bare_key_or_a_key_per_field_are_read() -> None:
    summer = parse_infotext(f'a house\nSteps: 2, Seed: 1, Size: 64x64, ControlNet: "{LEGACY}"')
    [unit] = controlnet_units_from_infotext(summer)
    assert (unit.index, unit.values["module"], unit.values["guidance_end"]) == (0, "canny", 0.7)

    spring = parse_infotext(
        "a house\nSteps: 2, Seed: 1, Size: 64x64, ControlNet 1 Enabled: True, "
        "ControlNet 1 Preprocessor: canny, ControlNet 1 Model: control_sd15_canny [fef5e48e], "
        "ControlNet 1 Weight: 0.8, ControlNet 1 Starting Step: 0.25, ControlNet 1 Ending Step: 0.75, "
        "ControlNet 1 Resize Mode: Just Resize, "
        "ControlNet 1 Pixel Perfect: True, ControlNet 1 Control Mode: Balanced, "
        'ControlNet 1 Preprocessor Parameters: "(320, 80, 160)", ControlNet 1 Guess Mode: False')
    [unit] = controlnet_units_from_infotext(spring)
    assert unit.index == 1
    names = ("module", "model", "weight", "guidance_start", "guidance_end", "resize_mode", "pixel_perfect",
             "processor_res", "threshold_a", "threshold_b")
    assert {name: unit.values[name] for name in names} == {
        "module": "canny", "model": "control_sd15_canny [fef5e48e]", "weight": 0.8, "guidance_start": 0.25,
        "guidance_end": 0.75, "resize_mode": "Just Resize", "pixel_perfect": True, "processor_res": 320,
        "threshold_a": 80.0, "threshold_b": 160.0}
    assert unit.notes == ("ControlNet 1: Guess Mode 'False' is not supported here; left out",)

    first = parse_infotext("a house\nSteps: 2, Seed: 1, ControlNet Enabled: True, ControlNet Module: depth, "
                           "ControlNet Model: control_sd15_depth [fef5e48e]")
    [unit] = controlnet_units_from_infotext(first)
    assert (unit.index, unit.values["module"], unit.values["enabled"]) == (0, "depth", True)

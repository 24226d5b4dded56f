"""A1111's send_seed / send_size: what "Send to img2img", "Restore parameters" and PNG Info's "Send to"
put into a form (issue 16.4: the option keys clients read and write work where we have the feature)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from sdweb.config import OptionsStore
from sdweb.option_catalog import BUILTIN_OPTIONS
from sdweb.ui.tabs.txt2img import Txt2ImgTab

SENT = {"prompt": "a cat", "seed": 1234, "subseed": 5, "width": 768, "height": 512, "steps": 20}


def _tab(options: OptionsStore) -> tuple[Txt2ImgTab, dict[str, gr.Number]]:
    with gr.Blocks():
        form = {name: gr.Number() if name != "prompt" else gr.Textbox() for name in SENT}
        tab = Txt2ImgTab(form=form, tabs=gr.Tabs(), message=gr.HTML(), checkpoint_choices=lambda: [],
                         options=options)
    return tab, form


def _filled(tab: Txt2ImgTab, form: dict[str, gr.Number]) -> set[str]:
    updates = tab.fill(SENT)
    return {name for name, component in form.items() if component in updates}


def test_seed_and_size_are_sent_by_default(tmp_path: Path) -> None:
    tab, form = _tab(OptionsStore(tmp_path / "config.json", BUILTIN_OPTIONS))
    assert _filled(tab, form) == set(SENT)


def test_send_seed_and_send_size_off_leave_those_fields(tmp_path: Path) -> None:
    options = OptionsStore(tmp_path / "config.json", BUILTIN_OPTIONS)
    options.update({"send_seed": False})
    tab, form = _tab(options)
    assert _filled(tab, form) == {"prompt", "width", "height", "steps"}
    options.update({"send_seed": True, "send_size": False})
    assert _filled(tab, form) == {"prompt", "seed", "subseed", "steps"}


def test_forge_module_keys_set_the_vae_text_encoder_selector_and_its_setting(tmp_path: Path) -> None:
    """A pasted Forge infotext ("Module 1: ae, ...") chooses those files, as picking them in the selector."""
    import torch
    from safetensors.torch import save_file

    from sdweb.ui.fields import form_from_infotext
    from tests.fakes import make_services

    services, _fake = make_services(tmp_path)
    try:
        for folder, name in (("VAE", "ae"), ("text_encoder", "clip_l"), ("text_encoder", "t5xxl_fp16")):
            (tmp_path / "models" / folder).mkdir(parents=True, exist_ok=True)
            save_file({"weight": torch.zeros(1)}, str(tmp_path / "models" / folder / f"{name}.safetensors"))
        text = ("a cat\nSteps: 20, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Seed: 3, "
                "Size: 64x64, Module 1: ae, Module 2: clip_l, Module 3: t5xxl_fp16")
        pasted = form_from_infotext(text, services.models)
        assert pasted.values["additional_modules"] == ["ae.safetensors", "clip_l.safetensors",
                                                       "t5xxl_fp16.safetensors"]
        unknown = form_from_infotext(text.replace("t5xxl_fp16", "t5xxl_elsewhere"), services.models)
        assert "additional_modules" not in unknown.values
        assert any("'t5xxl_elsewhere' is not in models/text_encoder" in note for note in unknown.notes)
        with gr.Blocks():
            modules = gr.Dropdown(multiselect=True, choices=[])
            tab = Txt2ImgTab(form={"prompt": gr.Textbox()}, tabs=gr.Tabs(), message=gr.HTML(),
                             checkpoint_choices=lambda: [], options=services.options, modules=modules,
                             module_choices=lambda: ["ae.safetensors"])
        updates = tab.fill(pasted.values, pasted.notes)
        assert updates[modules]["value"] == pasted.values["additional_modules"]
        assert services.options.get("forge_additional_modules") == pasted.values["additional_modules"]
        assert modules in tab.outputs()
    finally:
        services.worker.close()

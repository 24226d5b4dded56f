"""A1111's send_seed / send_size: what "Send to img2img", "Restore parameters" and PNG Info's "Send to"
put into a form (issue 16.4: the option keys clients read and write work where we have the feature)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from sdweb.config import BUILTIN_OPTIONS, OptionsStore
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

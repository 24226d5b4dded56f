"""Form sections: a feature plugs into the txt2img and img2img forms without the tab naming it.

The tabs are built with a section of the test's own (a "Seamless" accordion that turns on tiling, a
request field no tab control sets); pressing Generate runs the tab's real handler against a FakeEngine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pytest

from sdweb.ui.sections import SCRIPTS, FormSection, FormSections, SectionContext, SectionError
from sdweb.ui.sections.hires import HiresFixSection
from sdweb.ui.tabs import img2img, txt2img
from tests.fakes import make_services


class SeamlessSection(FormSection):
    """A feature the tabs know nothing of: a checkbox that asks for a tiling image."""

    slot = SCRIPTS

    def __init__(self, *, refuse: bool = False) -> None:
        self.box: gr.Checkbox | None = None
        self.loaded = False
        self.refuse = refuse

    def render(self, ctx: SectionContext) -> None:
        with gr.Accordion("Seamless", open=False, elem_id=f"{ctx.tab}-seamless"):
            self.box = gr.Checkbox(value=False, label="Tile", elem_id=f"{ctx.tab}-seamless-tile")

    def inputs(self) -> Sequence[Any]:
        return [self.box]

    def request_values(self, data: Mapping[Any, Any]) -> dict[str, Any]:
        if self.refuse and data[self.box]:
            raise SectionError("Seamless: this picture cannot tile")
        return {"tiling": bool(data[self.box])}

    def wire_page_load(self, demo: gr.Blocks, services: Any) -> None:
        self.loaded = True


def _generate_handler(demo: gr.Blocks, index: int = 0) -> Any:
    """The ``index``-th Generate handler of the page (txt2img's is the first)."""
    handlers = [block_fn for block_fn in demo.fns.values() if block_fn.name == "run_generation"]
    return handlers[index]


def _press_generate(block_fn: Any, changes: Mapping[Any, Any]) -> list[dict[Any, Any]]:
    data = {component: component.value for component in block_fn.inputs}
    data.update(changes)

    async def collect() -> list[dict[Any, Any]]:
        request = SimpleNamespace(session_hash="section-test")
        return [update async for update in block_fn.fn(data, request)]

    return asyncio.run(collect())


@pytest.fixture
def services(tmp_path: Path) -> Any:
    services, engine = make_services(tmp_path)
    services.test_engine = engine
    yield services
    services.worker.close()


def _txt2img_page(services: Any, sections: FormSections) -> tuple[gr.Blocks, Any]:
    with gr.Blocks() as demo:
        with gr.Tabs() as tabs, gr.Tab("txt2img"):
            tab = txt2img.render_txt2img_tab(services, tabs, sections=sections)
        txt2img.wire_page_load(demo, services, tab)
    return demo, tab


def test_a_section_renders_in_txt2img_and_its_value_reaches_the_request(services: Any) -> None:
    seamless = SeamlessSection()
    demo, tab = _txt2img_page(services, FormSections([HiresFixSection(), seamless]))
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"txt2img-seamless", "txt2img-seamless-tile", "txt2img-hires"} <= ids
    assert seamless.loaded, "the section's page-load wiring was called"

    generate = _generate_handler(demo)
    assert seamless.box in generate.inputs
    _press_generate(generate, {tab.form["prompt"]: "a tiled floor", tab.form["steps"]: 2,
                               tab.form["width"]: 64, tab.form["height"]: 64, seamless.box: True})
    engine = services.test_engine
    assert engine.calls[-1].tiling is True and engine.calls[-1].prompt == "a tiled floor"

    _press_generate(generate, {tab.form["steps"]: 2, tab.form["width"]: 64, tab.form["height"]: 64,
                               seamless.box: False})
    assert engine.calls[-1].tiling is False


def test_a_section_that_refuses_its_values_says_why_and_queues_nothing(services: Any) -> None:
    seamless = SeamlessSection(refuse=True)
    demo, _ = _txt2img_page(services, FormSections([seamless]))
    updates = _press_generate(_generate_handler(demo), {seamless.box: True})
    progress = next(block for block in demo.blocks.values()
                    if getattr(block, "elem_id", None) == "txt2img-progress")
    assert "Seamless: this picture cannot tile" in updates[-1][progress]
    assert services.test_engine.calls == []


def test_without_the_hires_section_txt2img_has_no_hires_controls_and_still_generates(services: Any) -> None:
    demo, tab = _txt2img_page(services, FormSections())
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert "txt2img-hires" not in ids and "enable_hr" not in tab.form
    _press_generate(_generate_handler(demo), {tab.form["steps"]: 2, tab.form["width"]: 64,
                                              tab.form["height"]: 64})
    assert services.test_engine.calls[-1].enable_hr is False


def test_a_section_plugs_into_img2img_too(services: Any, tmp_path: Path) -> None:
    from PIL import Image

    picture = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(picture)
    seamless = SeamlessSection()
    with gr.Blocks() as demo:
        with gr.Tabs() as tabs, gr.Tab("img2img"):
            tab = img2img.render_img2img_tab(services, tabs, sections=FormSections([seamless]))
        img2img.wire_page_load(demo, services, tab)
    assert seamless.loaded
    _press_generate(_generate_handler(demo), {tab.image: str(picture), tab.form["steps"]: 2,
                                              tab.form["width"]: 64, tab.form["height"]: 64,
                                              seamless.box: True})
    assert services.test_engine.calls[-1].tiling is True

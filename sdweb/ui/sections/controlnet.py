"""The "ControlNet" accordion of txt2img and img2img: a tab per unit (the setting
``control_net_unit_count``, default 3), as the sd-webui-controlnet extension lays it out.

Each unit: its picture (img2img: none means the init image), Enable, Pixel Perfect, the preprocessor and
the model (models of the selected checkpoint's family; the refresh button rescans models/ControlNet),
weight, guidance start/end, preprocessor resolution and thresholds, control mode, resize mode, and in
txt2img the hires-fix option. "Preview" shows the preprocessed map (computed on the CPU, outside the
queue). Enabled units go into the request's ``controlnet_units``; one enabled without a model or a
picture is refused with a message naming the unit before anything is queued.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image
from pydantic import ValidationError

from sdweb.images.controlnet_infotext import PASTED_FIELDS, PROCESSOR_RES_MAX, match_model, resolve_names
from sdweb.params import CONTROL_HR_OPTIONS, CONTROL_MODES, CONTROL_RESIZE_MODES, ControlNetUnit
from sdweb.safepath import for_client
from sdweb.ui.fields import CONTROLNET_UNITS
from sdweb.ui.sections.base import SCRIPTS, FormSection, SectionContext, SectionError

logger = logging.getLogger(__name__)

NONE = "None"


@dataclass
class _UnitControls:
    image: Any
    enabled: Any
    pixel_perfect: Any
    module: Any
    model: Any
    refresh: Any
    weight: Any
    guidance_start: Any
    guidance_end: Any
    processor_res: Any
    threshold_a: Any
    threshold_b: Any
    control_mode: Any
    resize_mode: Any
    hr_option: Any
    preview_button: Any
    preview: Any

    def pasted(self) -> dict[str, Any]:
        """The components a paste fills, by unit field name (not the picture: no infotext holds it)."""
        targets = {name: getattr(self, name) for name in PASTED_FIELDS if name != "hr_option"}
        return targets | ({"hr_option": self.hr_option} if self.hr_option is not None else {})

    def inputs(self) -> list[Any]:
        items = [
            self.image,
            self.enabled,
            self.pixel_perfect,
            self.module,
            self.model,
            self.weight,
            self.guidance_start,
            self.guidance_end,
            self.processor_res,
            self.threshold_a,
            self.threshold_b,
            self.control_mode,
            self.resize_mode,
        ]
        return [*items, self.hr_option] if self.hr_option is not None else items


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def checkpoint_family(services: Any) -> str | None:
    """The family of the selected checkpoint (``sd1``, ``sdxl-inpaint`` ...), None when unknown."""
    models = getattr(services, "models", None)
    try:
        title = models.selected_title() if models is not None else None
        return getattr(models.find(title), "family", None) if title else None
    except (LookupError, ValueError, AttributeError):
        return None


class ControlNetSection(FormSection):
    """ControlNet units as a form section (bottom of the parameters column, above the Script dropdown)."""

    slot = SCRIPTS

    def __init__(self, services: Any, tab: str) -> None:
        self.services = services
        self.tab = tab
        self.units: list[_UnitControls] = []
        self.accordion: Any = None

    @property
    def controlnet(self) -> Any:
        return getattr(self.services, "controlnet", None)

    def model_choices(self) -> list[str]:
        if self.controlnet is None:
            return [NONE]
        return [NONE, *self.controlnet.model_titles(checkpoint_family(self.services))]

    def render(self, ctx: SectionContext) -> None:
        service = self.controlnet
        if service is None:
            return
        modules = service.module_names()
        count = service.unit_count()
        self.accordion = gr.Accordion("ControlNet", open=False, elem_id=f"{self.tab}-controlnet")
        with self.accordion, gr.Tabs():
            for index in range(count):
                with gr.Tab(f"ControlNet Unit {index}", elem_id=f"{self.tab}-controlnet-tab-{index}"):
                    self.units.append(self._render_unit(index, modules))

    def _render_unit(self, index: int, modules: list[str]) -> _UnitControls:
        prefix = f"{self.tab}-controlnet-{index}"
        with gr.Row():
            image = gr.Image(
                label="Control image" + (" (empty: the init image)" if self.tab == "img2img" else ""),
                type="pil",
                sources=["upload", "clipboard"],
                height=256,
                elem_id=f"{prefix}-image",
            )
            preview = gr.Image(
                label="Preprocessor preview",
                type="pil",
                interactive=False,
                height=256,
                elem_id=f"{prefix}-preview",
            )
        with gr.Row():
            enabled = gr.Checkbox(value=False, label="Enable", elem_id=f"{prefix}-enabled")
            pixel_perfect = gr.Checkbox(value=False, label="Pixel Perfect", elem_id=f"{prefix}-pixel-perfect")
        with gr.Row():
            module = gr.Dropdown(
                label="Preprocessor", choices=modules, value="none", elem_id=f"{prefix}-module"
            )
            model = gr.Dropdown(label="Model", choices=[NONE], value=NONE, elem_id=f"{prefix}-model")
            refresh = gr.Button("↻", elem_id=f"{prefix}-refresh", elem_classes="sdweb-tool", scale=0,
                                min_width=40)
            preview_button = gr.Button("Preview", elem_id=f"{prefix}-preview-button", scale=0, min_width=80)
        with gr.Row():
            weight = gr.Slider(
                0.0, 2.0, value=1.0, step=0.05, label="Control Weight", elem_id=f"{prefix}-weight"
            )
            guidance_start = gr.Slider(
                0.0,
                1.0,
                value=0.0,
                step=0.01,
                label="Starting Control Step",
                elem_id=f"{prefix}-guidance-start",
            )
            guidance_end = gr.Slider(
                0.0, 1.0, value=1.0, step=0.01, label="Ending Control Step", elem_id=f"{prefix}-guidance-end"
            )
        with gr.Row():
            processor_res = gr.Slider(
                -1,
                PROCESSOR_RES_MAX,
                value=-1,
                step=1,
                label="Preprocessor Resolution",
                info="-1: the preprocessor's default",
                elem_id=f"{prefix}-processor-res",
            )
            threshold_a = gr.Number(
                value=-1, label="Threshold A", info="-1: default", elem_id=f"{prefix}-threshold-a"
            )
            threshold_b = gr.Number(
                value=-1, label="Threshold B", info="-1: default", elem_id=f"{prefix}-threshold-b"
            )
        control_mode = gr.Radio(
            list(CONTROL_MODES),
            value=CONTROL_MODES[0],
            label="Control Mode",
            elem_id=f"{prefix}-control-mode",
        )
        resize_mode = gr.Radio(
            list(CONTROL_RESIZE_MODES),
            value="Crop and Resize",
            label="Resize Mode",
            elem_id=f"{prefix}-resize-mode",
        )
        hr_option = None
        if self.tab == "txt2img":
            hr_option = gr.Radio(
                list(CONTROL_HR_OPTIONS),
                value="Both",
                label="Hires-Fix Option",
                elem_id=f"{prefix}-hr-option",
            )
        unit = _UnitControls(
            image=image,
            enabled=enabled,
            pixel_perfect=pixel_perfect,
            module=module,
            model=model,
            refresh=refresh,
            weight=weight,
            guidance_start=guidance_start,
            guidance_end=guidance_end,
            processor_res=processor_res,
            threshold_a=threshold_a,
            threshold_b=threshold_b,
            control_mode=control_mode,
            resize_mode=resize_mode,
            hr_option=hr_option,
            preview_button=preview_button,
            preview=preview,
        )
        self._wire_unit(index, unit)
        return unit

    def _wire_unit(self, index: int, unit: _UnitControls) -> None:
        def refresh(current: str) -> Any:
            if self.controlnet is not None:
                self.controlnet.library.refresh()
            choices = self.model_choices()
            return gr.update(choices=choices, value=current if current in choices else NONE)

        unit.refresh.click(
            refresh, inputs=unit.model, outputs=unit.model, show_progress="hidden", concurrency_limit=None
        )

        def preview(image: Image.Image | None, module: str, resolution: float, a: float, b: float) -> Any:
            if image is None:
                gr.Warning(f"ControlNet unit {index}: upload a control image to preview")
                return None
            try:
                return self.controlnet.detect(
                    module, [image], processor_res=resolution, threshold_a=a, threshold_b=b
                )[0]
            except (LookupError, ValueError) as exc:  # e.g. an annotator's weight file: named, not the path
                gr.Warning(for_client(f"ControlNet unit {index}: {exc}"))
                return None

        unit.preview_button.click(
            preview,
            inputs=[unit.image, unit.module, unit.processor_res, unit.threshold_a, unit.threshold_b],
            outputs=unit.preview,
            concurrency_limit=None,
        )

    def inputs(self) -> Sequence[Any]:
        return [component for unit in self.units for component in unit.inputs()]

    def request_values(self, data: Mapping[Any, Any]) -> dict[str, Any]:
        units = []
        for index, unit in enumerate(self.units):
            if not data.get(unit.enabled):
                continue
            image = data.get(unit.image)
            model = data.get(unit.model) or NONE
            if model == NONE:
                raise SectionError(f"ControlNet unit {index}: choose a model (or untick Enable)")
            if image is None and self.tab != "img2img":
                raise SectionError(f"ControlNet unit {index}: upload a control image (or untick Enable)")
            try:
                units.append(
                    ControlNetUnit(
                        enabled=True,
                        module=data.get(unit.module) or "none",
                        model=model,
                        weight=float(data.get(unit.weight, 1.0)),
                        image=_png(image) if image is not None else None,
                        guidance_start=float(data.get(unit.guidance_start, 0.0)),
                        guidance_end=float(data.get(unit.guidance_end, 1.0)),
                        processor_res=int(data.get(unit.processor_res, -1)),
                        threshold_a=float(data.get(unit.threshold_a, -1)),
                        threshold_b=float(data.get(unit.threshold_b, -1)),
                        pixel_perfect=bool(data.get(unit.pixel_perfect)),
                        control_mode=data.get(unit.control_mode) or CONTROL_MODES[0],
                        resize_mode=data.get(unit.resize_mode) or "Crop and Resize",
                        hr_option=(data.get(unit.hr_option) if unit.hr_option is not None else None)
                        or "Both",
                    )
                )
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}" for item in exc.errors()
                )
                raise SectionError(f"ControlNet unit {index}: {problems}") from exc
        return {"controlnet_units": tuple(units)} if units else {}

    def fill_outputs(self) -> Sequence[Any]:
        opened = [self.accordion] if self.accordion is not None else []
        return [*opened, *(component for unit in self.units for component in unit.pasted().values())]

    def fill(self, values: Mapping[str, Any], notes: list[str]) -> dict[Any, Any]:
        """A pasted infotext's ``ControlNet N`` lines into unit tab N, as the extension's paste does; the
        tabs it does not name are turned off. Each unit keeps its picture (the infotext has none).
        """
        pasted = values.get(CONTROLNET_UNITS)
        if pasted is None:
            return {}  # nothing said about ControlNet: the units stay as they are
        if not self.units:
            notes.extend(f"{unit.summary} was used; this program has no ControlNet units" for unit in pasted)
            return {}
        by_index = {unit.index: unit for unit in pasted}
        titles = self.controlnet.model_titles()
        if any(match_model(str(unit.values["model"]), titles)[0] is None for unit in pasted):
            titles = self.controlnet.model_titles(refresh=True)  # a file added since the last scan
        choices = self.model_choices()

        def find_module(name: str) -> str:
            return str(self.controlnet.preprocessor(name).name)

        updates: dict[Any, Any] = {}
        for index, controls in enumerate(self.units):
            unit = by_index.get(index)
            if unit is None:
                updates[controls.enabled] = False
                continue
            fields, unit_notes = resolve_names(unit, titles, find_module)
            notes.extend(unit_notes)
            for name, component in controls.pasted().items():
                if name not in fields:
                    continue
                if name == "model":
                    model = fields[name]  # listed even when made for another family: Generate says so
                    listed = choices if model in choices else [*choices, model]
                    updates[component] = gr.update(value=model, choices=listed)
                else:
                    updates[component] = fields[name]
        beyond = [unit.summary for unit in pasted if unit.index >= len(self.units)]
        if beyond:
            notes.append(f"{', '.join(beyond)} not restored: this page shows {len(self.units)} ControlNet "
                         "units (Settings > ControlNet > Multi-ControlNet: number of units)")
        restored = [str(unit.index) for unit in pasted if unit.index < len(self.units)]
        if restored:
            updates[self.accordion] = gr.Accordion(open=True)  # show what was restored
            which, keeps = ((f"unit {restored[0]}", "it keeps") if len(restored) == 1
                            else (f"units {', '.join(restored)}", "each keeps"))
            notes.append(f"ControlNet {which} restored; the infotext holds no control image, so {keeps} the "
                         "one it has")
        return updates

    def wire_page_load(self, demo: gr.Blocks, services: Any) -> None:
        if not self.units:
            return
        models = [unit.model for unit in self.units]

        def fill(*current: str) -> dict[Any, Any]:
            choices = self.model_choices()
            return {
                model: gr.update(choices=choices, value=value if value in choices else NONE)
                for model, value in zip(models, current, strict=True)
            }

        demo.load(fill, inputs=models, outputs=set(models), show_progress="hidden", concurrency_limit=None)

"""Form sections: how a feature plugs into the txt2img and img2img forms without the tab knowing it.

A section is one feature's part of a generation form, usually an accordion: hires fix today
(:mod:`.hires`); ControlNet units or a "Script" dropdown tomorrow. A tab renders the sections it is
given in its parameters column and sends their values with the request; it never names a feature.

How a section plugs in (subclass :class:`FormSection`, override what the feature needs):

1. ``render(ctx)`` lays out the section's components in the column that is open, at the tab's
   ``slot`` (:data:`PARAMETERS`: under the CFG scale, where hires fix sits; :data:`SCRIPTS`: at the
   bottom of the column, where A1111 puts ControlNet and the Script dropdown). A component whose value
   *is* a form field (a number, a text, a choice named in :data:`sdweb.ui.fields.FORM_FIELDS` or
   ``IMG2IMG_FIELDS``; list a new one there) goes into ``ctx.form`` under the field's name, as the
   tab's own controls do: its value then goes with the request, converted as the form's are, and
   "send to txt2img" (PNG Info, Gallery, History) fills it.
2. ``inputs()`` lists the section's other components whose values it needs (a unit's image, a script's
   arguments); ``request_values(data)`` turns their values (``{component: value}``) into request
   fields, added to the form's before the request is validated (a bad value is then a message naming
   the field). Raise :class:`SectionError` with a message for the user when they cannot be used.
3. ``wire_page_load(demo, services)`` fills lists that change while the server runs when a page opens
   (after the tab's own lists).
4. ``fill_outputs()`` / ``fill(values, notes)``: a "send to" (PNG Info, Gallery, History) fills the
   section's own components (those not in ``ctx.form``) from the sent values, adding notes for the user.
5. ``job_submitter(data)``: a section that queues the job itself (a script running many requests)
   returns ``submit(params, images=(), mask=None) -> Job``; the first section that does replaces the
   tab's own submit. Default None.

Which sections each tab shows is :func:`sdweb.ui.sections.txt2img_sections` /
:func:`~sdweb.ui.sections.img2img_sections`: a new feature is a module in this package plus one line there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gradio as gr

logger = logging.getLogger(__name__)

#: Slot under the CFG scale slider, among the generation parameters (hires fix).
PARAMETERS = "parameters"
#: Slot at the bottom of the parameters column (A1111's place for ControlNet and the Script dropdown).
SCRIPTS = "scripts"


class SectionError(ValueError):
    """A section's values cannot be used; the message is for the user (the tab shows it, nothing runs)."""


@dataclass
class SectionContext:
    """What a section is given to render itself in a tab's form."""

    services: Any
    #: The tab's id ("txt2img", "img2img"), also the prefix of elem ids (``txt2img-hr-scale``).
    tab: str
    #: The tab's request-field components by field name; a section adds its own.
    form: dict[str, Any]
    #: The form's starting values by field name (:data:`sdweb.ui.fields.FORM_DEFAULTS`).
    defaults: Mapping[str, Any]


class FormSection:
    """One feature's part of a generation form. The defaults do nothing: override what you need."""

    #: Where the tab renders the section: :data:`PARAMETERS` or :data:`SCRIPTS`.
    slot: ClassVar[str] = PARAMETERS

    def render(self, ctx: SectionContext) -> None:
        """Lay out the components; put those holding request fields into ``ctx.form``."""
        raise NotImplementedError

    def inputs(self) -> Sequence[Any]:
        """Components not in ``ctx.form`` whose values :meth:`request_values` reads."""
        return ()

    def request_values(self, data: Mapping[Any, Any]) -> dict[str, Any]:
        """Request fields from :meth:`inputs`' values (``data[component]``); SectionError if unusable."""
        return {}

    def wire_page_load(self, demo: gr.Blocks, services: Any) -> None:
        """Fill lists when a page opens (lists that change while the server runs)."""

    def fill_outputs(self) -> Sequence[Any]:
        """Components not in ``ctx.form`` that :meth:`fill` may update."""
        return ()

    def fill(self, values: Mapping[str, Any], notes: list[str]) -> dict[Any, Any]:
        """Updates ``{component: value}`` of :meth:`fill_outputs` from sent values; append notes."""
        return {}

    def job_submitter(self, data: Mapping[Any, Any]) -> Callable[..., Any] | None:
        """``submit(params, images=(), mask=None) -> Job`` when this section queues the job itself."""
        return None


class FormSections:
    """The sections of one tab's form, in order; the tab talks to them only through this."""

    def __init__(self, sections: Sequence[FormSection] = ()) -> None:
        self._sections = tuple(sections)

    def __iter__(self) -> Iterator[FormSection]:
        return iter(self._sections)

    def render(self, ctx: SectionContext, slot: str) -> None:
        """Render the sections that belong in ``slot``, in order (call inside the open column)."""
        for section in self._sections:
            if section.slot == slot:
                section.render(ctx)

    def inputs(self) -> set[Any]:
        """Every section's extra input components (add them to the generate event's inputs)."""
        return {component for section in self._sections for component in section.inputs()}

    def request_values(self, data: Mapping[Any, Any]) -> dict[str, Any]:
        """The request fields all sections add; SectionError (for the user) when one cannot be used."""
        values: dict[str, Any] = {}
        for section in self._sections:
            values.update(section.request_values(data))
        return values

    def wire_page_load(self, demo: gr.Blocks, services: Any) -> None:
        for section in self._sections:
            section.wire_page_load(demo, services)

    def fill_outputs(self) -> set[Any]:
        """Every section's components a "send to" may update (add them to the send event's outputs)."""
        return {component for section in self._sections for component in section.fill_outputs()}

    def fill(self, values: Mapping[str, Any], notes: list[str]) -> dict[Any, Any]:
        """The sections' updates for sent values; their notes are appended to ``notes``."""
        updates: dict[Any, Any] = {}
        for section in self._sections:
            updates.update(section.fill(values, notes))
        return updates

    def job_submitter(self, data: Mapping[Any, Any]) -> Callable[..., Any] | None:
        """The first section's own ``submit(params, images=(), mask=None)``, or None (the tab submits)."""
        for section in self._sections:
            submitter = section.job_submitter(data)
            if submitter is not None:
                return submitter
        return None

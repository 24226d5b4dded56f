"""Form sections: features that plug into the txt2img / img2img forms (the seam is :mod:`.base`).

* :mod:`.base`: :class:`FormSection` (what a section implements), :class:`FormSections` (what a tab
  calls), :class:`SectionContext`, the slots.
* :mod:`.hires`: the txt2img "Hires. fix" accordion.
* :mod:`.model_family`: Flux's "Distilled CFG Scale" and the switch to a model family's defaults.
* :mod:`.scripts`: the "Script" dropdown (X/Y/Z plot, prompt matrix ...) of both tabs.
* :mod:`.face_restore`: the "Restore faces" checkbox of both tabs.
* :mod:`.controlnet`: the "ControlNet" accordion (a tab per unit) of both tabs.

:func:`txt2img_sections` and :func:`img2img_sections` say which sections each tab shows, in order.
"""

from __future__ import annotations

import logging
from typing import Any

from sdweb.ui.sections.base import (
    PARAMETERS,
    SCRIPTS,
    FormSection,
    FormSections,
    SectionContext,
    SectionError,
)
from sdweb.ui.sections.controlnet import ControlNetSection
from sdweb.ui.sections.face_restore import FaceRestoreSection
from sdweb.ui.sections.hires import HiresFixSection
from sdweb.ui.sections.model_family import ModelFamilySection
from sdweb.ui.sections.scripts import ScriptSection

logger = logging.getLogger(__name__)

__all__ = ["PARAMETERS", "SCRIPTS", "FormSection", "FormSections", "SectionContext", "SectionError",
           "img2img_sections", "txt2img_sections"]


def txt2img_sections(services: Any) -> FormSections:
    """The sections of the txt2img form: the model family's controls, hires fix, Restore faces, ControlNet,
    the Script dropdown.
    """
    return FormSections([ModelFamilySection(), HiresFixSection(), FaceRestoreSection(),
                         ControlNetSection(services, "txt2img"), ScriptSection(services, "txt2img")])


def img2img_sections(services: Any) -> FormSections:
    """The sections of the img2img form: the model family's controls, Restore faces, the Script dropdown
    (its inpaint and outpaint accordions are its own).
    """
    return FormSections([ModelFamilySection(), FaceRestoreSection(), ControlNetSection(services, "img2img"),
                         ScriptSection(services, "img2img")])

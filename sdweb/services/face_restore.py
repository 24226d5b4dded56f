"""FaceRestoreService: which face restorers exist, whether they can run, and restoring generated images.

``/sdapi/v1/face-restorers``, the UI's "Restore faces" checkbox and the generation service's
``restore_faces`` come here. The restorer and CodeFormer's weight are settings (A1111's keys
``face_restoration_model`` and ``code_former_weight``).

Restoration is optional: it needs model files in ``models/GFPGAN`` / ``models/Codeformer`` and the
``upscalers`` extra. When it cannot run, :meth:`FaceRestoreService.restore` gives the images back
unchanged with a sentence saying why restoration was skipped and what to install (the API puts it
in ``info`` as a warning; the UI shows it): a missing restorer never costs the user the images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from sdweb.config import OptionSpec, OptionsStore

logger = logging.getLogger(__name__)

#: A1111's face restoration settings.
FACE_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("face_restoration_model", "CodeFormer", "Face restoration model", "Face restoration",
               choices=("CodeFormer", "GFPGAN")),
    OptionSpec("code_former_weight", 0.5, "CodeFormer weight (0 = maximum effect, 1 = minimum effect)",
               "Face restoration", minimum=0.0, maximum=1.0),
)


class FaceRestoreService:
    """The face restorers (listing without torch) and restoring images on the engine."""

    def __init__(self, library: Any, options: OptionsStore, engine: Callable[[], Any] | None = None,
                 problem: Callable[[Any, str], str | None] | None = None, worker: Any = None) -> None:
        """Args:
        library: ``sdweb.engine.face_restore.FaceModelLibrary``.
        options: the settings (restorer name, CodeFormer weight).
        engine: returns the engine (its ``restore_faces(image, name, weight)``); None: no engine.
        problem: ``(library, name) -> reason | None`` (default: the engine module's check).
        worker: the GPU worker Extras restorations queue on (a generation's run on it already).
        """
        self.library = library
        self._options = options
        self._engine = engine
        self._problem = problem
        self._worker = worker

    def names(self) -> list[str]:
        from sdweb.engine.face_restore import FACE_RESTORERS

        return list(FACE_RESTORERS)

    def items(self) -> list[dict[str, Any]]:
        """``/sdapi/v1/face-restorers``: A1111's ``{"name", "cmd_dir"}`` for each restorer."""
        return [{"name": name, "cmd_dir": str(self.library.folder(name))} for name in self.names()]

    def selected(self) -> str:
        return str(self._options.get("face_restoration_model") or "CodeFormer")

    def problem(self, name: str | None = None) -> str | None:
        """Why ``name`` (default: the selected restorer) cannot restore faces here, or None."""
        check = self._problem
        if check is None:
            from sdweb.engine.face_restore import restoration_problem as check
        if self._engine is None:
            return "this server has no engine to run face restoration"
        return check(self.library, name or self.selected())

    def restore(self, images: Sequence[Any], name: str | None = None,
                weight: float | None = None) -> tuple[list[Any], str | None, str | None]:
        """``(images, restorer used or None, warning or None)``; runs in the caller's thread (a job's).

        When the restorer cannot run, or fails on an image, the images come back as they were and the
        warning says why.
        """
        name = name or self.selected()
        weight = float(self._options.get("code_former_weight")) if weight is None else weight
        problem = self.problem(name)
        if problem is not None:
            logger.warning("face restoration skipped: %s", problem)
            return list(images), None, f"face restoration was skipped: {problem}"
        try:
            engine = self._engine() if self._engine is not None else None
            restored = [engine.restore_faces(image, name, weight) for image in images]  # type: ignore[union-attr]
        except Exception as exc:  # a broken model file: keep the images, say what happened
            logger.exception("face restoration with %s failed", name)
            return list(images), None, f"face restoration was skipped: {name} failed ({exc})"
        return restored, name, None

    def restore_for_extras(self, image: Any, *, gfpgan_visibility: float, codeformer_visibility: float,
                           codeformer_weight: float) -> tuple[Any, list[str], list[str]]:
        """Extras' face restoration (A1111's): GFPGAN, then CodeFormer, each blended in by its visibility.

        Returns ``(image, info lines, warnings)``; a restorer that cannot run is skipped with a warning.
        Runs on the GPU worker (Extras requests come from other threads).
        """
        lines: list[str] = []
        warnings: list[str] = []
        for name, visibility in (("GFPGAN", gfpgan_visibility), ("CodeFormer", codeformer_visibility)):
            if visibility <= 0:
                continue

            def run(source: Any = image, restorer: str = name) -> tuple[list[Any], str | None, str | None]:
                return self.restore([source], restorer, codeformer_weight)

            if self._worker is None or self._worker.on_worker_thread():
                (restored,), used, note = run()
            else:
                (restored,), used, note = self._worker.submit(run, label=f"restore faces ({name})").wait()
            if note:
                warnings.append(note)
                continue
            from PIL import Image

            base = image.convert("RGB")
            image = restored if visibility >= 1 else Image.blend(base, restored.convert("RGB"), visibility)
            if name == "GFPGAN":
                lines.append(f"GFPGAN visibility: {round(visibility, 2)}")
            else:
                lines.append(f"CodeFormer w: {round(codeformer_weight, 2)}, CodeFormer visibility: "
                             f"{round(visibility, 2)}")
        return image, lines, warnings

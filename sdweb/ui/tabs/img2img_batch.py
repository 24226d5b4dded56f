"""img2img's "Generate batch": each uploaded picture is its own job with the tab's settings, run one after
the other on our GPU queue; all results are shown together, unusable pictures are skipped and named.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from sdweb.params import GenerationResult, Img2ImgParams
from sdweb.safepath import for_client
from sdweb.services.generation import GenerationError
from sdweb.ui.components.jobs import POLL_INTERVAL, SessionJobs, progress_html, session_of
from sdweb.ui.components.messages import error_html, infotext_html, note_html
from sdweb.ui.components.results import ResultPanel, ResultView, gallery_items
from sdweb.ui.components.uploads import UploadError, read_upload

logger = logging.getLogger(__name__)

#: Most pictures one "Generate batch" takes (each is its own job on the GPU queue).
MAX_BATCH_PICTURES = 100


def batch_paths(files: Sequence[Any] | None) -> list[str]:
    """The uploaded batch files' paths (gradio gives paths or file objects), in upload order.

    Raises:
        UploadError: no file, or more than :data:`MAX_BATCH_PICTURES`.
    """
    paths = [str(getattr(item, "name", item)) for item in (files or []) if item]
    if not paths:
        raise UploadError("Upload the pictures for the batch first.")
    if len(paths) > MAX_BATCH_PICTURES:
        raise UploadError(f"{len(paths)} pictures: a batch takes at most {MAX_BATCH_PICTURES}; split it.")
    return paths


def combined_view(results: Sequence[GenerationResult]) -> ResultView:
    """One result view over several jobs' results (a batch), in order."""
    view = ResultView()
    for result in results:
        view.seeds.extend(result.seeds)
        view.subseeds.extend(result.subseeds)
        view.infotexts.extend(result.infotexts)
        view.items.extend(gallery_items(result))
    return view


@dataclass
class _BatchState:
    done: int = 0
    results: list[GenerationResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    interrupted: bool = False


async def run_batch(
    services: Any,
    paths: Sequence[str],
    make_job: Callable[[Image.Image], tuple[Img2ImgParams, list[Image.Image], Image.Image | None]],
    panel: ResultPanel,
    jobs: SessionJobs,
    request: gr.Request | None,
) -> AsyncIterator[dict[Any, Any]]:
    """Run ``paths`` one after the other as img2img jobs (``make_job(picture)``), then show all results.

    Progress is streamed per picture. A picture that cannot be read or used is skipped and named at the
    end; a refused request stops the batch (the settings are the same for all); Interrupt stops the
    batch after keeping what was made.
    """
    state = _BatchState()
    session = session_of(request)
    started = time.monotonic()
    for index, path in enumerate(paths):
        name = Path(path).name
        try:
            picture = await asyncio.to_thread(read_upload, path, name)
            params, images, mask = make_job(picture)
            job = await asyncio.to_thread(services.generation.submit_img2img, params, images, mask=mask,
                                          source="ui")
        except UploadError as exc:
            state.skipped.append(f"{name} ({exc})")
            continue
        except GenerationError as exc:
            gr.Warning(for_client(exc.message))
            yield {panel.progress: error_html(exc.message)}
            return
        jobs.start(session, job.id)
        try:
            while job.task is not None and not job.task.done:
                progress = services.generation.progress(job)
                yield {panel.progress: f'<div class="sdweb-note">Picture {index + 1} of {len(paths)}: '
                                       f"{html.escape(name)}</div>{progress_html(progress)}"}
                await asyncio.sleep(POLL_INTERVAL)
        finally:
            jobs.finish(session, job.id)
        try:
            result = job.wait(timeout=0)
        except GenerationError as exc:
            state.skipped.append(f"{name} ({exc.message})")
            continue
        state.done += 1
        state.results.append(result)
        if result.interrupted or (job.task is not None and job.task.cancelled):
            state.interrupted = True
            break
    yield _batch_finished(state, len(paths), panel, time.monotonic() - started)


def _batch_finished(state: _BatchState, total: int, panel: ResultPanel, seconds: float) -> dict[Any, Any]:
    view = combined_view(state.results)
    count = len(view.items)
    text = f"Batch: {count} image{'s' if count != 1 else ''} from {state.done} of {total} pictures in " \
           f"{seconds:.1f} s."
    if state.interrupted:
        text = "Interrupted. " + text
    if state.skipped:
        text += " Skipped: " + "; ".join(state.skipped)
    return {
        panel.progress: (error_html if state.skipped and not view.items else note_html)(text),
        panel.message: "",
        panel.preview: gr.update(value=None, visible=False),
        panel.gallery: gr.update(value=view.items, selected_index=0 if view.items else None),
        panel.infotext: infotext_html(view.infotext),
        panel.view: view,
    }

"""Running a generation job from a tab: submit to our GPU queue, stream its progress, show the result.

The generate handlers of txt2img and img2img submit to OUR queue (``services.generation.submit``...) and
poll the job (:func:`run_job`), so several users can press Generate at once and each sees their position.
:class:`SessionJobs` remembers which job each browser session runs, so Interrupt and Skip
(:func:`wire_interrupt_skip`) reach only the user's own job. The progress and "done" lines are pure
functions tested without a browser.
"""

from __future__ import annotations

import asyncio
import html
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import gradio as gr

from sdweb.params import GenerationResult, JobProgress
from sdweb.safepath import for_client
from sdweb.services.generation import GenerationError
from sdweb.ui.components.messages import error_html, infotext_html, note_html
from sdweb.ui.components.results import ResultPanel, ResultView

logger = logging.getLogger(__name__)

#: How often a generate handler looks at its job (seconds).
POLL_INTERVAL = 0.3


def _format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    minutes, secs = divmod(seconds, 60)
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def progress_html(progress: JobProgress) -> str:
    """The progress line a user sees: queue position, batch, step, percentage, ETA."""
    if progress.state == "queued":
        position = progress.queue_position
        where = f"position {position} in the queue" if position else "starting"
        return f'<div class="sdweb-progress">Waiting for the GPU: {where}…</div>'
    percent = int(progress.fraction * 100)
    parts = []
    if progress.job_count > 1:
        parts.append(f"Batch {min(progress.job_no + 1, progress.job_count)}/{progress.job_count}")
    if progress.sampling_steps:
        parts.append(f"Step {progress.sampling_step}/{progress.sampling_steps}")
    parts.append(f"{percent}%")
    eta = progress.eta_seconds
    if eta is not None:
        parts.append(f"ETA {_format_seconds(eta)}")
    if progress.interrupted:
        parts.append("interrupting…")
    text = " · ".join(parts)
    return (
        f'<div class="sdweb-progress"><div class="sdweb-progress-bar">'
        f'<div style="width:{percent}%"></div></div>{html.escape(text)}</div>'
    )


def finished_html(result: GenerationResult, seconds: float | None) -> str:
    """The line shown when a job is done: how many images, how long, or what an interrupt kept."""
    count = len(result.images)
    noun = "image" if count == 1 else "images"
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    if result.interrupted:
        return note_html(f"Interrupted: kept {count} {noun} made so far{took}.")
    return note_html(f"Done: {count} {noun}{took}.")


class SessionJobs:
    """Which job each browser session is running, so Interrupt/Skip reach only the user's own job."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, str] = {}

    def start(self, session: str, job_id: str) -> None:
        with self._lock:
            self._jobs[session] = job_id

    def finish(self, session: str, job_id: str) -> None:
        with self._lock:
            if self._jobs.get(session) == job_id:
                del self._jobs[session]

    def get(self, session: str) -> str | None:
        with self._lock:
            return self._jobs.get(session)


def session_of(request: gr.Request | None) -> str:
    """The browser session a gradio event came from ("anonymous" without one)."""
    return str(getattr(request, "session_hash", None) or "anonymous")


async def run_job(
    services: Any,
    submit: Callable[[], Any],
    panel: ResultPanel,
    jobs: SessionJobs,
    request: gr.Request | None,
) -> AsyncIterator[dict[Any, Any]]:
    """Submit a job to our GPU queue (``submit()`` returns the Job), stream its progress, show the result.

    Yields gradio updates for ``panel``'s components. A refused request (GenerationError) is shown, not
    raised; the job is registered under the user's session so Interrupt/Skip reach it.
    """
    try:
        job = await asyncio.to_thread(submit)
    except GenerationError as exc:
        gr.Warning(for_client(exc.message))
        yield {panel.progress: error_html(exc.message)}
        return
    session = session_of(request)
    jobs.start(session, job.id)
    yield {panel.message: ""}
    shown_preview: Any = None
    try:
        while job.task is not None and not job.task.done:
            state = services.generation.progress(job)
            update: dict[Any, Any] = {panel.progress: progress_html(state)}
            if state.preview is not None and state.preview is not shown_preview:
                shown_preview = state.preview
                update[panel.preview] = gr.update(value=shown_preview, visible=True)
            yield update
            await asyncio.sleep(POLL_INTERVAL)
    finally:
        jobs.finish(session, job.id)
    yield _finished_updates(job, panel)


def _finished_updates(job: Any, panel: ResultPanel) -> dict[Any, Any]:
    hide_preview = gr.update(value=None, visible=False)
    if job.task is not None and job.task.cancelled:
        # Interrupted while still queued: it never reached the GPU.
        return {
            panel.progress: note_html("Interrupted before it started; nothing was made."),
            panel.message: "",
            panel.preview: hide_preview,
        }
    try:
        result = job.wait(timeout=0)
    except GenerationError as exc:
        gr.Warning(for_client(exc.message))
        return {panel.progress: error_html(exc.message), panel.preview: hide_preview}
    started = job.progress.started_at
    seconds = time.monotonic() - started if started is not None else None
    result_view = ResultView.of(result)
    done = finished_html(result, seconds)
    for warning in result.warnings:  # e.g. face restoration skipped, and why
        gr.Warning(for_client(warning))
        done += note_html(for_client(warning))
    return {
        panel.progress: done,
        panel.message: "",
        panel.preview: hide_preview,
        panel.gallery: gr.update(value=result_view.items, selected_index=0 if result.images else None),
        panel.infotext: infotext_html(result_view.infotext),
        panel.view: result_view,
    }


def wire_interrupt_skip(
    services: Any, jobs: SessionJobs, interrupt: gr.Button, skip: gr.Button, message: gr.HTML
) -> None:
    """Interrupt / Skip reach only the job this browser session started from the tab."""

    def interrupt_job(request: gr.Request) -> str:
        job_id = jobs.get(session_of(request))
        if job_id is None or not services.generation.interrupt(job_id):
            return note_html("Nothing of yours is running.")
        return note_html("Interrupting… the images finished so far are kept.")

    def skip_image(request: gr.Request) -> str:
        job_id = jobs.get(session_of(request))
        if job_id is None or not services.generation.skip(job_id):
            return note_html("Nothing of yours is running.")
        return note_html("Skipping the current image…")

    interrupt.click(interrupt_job, outputs=message, concurrency_limit=None, show_progress="hidden")
    skip.click(skip_image, outputs=message, concurrency_limit=None, show_progress="hidden")

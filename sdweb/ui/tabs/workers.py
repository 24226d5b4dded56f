"""The Workers view: which workers run jobs, on which host and device, holding which model.

A table (host, device, model held, busy/idle, jobs done, last error), refreshed on demand and every few
seconds while the page is open. With the in-process worker it has one row; with ``--workers`` or
``--ray-address`` one per Ray worker (docs/multi-gpu.md), lost ones included with the reason.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

logger = logging.getLogger(__name__)

HEADERS = ["Worker", "Host", "Device", "State", "Model", "Jobs done", "Last error"]
#: Seconds between automatic refreshes of the table.
REFRESH_SECONDS = 5.0


def worker_rows(services: Any) -> list[list[Any]]:
    """The table's rows, one per worker."""
    return [[status.id, status.host, status.device, status.state, status.model or "-", status.jobs_done,
             status.last_error or ""] for status in services.generation.workers()]


def render_workers_tab(services: Any) -> gr.Dataframe:
    """Build the view inside the current Blocks context; returns the table."""
    with gr.Row():
        refresh = gr.Button("Refresh", elem_id="workers-refresh", scale=0)
    table = gr.Dataframe(headers=HEADERS, value=lambda: worker_rows(services), interactive=False,
                         elem_id="workers-table", every=REFRESH_SECONDS, wrap=True)
    refresh.click(lambda: worker_rows(services), outputs=table, queue=False, show_progress="hidden")
    return table

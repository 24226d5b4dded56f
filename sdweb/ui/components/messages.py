"""The short HTML lines every tab shows: an error, a note, a result's infotext (text escaped)."""

from __future__ import annotations

import html
import logging

logger = logging.getLogger(__name__)


def error_html(message: str) -> str:
    """A red line saying what went wrong (the server's folders shown relative to the data folder)."""
    from sdweb.safepath import for_client

    return f'<div class="sdweb-error">{html.escape(for_client(message))}</div>'


def note_html(message: str) -> str:
    """A plain line telling the user what happened."""
    return f'<div class="sdweb-note">{html.escape(message)}</div>'


def infotext_html(infotext: str) -> str:
    """An image's generation parameters under the gallery; empty without any."""
    if not infotext:
        return ""
    return f'<div class="sdweb-infotext">{html.escape(infotext)}</div>'

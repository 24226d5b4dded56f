"""One job's extra networks: its LoRA tags applied to the pipeline, its embeddings ready for the encoder.

:func:`job_extra_networks` is what the txt2img loop enters around a job (``sdweb.engine.generate``): it
reads the ``<lora:...>`` tags of the positive prompt (refusing unknown names and kinds before any model
work), applies the LoRAs for the block and removes them after it, and gives the loop a pipeline view
whose tokenizer and text encoder understand the embeddings that fit the model. Its infotext pairs
("Lora hashes", "TI hashes") are computed once, after the prompts were encoded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sdweb.engine.extra_networks.embeddings import EmbeddingLibrary, EmbeddingTextView, text_encoder_widths
from sdweb.engine.extra_networks.lora import (
    LoraError,
    LoraLibrary,
    LoraRequest,
    applied_loras,
    lora_hashes_infotext,
    lora_requests,
)
from sdweb.prompts.parser import strip_extra_networks

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtraNetworks:
    """The libraries the engine uses (either may be None: that kind is then unavailable)."""

    loras: LoraLibrary | None = None
    embeddings: EmbeddingLibrary | None = None


@dataclass
class JobNetworks:
    """What a job gets: the pipeline (or embedding view) to encode with, and the infotext facts."""

    text_pipe: Any
    loras: list[LoraRequest] = field(default_factory=list)
    _networks: ExtraNetworks | None = None
    _infotext: dict[str, str] | None = None

    @property
    def used_embeddings(self) -> list[str]:
        view = self.text_pipe
        return list(view.used) if isinstance(view, EmbeddingTextView) else []

    def infotext(self) -> dict[str, str]:
        """``{"Lora hashes": ..., "TI hashes": ...}`` for what the job used (call after encoding)."""
        if self._infotext is None:
            pairs: dict[str, str] = {}
            networks = self._networks
            if networks is not None and networks.loras is not None and self.loras:
                value = lora_hashes_infotext(self.loras, networks.loras)
                if value:
                    pairs["Lora hashes"] = value
            used = self.used_embeddings
            if networks is not None and networks.embeddings is not None and used:
                value = networks.embeddings.hashes_infotext(used)
                if value:
                    pairs["TI hashes"] = value
            self._infotext = pairs
        return dict(self._infotext)


@contextmanager
def job_extra_networks(pipe: Any, prompt: str, networks: ExtraNetworks | None) -> Iterator[JobNetworks]:
    """Apply ``prompt``'s LoRA tags to ``pipe`` for the block and prepare its embeddings; see module doc.

    Raises:
        LoraError: unknown LoRA name or tag kind, bad weight, or a file diffusers cannot apply.
    """
    _text, calls = strip_extra_networks(prompt)
    if calls and (networks is None or networks.loras is None):
        tags = ", ".join(f"<{call.kind}:{':'.join(call.items)}>" for call in calls)
        raise LoraError(f"extra networks in the prompt ({tags}) but this engine has no LoRA folder")
    requests = lora_requests(calls, networks.loras) if calls and networks and networks.loras else []
    usable = {}
    if networks is not None and networks.embeddings is not None:
        usable, _skipped = networks.embeddings.split_for(text_encoder_widths(pipe))
    text_pipe = EmbeddingTextView(pipe, usable) if usable else pipe
    with applied_loras(pipe, requests):
        yield JobNetworks(text_pipe=text_pipe, loras=requests, _networks=networks)

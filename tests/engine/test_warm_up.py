"""Warm-up when a model loads (issue 20): the start-up load runs one small real job (prompt grammar, sampler,
UNet, VAE, live preview, PNG), so the user's first image does not pay those first-call costs; the user's
requests never run it, and it leaves nothing behind (no image, no history row, no seed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sdweb.engine import encode
from sdweb.engine.runtime import Engine
from sdweb.params import GenerationParams
from tests.engine.test_previews import write_taesd
from tests.fakes import make_settings
from tests.fixtures.checkpoints import write_tiny_sd1


def test_the_warm_up_runs_when_the_model_loads_and_not_on_the_first_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sdweb.services.factory import build_services

    root = tmp_path / "data"
    write_tiny_sd1(root / "models" / "Stable-diffusion" / "tiny.safetensors")
    write_taesd(root / "models" / "VAE-approx")
    events: list[str] = []
    warm_up, encode_texts = Engine.warm_up, encode.PromptEncoder.encode_texts

    def spy_warm_up(self: Engine, model: Any) -> None:
        events.append("warm-up")
        warm_up(self, model)

    def spy_encode(self: Any, texts: list[str], **kwargs: Any) -> Any:
        events.append("encode " + " | ".join(texts))
        return encode_texts(self, texts, **kwargs)

    monkeypatch.setattr(Engine, "warm_up", spy_warm_up)
    monkeypatch.setattr(encode.PromptEncoder, "encode_texts", spy_encode)
    services = build_services(make_settings(root))
    try:
        services.options.update({"show_progress_type": "TAESD"})
        services.models.load_selected(wait=True)  # as the server does at start-up
        # The load ran the real prompt path (A1111's grammar: the emphasis is parsed out) in the warm-up job.
        assert events[0] == "warm-up"
        assert any(event.startswith("encode ") and "warm-up" in event for event in events[1:]), events
        # The live-preview decoder (TAESD, as the setting asks) was read then, not by the first preview.
        engine = services.models._engine()
        assert engine.previews._loaded
        # It left nothing a user would see: no image, no history row, no "last seed".
        assert not list(root.rglob("*.png"))
        assert services.history.count() == 0
        assert services.generation.last_seed is None

        events.clear()
        result = services.generation.generate(GenerationParams(prompt="a lighthouse", steps=2, width=64,
                                                                height=64, seed=3))
        assert len(result.images) == 1
        assert "warm-up" not in events  # the user's first request does not warm up again
        assert events == ["encode a lighthouse | "]  # its own prompts, encoded once
        # Loading it again (already loaded) does not warm up again either.
        services.models.load_selected(wait=True)
        assert "warm-up" not in events
    finally:
        services.worker.close()

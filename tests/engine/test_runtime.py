"""The Engine facade: which checkpoint and VAE a request runs on, held through the cache for the job."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from sdweb.engine.runtime import Engine
from sdweb.params import JobControl
from tests.engine.conftest import TinyInfo, TinyModel, tiny_params


@dataclass
class FakeCache:
    model: TinyModel
    current: Any = None
    uses: list[tuple[Any, Any]] = field(default_factory=list)
    in_use: bool = False

    @contextmanager
    def use(self, info: Any, vae: Any = None) -> Iterator[TinyModel]:
        self.uses.append((info, vae))
        self.in_use = True
        try:
            self.model.info = info
            self.current = self.model
            yield self.model
        finally:
            self.in_use = False

    def loaded(self) -> list[str]:
        return [self.model.info.title] if self.current else []

    def unload_all(self) -> None:
        self.current = None


class FakeRegistry:
    def __init__(self) -> None:
        self.found: list[str] = []

    def find(self, query: str) -> TinyInfo:
        self.found.append(query)
        if query == "missing":
            raise LookupError("checkpoint 'missing' not found; known: tiny-sd1")
        return TinyInfo(model_name=query, shorthash=None)  # type: ignore[arg-type]

    def ensure_hash(self, info: TinyInfo) -> TinyInfo:
        return replace(info, shorthash="feedc0ffee")


class FakeVaes:
    def resolve(self, choice: str | None, info: Any) -> Path | None:
        return None if choice in (None, "Automatic", "None") else Path("/vae") / choice


class FakeOptions(dict):
    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key, default)


def _engine(sd1_model: TinyModel, samplers: Any, **options: Any) -> tuple[Engine, FakeCache, FakeRegistry]:
    cache, registry = FakeCache(sd1_model), FakeRegistry()
    engine = Engine(cache, registry, FakeVaes(), samplers, runtime=None, options=FakeOptions(options))
    return engine, cache, registry


def test_named_checkpoint_is_found_hashed_and_held_for_the_job(sd1_model, samplers) -> None:
    engine, cache, registry = _engine(sd1_model, samplers, sd_vae="Automatic")
    seen_in_use: list[bool] = []
    run = engine.txt2img(tiny_params(checkpoint="other", vae="ft-mse.safetensors"), control=JobControl(),
                         on_step=lambda _: seen_in_use.append(cache.in_use))
    assert registry.found == ["other"]
    assert cache.uses[0][1] == Path("/vae/ft-mse.safetensors")
    assert (run.model_name, run.model_hash) == ("other", "feedc0ffee")
    assert seen_in_use and all(seen_in_use)  # the model stays held while the loop runs
    assert len(run.images) == 1


def test_no_checkpoint_means_the_current_model_or_the_setting(sd1_model, samplers) -> None:
    engine, cache, registry = _engine(sd1_model, samplers, sd_model_checkpoint="chosen", sd_vae="None")
    engine.txt2img(tiny_params(), control=JobControl(), on_step=lambda _: None)
    assert registry.found == ["chosen"] and cache.uses[0][1] is None
    engine.txt2img(tiny_params(), control=JobControl(), on_step=lambda _: None)
    assert registry.found == ["chosen"]  # the current model is reused without a lookup


def test_nothing_selected_is_a_clear_error(sd1_model, samplers) -> None:
    engine, _cache, _registry = _engine(sd1_model, samplers)
    with pytest.raises(LookupError, match="no checkpoint selected"):
        engine.txt2img(tiny_params(), control=JobControl(), on_step=lambda _: None)
    with pytest.raises(LookupError, match="not found"):
        engine.txt2img(tiny_params(checkpoint="missing"), control=JobControl(), on_step=lambda _: None)


def test_token_counter_with_and_without_a_model(sd1_model, samplers) -> None:
    engine, cache, _registry = _engine(sd1_model, samplers)
    assert engine.count_tokens("a photo of a cat") == (5, 75)  # bundled tokenizer, nothing loaded
    cache.current = sd1_model
    assert engine.count_tokens(" ".join(["cat"] * 80)) == (80, 150)


def test_load_and_unload(sd1_model, samplers) -> None:
    engine, cache, _registry = _engine(sd1_model, samplers)
    loaded = engine.load(TinyInfo(shorthash=None))  # type: ignore[arg-type]
    assert loaded.info.shorthash == "feedc0ffee"
    assert engine.describe()["loaded_models"] == [loaded.info.title]
    engine.unload_all()
    assert cache.current is None


@pytest.mark.parametrize(("setting", "expected"), [({}, 1.0), ({"inpainting_mask_weight": 0.25}, 0.25)])
def test_the_inpainting_mask_strength_setting_reaches_img2img_and_hires(
        sd1_model, samplers, monkeypatch: pytest.MonkeyPatch, setting: dict[str, float],
        expected: float) -> None:
    """A1111's "Inpainting conditioning mask strength": read per job (1 when it was never set)."""
    import sdweb.engine.hires
    import sdweb.engine.img2img

    seen: list[float] = []
    monkeypatch.setattr(sdweb.engine.img2img, "run_img2img",
                        lambda *args, inpainting_mask_weight, **kwargs: seen.append(inpainting_mask_weight))
    monkeypatch.setattr(sdweb.engine.hires, "run_hires_txt2img",
                        lambda *args, inpainting_mask_weight, **kwargs: seen.append(inpainting_mask_weight))
    engine, _cache, _registry = _engine(sd1_model, samplers, sd_model_checkpoint="chosen", **setting)
    from tests.engine.test_img2img import img_params

    engine.img2img(img_params(), [object()], control=JobControl(), on_step=lambda _: None)
    engine.txt2img(tiny_params(enable_hr=True, hr_scale=2.0), control=JobControl(), on_step=lambda _: None)
    assert seen == [expected, expected]

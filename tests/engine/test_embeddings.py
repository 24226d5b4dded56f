"""Textual-inversion embeddings: file formats, fitting the model, use in prompts, TI hashes."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from sdweb.engine.encode import CHUNK_LENGTH, PromptEncoder
from sdweb.engine.extra_networks.embeddings import (
    EmbeddingLibrary,
    EmbeddingTextView,
    load_embedding,
    text_encoder_widths,
)
from sdweb.engine.extra_networks.job import ExtraNetworks
from sdweb.engine.generate import run_txt2img
from sdweb.engine.models.hashes import file_sha256
from sdweb.engine.runtime import Engine
from sdweb.engine.samplers.registry import SamplerRegistry
from sdweb.params import JobControl
from tests.engine.conftest import TinyModel, tiny_params
from tests.fixtures.lora import write_a1111_embedding, write_safetensors_embedding

WIDTH = 32  # the tiny SD1 text encoder's hidden size


def _word_vectors(pipe: Any, text: str) -> torch.Tensor:
    """The token embeddings of ``text``'s tokens: an embedding made of them must encode like the text."""
    ids = pipe.tokenizer(text, add_special_tokens=False)["input_ids"]
    return pipe.text_encoder.get_input_embeddings().weight[ids].detach().clone()


def _encode(pipe: Any, text: str) -> torch.Tensor:
    return PromptEncoder(pipe, device="cpu", dtype=torch.float32).encode_texts([text])[0].hidden


@pytest.fixture()
def embeddings_dir(tmp_path: Path, sd1_pipe: Any) -> Path:
    folder = tmp_path / "embeddings"
    generator = torch.Generator().manual_seed(5)
    write_a1111_embedding(folder / "fluffy.pt", torch.randn(3, WIDTH, generator=generator))
    write_a1111_embedding(folder / "sub" / "kitty.pt", _word_vectors(sd1_pipe, "tabby cat"), step=None,
                          checkpoint=None, checkpoint_name=None)
    write_safetensors_embedding(folder / "wide.safetensors",
                                {"emb_params": torch.randn(2, 48, generator=generator)})
    write_safetensors_embedding(folder / "xl.safetensors",
                                {"clip_l": torch.randn(2, 32, generator=generator),
                                 "clip_g": torch.randn(2, 64, generator=generator)})
    return folder


def test_an_embedding_of_word_vectors_encodes_like_the_words(sd1_pipe: Any, embeddings_dir: Path) -> None:
    library = EmbeddingLibrary(embeddings_dir)
    usable, _skipped = library.split_for(text_encoder_widths(sd1_pipe))
    view = EmbeddingTextView(sd1_pipe, usable)
    with torch.inference_mode():
        via_embedding = _encode(view, "a photo of (kitty:1.2), sitting")
        plain = _encode(sd1_pipe, "a photo of (tabby cat:1.2), sitting")
        assert torch.allclose(via_embedding, plain, atol=1e-6)
        assert view.used == ["kitty"]
        # The name on its own is ordinary text: "kitty" as a word gives other conditioning...
        assert not torch.allclose(_encode(sd1_pipe, "a photo of kitty"), _encode(view, "a photo of kitty"))
        # ...and only whole words match: "kittyish" is left alone.
        assert torch.equal(_encode(view, "a kittyish photo"), _encode(sd1_pipe, "a kittyish photo"))


def test_an_embedding_changes_the_conditioning_and_counts_as_its_vectors(sd1_pipe: Any,
                                                                          tmp_path: Path) -> None:
    folder = tmp_path / "embeddings"
    generator = torch.Generator().manual_seed(1)
    write_a1111_embedding(folder / "long.pt", torch.randn(70, WIDTH, generator=generator))
    write_a1111_embedding(folder / "fluffy.pt", torch.randn(3, WIDTH, generator=generator))
    usable, _ = EmbeddingLibrary(folder).split_for((WIDTH,))
    view = EmbeddingTextView(sd1_pipe, usable)
    with torch.inference_mode():
        assert not torch.allclose(_encode(view, "a fluffy cat"), _encode(sd1_pipe, "a fluffy cat"))
        # 70 vectors + 10 words do not fit one 75-token chunk.
        assert _encode(view, "a photo of a cat in a box on long").shape[1] == 2 * (CHUNK_LENGTH + 2)
        assert _encode(sd1_pipe, "a photo of a cat in a box on long").shape[1] == CHUNK_LENGTH + 2


def test_listing_loaded_and_skipped_with_reasons(embeddings_dir: Path) -> None:
    (embeddings_dir / "evil.pt").write_bytes(pickle.dumps(_RunsCode(), protocol=2))
    (embeddings_dir / "notes.bin").write_bytes(b"\x00garbage")
    listing = EmbeddingLibrary(embeddings_dir).listing((WIDTH,))
    assert sorted(listing["loaded"]) == ["fluffy", "kitty"]
    assert listing["loaded"]["fluffy"] == {"step": 500, "sd_checkpoint": "0123456789",
                                           "sd_checkpoint_name": "tiny-sd1", "shape": 32, "vectors": 3}
    assert listing["loaded"]["kitty"] == {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                          "shape": 32, "vectors": 2}  # "tabby cat": 2 tokens
    skipped = listing["skipped"]
    assert skipped["wide"]["reason"] == "dimension 48 does not match this model's 32"
    assert skipped["wide"]["shape"] == 48
    assert skipped["xl"]["reason"] == "dimension 32+64 (SDXL) does not match this model's 32"
    assert skipped["evil"]["reason"].startswith("refused: not a plain-tensor file")
    assert skipped["notes"]["reason"].startswith("refused: not a plain-tensor file")
    # The same files against an SDXL model's encoders (32 + 64 in the tiny SDXL).
    sdxl = EmbeddingLibrary(embeddings_dir).listing((32, 64))
    assert sorted(sdxl["loaded"]) == ["xl"]
    assert sdxl["loaded"]["xl"]["shape"] == 96
    assert "an SDXL model needs" in sdxl["skipped"]["fluffy"]["reason"]


class _RunsCode:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("this must never run",))


def test_file_formats(tmp_path: Path) -> None:
    vectors = torch.randn(2, WIDTH)
    torch.save({"<my-token>": vectors[0]}, str(tmp_path / "diffusers.bin"))
    loaded = load_embedding(tmp_path / "diffusers.bin")
    assert loaded.count == 1 and loaded.widths == (WIDTH,) and loaded.name == "diffusers"
    write_safetensors_embedding(tmp_path / "a1111.safetensors", {"emb_params": vectors})
    assert torch.equal(load_embedding(tmp_path / "a1111.safetensors").vectors["single"], vectors)


def test_new_files_are_found_without_refresh(tmp_path: Path) -> None:
    library = EmbeddingLibrary(tmp_path)
    assert library.embeddings() == {}
    write_a1111_embedding(tmp_path / "late.pt", torch.randn(1, WIDTH))
    first = library.embeddings()["late"]
    assert list(library.embeddings()) == ["late"]
    write_a1111_embedding(tmp_path / "later.pt", torch.randn(2, WIDTH))
    found = library.embeddings()
    assert sorted(found) == ["late", "later"]
    assert found["late"] is first  # unchanged files are not loaded again
    (tmp_path / "late.pt").unlink()
    assert list(library.embeddings()) == ["later"]


def test_generation_with_an_embedding_writes_ti_hashes(sd1_model: TinyModel, samplers: SamplerRegistry,
                                                       embeddings_dir: Path) -> None:
    networks = ExtraNetworks(embeddings=EmbeddingLibrary(embeddings_dir))

    def run(prompt: str, negative: str = "blurry") -> Any:
        return run_txt2img(sd1_model, tiny_params(prompt=prompt, negative_prompt=negative), samplers=samplers,
                           control=JobControl(), on_step=lambda _: None, output_type="latent",
                           extra_networks=networks).images[0]

    with_embedding = run("a fluffy cat", "kitty")
    plain = run("a fluffy cat", "kitty")  # the same again: deterministic
    assert torch.equal(with_embedding.image, plain.image)
    fluffy = file_sha256(embeddings_dir / "fluffy.pt")[:12]
    kitty = file_sha256(embeddings_dir / "sub" / "kitty.pt")[:12]
    assert with_embedding.extra == {"TI hashes": f"fluffy: {fluffy}, kitty: {kitty}"}
    without = run_txt2img(sd1_model, tiny_params(prompt="a fluffy cat", negative_prompt="kitty"),
                          samplers=samplers, control=JobControl(), on_step=lambda _: None,
                          output_type="latent").images[0]
    assert float((without.image - with_embedding.image).abs().max()) > 1e-3
    assert without.extra == {}


def test_sdxl_embedding_on_the_sdxl_model(sdxl_pipe: Any, tmp_path: Path) -> None:
    clip_l = _word_vectors(sdxl_pipe, "cat")
    ids = sdxl_pipe.tokenizer_2("cat", add_special_tokens=False)["input_ids"]
    clip_g = sdxl_pipe.text_encoder_2.get_input_embeddings().weight[ids].detach().clone()
    write_safetensors_embedding(tmp_path / "xlcat.safetensors", {"clip_l": clip_l, "clip_g": clip_g})
    usable, skipped = EmbeddingLibrary(tmp_path).split_for(text_encoder_widths(sdxl_pipe))
    assert list(usable) == ["xlcat"] and not skipped
    view = EmbeddingTextView(sdxl_pipe, usable)
    encoder = PromptEncoder(view, device="cpu", dtype=torch.float32)
    plain_encoder = PromptEncoder(sdxl_pipe, device="cpu", dtype=torch.float32)
    with torch.inference_mode():
        mine = encoder.encode_texts(["a photo of xlcat"])[0]
        plain = plain_encoder.encode_texts(["a photo of cat"])[0]
    assert torch.allclose(mine.hidden, plain.hidden, atol=1e-6)
    assert mine.pooled is not None and plain.pooled is not None
    assert torch.allclose(mine.pooled, plain.pooled, atol=1e-6)


@dataclass
class _Cache:
    current: Any = None


def test_engine_lists_embeddings_for_the_current_model_and_counts_their_tokens(
        sd1_model: TinyModel, samplers: SamplerRegistry, embeddings_dir: Path) -> None:
    cache = _Cache()
    engine = Engine(cache, registry=None, vae_registry=None, samplers=samplers, runtime=None,
                    embeddings=EmbeddingLibrary(embeddings_dir))
    nothing_loaded = engine.embeddings()
    assert nothing_loaded["loaded"] == {}
    assert nothing_loaded["skipped"]["fluffy"]["reason"] == "no model is loaded to check it against"
    cache.current = sd1_model
    listing = engine.embeddings()
    assert sorted(listing["loaded"]) == ["fluffy", "kitty"]
    assert engine.count_tokens("a fluffy cat") == (3 + 2, 75)  # fluffy: 3 vectors
    write_a1111_embedding(embeddings_dir / "huge.pt", torch.zeros(80, WIDTH))
    engine.refresh_embeddings()
    assert engine.count_tokens("huge") == (80, 150)

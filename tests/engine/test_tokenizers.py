"""The CLIP tokenizer files bundled in the package load offline and tokenize as CLIP does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import CLIPTokenizer

import sdweb

TOKENIZERS = Path(sdweb.__file__).resolve().parent / "data" / "tokenizers"
ASTRONAUT = "a photo of an astronaut riding a horse"
ASTRONAUT_IDS = [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 49407]


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_bundled_tokenizer_matches_clip_ids(family: str) -> None:
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZERS / family, local_files_only=True)

    assert tokenizer(ASTRONAUT).input_ids == ASTRONAUT_IDS
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77
    assert tokenizer.convert_ids_to_tokens([49406, 49407]) == ["<|startoftext|>", "<|endoftext|>"]


def test_sd1_pads_with_end_of_text() -> None:
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZERS / "sd1", local_files_only=True)

    ids = tokenizer(ASTRONAUT, padding="max_length", max_length=77).input_ids

    assert len(ids) == 77
    assert ids[: len(ASTRONAUT_IDS)] == ASTRONAUT_IDS
    assert set(ids[len(ASTRONAUT_IDS) :]) == {49407}


def test_sd2_pads_with_id_zero() -> None:
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZERS / "sd2", local_files_only=True)

    ids = tokenizer(ASTRONAUT, padding="max_length", max_length=77).input_ids

    assert tokenizer.pad_token == "!"
    assert ids[: len(ASTRONAUT_IDS)] == ASTRONAUT_IDS
    assert set(ids[len(ASTRONAUT_IDS) :]) == {0}


def test_long_prompt_truncates_to_77_with_end_token() -> None:
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZERS / "sd1", local_files_only=True)

    ids = tokenizer(" ".join(["horse"] * 100), truncation=True, max_length=77).input_ids

    assert len(ids) == 77
    assert ids[0] == 49406 and ids[-1] == 49407


def test_vocab_layout_is_clips() -> None:
    vocab = json.loads((TOKENIZERS / "sd1" / "vocab.json").read_text(encoding="utf-8"))

    assert len(vocab) == 49408
    assert vocab["!"] == 0  # SD2's pad id
    assert vocab["!</w>"] == 256
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    merges = [(TOKENIZERS / family / "merges.txt").read_bytes() for family in ("sd1", "sd2")]
    assert merges[0] == merges[1]

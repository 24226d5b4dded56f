"""Prompt encoding as A1111 does it: 75-token chunks, comma backtrack, BREAK, emphasis, CLIP skip, SDXL."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from sdweb.engine.encode import (
    CHUNK_LENGTH,
    PromptEncoder,
    count_tokens,
    emphasis_infotext,
    tokenize_weighted,
)


def _encoder(pipe) -> PromptEncoder:
    return PromptEncoder(pipe, device="cpu", dtype=torch.float32)


def _words(n: int, word: str = "cat") -> str:
    return " ".join([word] * n)  # "cat" is one token


@torch.inference_mode()
def test_plain_prompt_equals_diffusers_encoding(sd1_pipe) -> None:
    ours = _encoder(sd1_pipe).encode("a photo of a cat", "ugly, blurry")
    theirs, theirs_negative = sd1_pipe.encode_prompt("a photo of a cat", "cpu", 1, True, "ugly, blurry")
    assert torch.equal(ours.prompt_embeds, theirs)
    assert torch.equal(ours.negative_prompt_embeds, theirs_negative)


def test_chunks_are_bos_text_eos_padding(sd1_pipe) -> None:
    tokenizer = sd1_pipe.tokenizer
    chunks, count = tokenize_weighted(tokenizer, "a photo")
    assert count == 2 and len(chunks) == 1
    tokens = chunks[0].tokens
    assert len(tokens) == 77 and tokens[0] == tokenizer.bos_token_id
    assert tokens[3] == tokenizer.eos_token_id and set(tokens[4:]) == {tokenizer.pad_token_id}


@torch.inference_mode()
def test_a_200_token_prompt_gives_3_chunks_and_its_tail_counts(sd1_pipe) -> None:
    encoder = _encoder(sd1_pipe)
    head = _words(190)
    red = encoder.encode(head + " red red red red red red red red red red", "")
    blue = encoder.encode(head + " blue blue blue blue blue blue blue blue blue blue", "")
    assert red.chunk_count == 3
    assert red.prompt_embeds.shape == (1, 3 * 77, 32)
    # the tail (tokens 151..200) lives in chunk 3 only: nothing was truncated
    assert torch.equal(red.prompt_embeds[:, :154], blue.prompt_embeds[:, :154])
    assert not torch.allclose(red.prompt_embeds[:, 154:], blue.prompt_embeds[:, 154:])


@torch.inference_mode()
def test_negative_prompt_is_padded_to_the_same_chunk_count(sd1_pipe) -> None:
    encoder = _encoder(sd1_pipe)
    result = encoder.encode(_words(100), "blurry")
    assert result.prompt_embeds.shape == result.negative_prompt_embeds.shape == (1, 154, 32)
    empty = encoder.encode("", "").prompt_embeds
    assert torch.equal(result.negative_prompt_embeds[:, 77:], empty)
    longer_negative = encoder.encode("cat", _words(100))
    assert longer_negative.prompt_embeds.shape == (1, 154, 32)


def test_comma_backtrack_moves_the_last_words_to_the_next_chunk(sd1_pipe) -> None:
    tokenizer = sd1_pipe.tokenizer
    text = _words(70) + ", " + _words(10, "dog")  # comma at token 71; the chunk fills inside "dog"s
    chunks, count = tokenize_weighted(tokenizer, text)
    dog = tokenizer("dog", add_special_tokens=False)["input_ids"][0]
    comma = tokenizer(",", add_special_tokens=False)["input_ids"][0]
    assert len(chunks) == 2
    first_text = chunks[0].tokens[1:]
    assert first_text[70] == comma and dog not in first_text  # chunk 1 ends at the comma
    assert chunks[1].tokens[1:11] == [dog] * 10
    assert count == CHUNK_LENGTH + 10


def test_no_backtrack_when_the_comma_is_too_far_back(sd1_pipe) -> None:
    tokenizer = sd1_pipe.tokenizer
    chunks, _ = tokenize_weighted(tokenizer, _words(40) + ", " + _words(50, "dog"))
    dog = tokenizer("dog", add_special_tokens=False)["input_ids"][0]
    assert chunks[0].tokens[1:76].count(dog) == 75 - 41  # the chunk is filled up to 75 tokens


def test_break_starts_a_new_chunk(sd1_pipe) -> None:
    chunks, count = tokenize_weighted(sd1_pipe.tokenizer, "a cat BREAK a dog")
    assert len(chunks) == 2
    assert count == CHUNK_LENGTH + 2


@torch.inference_mode()
def test_weight_one_equals_plain_text(sd1_pipe) -> None:
    encoder = _encoder(sd1_pipe)
    plain = encoder.encode("a photo of a cat", "")
    weighted = encoder.encode("a photo of a (cat:1.0)", "")
    assert torch.equal(plain.prompt_embeds, weighted.prompt_embeds)


@torch.inference_mode()
def test_emphasis_scales_the_token_and_keeps_the_mean(sd1_pipe) -> None:
    encoder = _encoder(sd1_pipe)
    plain = encoder.encode("a photo of a cat", "").prompt_embeds
    strong = encoder.encode("a photo of a (cat:1.5)", "").prompt_embeds
    assert not torch.allclose(plain, strong)
    torch.testing.assert_close(plain.mean(), strong.mean())
    # relative to its neighbours, "cat" (position 5) grew by 1.5
    ratio = (strong[0, 5] / plain[0, 5]) / (strong[0, 4] / plain[0, 4])
    torch.testing.assert_close(ratio, torch.full_like(ratio, 1.5))
    assert not torch.allclose(encoder.encode("a photo of a [cat]", "").prompt_embeds, plain)


@torch.inference_mode()
def test_clip_skip_takes_an_earlier_layer_through_the_final_norm(sd1_pipe) -> None:
    encoder = _encoder(sd1_pipe)
    skipped = encoder.encode("a photo of a cat", "", clip_skip=2).prompt_embeds
    ids = sd1_pipe.tokenizer("a photo of a cat", padding="max_length", max_length=77,
                             return_tensors="pt").input_ids
    hidden = sd1_pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(skipped, sd1_pipe.text_encoder.final_layer_norm(hidden))
    assert not torch.allclose(skipped, encoder.encode("a photo of a cat", "").prompt_embeds)
    with pytest.raises(ValueError, match="clip_skip"):
        encoder.encode("x", "", clip_skip=0)


@pytest.mark.parametrize(("text", "expected"), [("", (0, 75)), ("a photo of a cat", (5, 75)),
                                                (_words(75), (75, 75)), (_words(80), (80, 150)),
                                                ("(cat:1.3) BREAK dog", (76, 150))])
def test_count_tokens_for_the_ui_counter(sd1_pipe, text: str, expected: tuple[int, int]) -> None:
    assert count_tokens(sd1_pipe.tokenizer, text) == expected


def test_count_tokens_reads_the_prompt_grammar_as_a1111(sd1_pipe) -> None:
    tokenizer = sd1_pipe.tokenizer
    assert count_tokens(tokenizer, "a cat <lora:detail:0.8>") == (2, 75)  # tags are not text
    assert count_tokens(tokenizer, "a [cat:big dog:5]") == (3, 75)  # the longest scheduled text
    assert count_tokens(tokenizer, "a cat AND a big dog :0.5") == (3, 75)  # the longest AND part


@torch.inference_mode()
def test_sdxl_equals_diffusers_and_zeroes_an_empty_negative(sdxl_pipe) -> None:
    encoder = PromptEncoder(sdxl_pipe, device="cpu", dtype=torch.float32)
    ours = encoder.encode("a photo of a cat", "")
    embeds, negative, pooled, negative_pooled = sdxl_pipe.encode_prompt("a photo of a cat", device="cpu")
    assert ours.prompt_embeds.shape == (1, 77, 64)  # both encoders side by side
    torch.testing.assert_close(ours.prompt_embeds, embeds)
    torch.testing.assert_close(ours.pooled_prompt_embeds, pooled)
    assert not ours.negative_prompt_embeds.any() and not ours.negative_pooled_prompt_embeds.any()
    with_negative = encoder.encode("a photo of a cat", "blurry")
    assert with_negative.negative_prompt_embeds.any()


def _a1111_chunk(tokenizer, runs: list[tuple[str, float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A1111's one-chunk ids and multipliers for weighted ``runs``: BOS, each run's tokens, EOS, padding."""
    ids, multipliers = [tokenizer.bos_token_id], [1.0]
    for text, weight in runs:
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += tokens
        multipliers += [weight] * len(tokens)
    ids += [tokenizer.eos_token_id] * (77 - len(ids))  # SD1: EOS is the padding
    multipliers += [1.0] * (77 - len(multipliers))
    return torch.tensor([ids]), torch.tensor([multipliers])


@pytest.fixture(scope="module")
def biased_sd1(sd1_pipe) -> SimpleNamespace:
    """The tiny SD1 text side with a bias in the final norm: without one, its means are ~1e-8 and the ratio
    "Original" restores is rounding noise (a real CLIP's are not)."""
    text_encoder = copy.deepcopy(sd1_pipe.text_encoder)
    torch.nn.init.constant_(text_encoder.final_layer_norm.bias, 0.25)
    return SimpleNamespace(tokenizer=sd1_pipe.tokenizer, text_encoder=text_encoder)


@torch.inference_mode()
@pytest.mark.parametrize("mode", ["None", "Ignore", "Original", "No norm"])
def test_each_emphasis_mode_is_a1111s_arithmetic(biased_sd1, mode: str) -> None:
    tokenizer, text_encoder = biased_sd1.tokenizer, biased_sd1.text_encoder
    prompt = "(cat:1.3) on a mat"
    # A1111 (sd_hijack_clip / sd_emphasis): "None" tokenizes the line as it is; the others parse it.
    runs = [(prompt, 1.0)] if mode == "None" else [("cat", 1.3), (" on a mat", 1.0)]
    ids, multipliers = _a1111_chunk(tokenizer, runs)
    z = text_encoder(ids).last_hidden_state
    if mode in ("Original", "No norm"):
        original_mean = z.mean()
        z = z * multipliers.unsqueeze(-1).expand(z.shape)
        if mode == "Original":
            z = z * (original_mean / z.mean())
    ours = _encoder(biased_sd1).encode_texts([prompt], emphasis=mode)[0].hidden
    torch.testing.assert_close(ours, z, rtol=1e-6, atol=1e-6)


@torch.inference_mode()
def test_emphasis_modes_differ_where_a1111s_do(sd1_pipe) -> None:
    encoder = _encoder(sd1_pipe)
    prompt = "(cat:1.3) on a mat"
    by_mode = {mode: encoder.encode_texts([prompt], emphasis=mode)[0].hidden
               for mode in ("None", "Ignore", "Original", "No norm")}
    assert torch.equal(by_mode["Original"], encoder.encode_texts([prompt])[0].hidden)  # today's default
    assert torch.equal(by_mode["Ignore"], encoder.encode_texts(["cat on a mat"])[0].hidden)
    assert not torch.allclose(by_mode["None"], by_mode["Ignore"])  # the brackets are read as text
    assert not torch.allclose(by_mode["No norm"], by_mode["Original"])
    # "None" keeps BREAK as a word: one chunk, where the others start a second one.
    assert len(tokenize_weighted(sd1_pipe.tokenizer, "a BREAK b", "None")[0]) == 1
    assert len(tokenize_weighted(sd1_pipe.tokenizer, "a BREAK b", "Ignore")[0]) == 2


@pytest.mark.parametrize(("mode", "texts", "expected"), [
    ("Original", ["(cat:1.3)"], {}),
    (None, ["(cat:1.3)"], {}),
    ("No norm", ["a cat", ""], {}),  # A1111 writes it only when a text has ( or [
    ("No norm", ["a cat", "[blurry]"], {"Emphasis": "No norm"}),
    ("None", ["(cat:1.3)"], {"Emphasis": "None"}),
])
def test_emphasis_infotext_is_written_as_a1111_writes_it(mode, texts, expected) -> None:
    assert emphasis_infotext(mode, texts) == expected


@torch.inference_mode()
def test_original_emphasis_restores_the_mean_over_a_prompt_schedules_batch(biased_sd1) -> None:
    """A1111 encodes the texts of one prompt's editing schedule in one call and restores the mean of the
    whole (texts, 77, dim) batch of each chunk, so "[(cat:1.3):dog:1]" rescales "dog" too."""
    tokenizer, text_encoder = biased_sd1.tokenizer, biased_sd1.text_encoder
    cat_ids, cat_multipliers = _a1111_chunk(tokenizer, [("cat", 1.3), (" on a mat", 1.0)])
    dog_ids, dog_multipliers = _a1111_chunk(tokenizer, [("dog on a mat", 1.0)])
    z = text_encoder(torch.cat([cat_ids, dog_ids])).last_hidden_state
    multipliers = torch.cat([cat_multipliers, dog_multipliers])
    original_mean = z.mean()
    z = z * multipliers.unsqueeze(-1).expand(z.shape)
    z = z * (original_mean / z.mean())
    encoder = _encoder(biased_sd1)
    cat, dog = encoder.encode_texts(["(cat:1.3) on a mat", "dog on a mat"], groups=[[0, 1]])
    torch.testing.assert_close(cat.hidden[0], z[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dog.hidden[0], z[1], rtol=1e-5, atol=1e-6)
    alone = encoder.encode_texts(["dog on a mat"])[0].hidden
    assert not torch.allclose(dog.hidden, alone)  # the batch's mean moved it
    # Texts encoded apart keep their own means, bit for bit as before.
    apart = encoder.encode_texts(["(cat:1.3) on a mat", "dog on a mat"])
    assert torch.equal(apart[1].hidden, alone)


def test_the_token_counter_follows_the_emphasis_mode(sd1_pipe) -> None:
    tokenizer = sd1_pipe.tokenizer
    parsed = count_tokens(tokenizer, "(cat:1.3) on a mat")
    assert parsed == count_tokens(tokenizer, "cat on a mat") == count_tokens(tokenizer, "(cat:1.3) on a mat",
                                                                             emphasis="Ignore")
    literal = count_tokens(tokenizer, "(cat:1.3) on a mat", emphasis="None")  # A1111 counts what it encodes
    assert literal[0] == len(tokenizer("(cat:1.3) on a mat", add_special_tokens=False)["input_ids"])
    assert literal[0] > parsed[0]

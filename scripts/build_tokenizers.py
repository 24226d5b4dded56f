"""Derive the bundled CLIP tokenizer files (``sdweb/data/tokenizers/sd1`` and ``sd2``) once.

The CLIP byte-pair-encoding table ships inside the open-clip-torch wheel as
``open_clip/bpe_simple_vocab_16e6.txt.gz``. This script reads it straight out of the wheel (a zip file;
installing the wheel is not needed and would drag in torchvision) and writes the files transformers'
``CLIPTokenizer`` reads: ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and
``special_tokens_map.json``.

The vocabulary layout is CLIP's: the 256 byte-level characters, the same 256 with the end-of-word
marker ``</w>``, one entry per merge (48,894 of them), then ``<|startoftext|>`` (49406) and
``<|endoftext|>`` (49407): 49,408 entries. SD 1.x (OpenAI CLIP ViT-L/14) pads with ``<|endoftext|>``;
SD 2.x (OpenCLIP ViT-H/14) uses the same table but pads with ``!`` (id 0).

Usage (run once; the output is committed)::

    pip download open_clip_torch --no-deps -d /tmp/oc
    python scripts/build_tokenizers.py /tmp/oc/open_clip_torch-*.whl
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import zipfile
from pathlib import Path

BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
#: CLIP keeps the first 49152 - 256 - 2 merges of the table (the file holds more).
MERGE_COUNT = 49152 - 256 - 2
VOCAB_SIZE = 49408
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "sdweb" / "data" / "tokenizers"


def byte_level_alphabet() -> list[str]:
    """The 256 printable characters GPT-2-style byte-level BPE uses for bytes, in CLIP's id order.

    Printable Latin-1 bytes stand for themselves; the other bytes (controls, space, ...) are mapped in
    byte order to code points from 256 upwards, so every byte has a visible, non-whitespace character.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\N{INVERTED EXCLAMATION MARK}"), ord("\N{NOT SIGN}") + 1),
        *range(ord("\N{REGISTERED SIGN}"), ord("\N{LATIN SMALL LETTER Y WITH DIAERESIS}") + 1),
    ]
    chars = [chr(b) for b in printable]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def read_merges(wheel: Path) -> list[tuple[str, str]]:
    with zipfile.ZipFile(wheel) as archive:
        text = gzip.decompress(archive.read(BPE_MEMBER)).decode("utf-8")
    # The first line is a version header, then one "left right" pair per line.
    lines = text.split("\n")[1 : MERGE_COUNT + 1]
    merges = [tuple(line.split()) for line in lines]
    bad = [line for line, pair in zip(lines, merges, strict=True) if len(pair) != 2]
    if len(merges) != MERGE_COUNT or bad:
        raise SystemExit(f"{wheel}: unexpected BPE table ({len(merges)} merges, {len(bad)} malformed)")
    return [(left, right) for left, right in merges]


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    alphabet = byte_level_alphabet()
    tokens = [*alphabet, *(char + "</w>" for char in alphabet), *(a + b for a, b in merges), BOS, EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise SystemExit(f"vocabulary has {len(vocab)} distinct entries, expected {VOCAB_SIZE}")
    return vocab


def tokenizer_config(pad_token: str) -> dict[str, object]:
    return {
        "add_prefix_space": False,
        "bos_token": BOS,
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "eos_token": EOS,
        "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": pad_token,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": EOS,
    }


def special_tokens_map(pad_token: str) -> dict[str, str]:
    return {"bos_token": BOS, "eos_token": EOS, "pad_token": pad_token, "unk_token": EOS}


def write_folder(folder: Path, vocab: dict[str, int], merges: list[tuple[str, str]], pad_token: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # Compact, key order = id order: stable output, so regenerating gives a byte-identical file.
    (folder / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False, separators=(",", ":")), encoding="utf-8"
    )
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (folder / "merges.txt").write_text(merges_text, encoding="utf-8")
    for name, content in (
        ("tokenizer_config.json", tokenizer_config(pad_token)),
        ("special_tokens_map.json", special_tokens_map(pad_token)),
    ):
        (folder / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("wheel", type=Path, help="path to an open_clip_torch wheel (.whl)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder that gets sd1/ and sd2/")
    args = parser.parse_args(argv)

    merges = read_merges(args.wheel)
    vocab = build_vocab(merges)
    write_folder(args.out / "sd1", vocab, merges, pad_token=EOS)
    write_folder(args.out / "sd2", vocab, merges, pad_token="!")
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {args.out}/sd1 and {args.out}/sd2")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Image captioning (``/sdapi/v1/interrogate``): BLIP through transformers, fetched on first use.

A1111's "clip" interrogator starts from a BLIP caption; here that caption is the answer, from
Salesforce's BLIP captioning model (:data:`BLIP_REPO`, maintained in transformers). The model lives in
``models/BLIP/<name>`` (A1111's folder): a copy put there by hand is used as it is, otherwise it is
downloaded there on first use. When it is not there and cannot be downloaded (offline),
:class:`CaptionerUnavailable` says exactly what to download and where. Generation settings are A1111's
defaults (``interrogate_clip_num_beams`` 1, min 24 and max 48 tokens).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

BLIP_REPO = "Salesforce/blip-image-captioning-base"
#: The files of a BLIP folder that are fetched (those a repository lacks are skipped)...
BLIP_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json",
              "special_tokens_map.json", "tokenizer_config.json", "tokenizer.json", "vocab.txt",
              "model.safetensors")
#: ... and those it cannot do without.
REQUIRED_FILES = ("config.json", "model.safetensors", "vocab.txt")
MIN_TOKENS = 24
MAX_TOKENS = 48
NUM_BEAMS = 1


class CaptionerUnavailable(RuntimeError):
    """The captioning model is not there and could not be fetched; the message says what to do."""


def blip_folder(models_dir: Path) -> Path:
    """Where the BLIP model lives: ``models/BLIP/blip-image-captioning-base``."""
    return models_dir / "BLIP" / BLIP_REPO.split("/")[1]


def model_present(folder: Path) -> bool:
    return all((folder / name).is_file() for name in REQUIRED_FILES)


def ensure_model(folder: Path, repo: str = BLIP_REPO, *, endpoint: str | None = None) -> Path:
    """``folder`` with the model in it, downloading ``repo``'s files there when it is missing.

    ``endpoint``: the hub's address (default: huggingface_hub's, ``HF_ENDPOINT``).
    """
    if model_present(folder):
        return folder
    logger.info("downloading the captioning model %s into %s", repo, folder)
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        for name in BLIP_FILES:
            try:
                hf_hub_download(repo_id=repo, filename=name, local_dir=folder, endpoint=endpoint)
            except EntryNotFoundError:
                if name in REQUIRED_FILES:
                    raise
    except Exception as exc:  # offline, hub errors, disk: all end in the same advice
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
        raise CaptionerUnavailable(
            f"image captioning needs the model {repo}, which is not in {folder} and could not be "
            f"downloaded ({type(exc).__name__}: {detail}). Download its files "
            f"({', '.join(REQUIRED_FILES)}, the tokenizer and preprocessor files) from "
            f"https://huggingface.co/{repo} into {folder}") from exc
    return folder


class BlipCaptioner:
    """A loaded BLIP captioning model on one device."""

    def __init__(self, folder: Path, device: torch.device | str = "cpu") -> None:
        from transformers import BlipForConditionalGeneration, BlipProcessor

        self.device = torch.device(device)
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.processor: Any = BlipProcessor.from_pretrained(folder)
        self.model: Any = BlipForConditionalGeneration.from_pretrained(folder, dtype=dtype).to(self.device)
        self.model.eval()
        self.dtype = dtype

    def caption(self, image: Any) -> str:
        """One sentence describing ``image`` (a PIL image)."""
        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.dtype)
        with torch.inference_mode():
            tokens = self.model.generate(pixel_values=pixels, num_beams=NUM_BEAMS, min_new_tokens=MIN_TOKENS,
                                         max_new_tokens=MAX_TOKENS)
        return str(self.processor.decode(tokens[0], skip_special_tokens=True)).strip()


def load_captioner(models_dir: Path, device: torch.device | str = "cpu") -> BlipCaptioner:
    """The BLIP captioner, fetched into ``models/BLIP`` first if needed."""
    return BlipCaptioner(ensure_model(blip_folder(models_dir)), device)

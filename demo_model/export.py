"""Export the trained demo model (a diffusers folder) as ONE single-file checkpoint, as sdweb ships it.

The file is what any community SD 1.x checkpoint is: original LDM key layout
(``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.text_model.*``)
in fp16. Its tiny architecture cannot be read back from tensor shapes alone (norm groups, head counts,
the VAE's latent scale), so the component configs travel in the safetensors metadata as JSON strings:

==============================  ==========================================================
``sdweb_family``                ``sd1`` (CLIP tokenizer and conventions of SD 1.x)
``sdweb_unet_config``           ``UNet2DConditionModel`` config
``sdweb_vae_config``            ``AutoencoderKL`` config (with its trained ``scaling_factor``)
``sdweb_text_encoder_config``   ``CLIPTextConfig`` kwargs
``sdweb_scheduler_config``      scheduler config (``_class_name`` included)
``sdweb_demo``                  ``"1"``: the UI labels the model as a demo
==============================  ==========================================================

    python -m demo_model.export demo_model/out/run1/diffusers sdweb/data/demo/sdweb-demo-shapes.safetensors
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel

from sdweb.engine.models.ldm_layout import clip_to_ldm, unet_to_ldm, vae_to_ldm

logger = logging.getLogger("demo_model.export")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "sdweb" / "data" / "demo" / "sdweb-demo-shapes.safetensors"
MAX_BYTES = 20 * 1024 * 1024
METADATA_PREFIX = "sdweb_"
#: Keys of a saved config that describe the saving library, not the model.
_NOT_CONFIG = ("architectures", "transformers_version", "torch_dtype", "dtype", "output_hidden_states",
               "return_dict", "use_return_dict")


#: What defines a CLIP text model; the rest of a transformers config is about the saving library.
_CLIP_TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers",
                   "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps",
                   "attention_dropout", "initializer_range", "initializer_factor", "pad_token_id",
                   "bos_token_id", "eos_token_id")


def _config(raw: dict[str, Any], *, keep_class: bool = False) -> dict[str, Any]:
    return {k: v for k, v in raw.items()
            if (keep_class and k == "_class_name") or (not k.startswith("_") and k not in _NOT_CONFIG)}


def checkpoint_state_and_metadata(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The fp16 LDM-layout tensors and the metadata for the diffusers folder ``folder``."""
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True)
    text = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True)
    state = {
        **unet_to_ldm(unet.state_dict(), dict(unet.config)),
        **vae_to_ldm(vae.state_dict()),
        **clip_to_ldm(text.state_dict(), "cond_stage_model.transformer."),
    }
    state = {k: (v.half() if v.is_floating_point() else v).detach().contiguous().clone()
             for k, v in state.items()}
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    metadata = {
        "format": "pt",
        "sdweb_family": "sd1",
        "sdweb_demo": "1",
        "sdweb_title": "sdweb demo: shapes (64x64, trained from scratch)",
        "sdweb_unet_config": json.dumps(_config(dict(unet.config))),
        "sdweb_vae_config": json.dumps(_config(dict(vae.config))),
        "sdweb_text_encoder_config": json.dumps({k: v for k, v in text.config.to_dict().items()
                                                 if k in _CLIP_TEXT_KEYS}),
        "sdweb_scheduler_config": json.dumps(_config(scheduler, keep_class=True)),
    }
    return state, metadata


def export_checkpoint(folder: Path, output: Path = DEFAULT_OUTPUT) -> Path:
    """Write the single-file checkpoint for ``folder``; refuse to leave a file over 20 MB."""
    state, metadata = checkpoint_state_and_metadata(folder)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(output), metadata=metadata)
    size = output.stat().st_size
    if size > MAX_BYTES:
        output.unlink()
        raise SystemExit(f"the exported checkpoint is {size / 2**20:.1f} MiB, over the 20 MiB limit")
    logger.info("wrote %s (%.1f MiB, %d tensors)", output, size / 2**20, len(state))
    return output


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the diffusers folder train.py wrote")
    parser.add_argument("output", type=Path, nargs="?", default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    export_checkpoint(args.folder, args.output)


if __name__ == "__main__":
    main()

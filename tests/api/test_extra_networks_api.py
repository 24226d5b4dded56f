"""``/sdapi/v1/loras``, ``/sdapi/v1/embeddings`` and their refresh actions; LoRA names checked up front."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from sdweb.engine.extra_networks.embeddings import EmbeddingLibrary
from tests.api.conftest import ApiServer
from tests.fakes import FakeEngine
from tests.fixtures.lora import write_a1111_embedding, write_safetensors_embedding


def _write_lora(path: Path, **metadata: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_x_to_q.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_x_to_q.lora_up.weight": torch.zeros(8, 4),
               "lora_unet_x_to_q.alpha": torch.tensor(4.0)}, str(path), metadata=metadata or None)


def test_loras_are_listed_in_a1111_shape_after_refresh(api: ApiServer) -> None:
    folder = api.services.settings.paths.lora_dir
    assert api.get("loras").json() == []
    _write_lora(folder / "add_detail.safetensors", ss_output_name="detail_v2", ss_network_dim="4")
    _write_lora(folder / "styles" / "ink.safetensors")
    assert api.post("refresh-loras").status_code == 200
    listed = api.get("loras").json()
    assert listed == [
        {"name": "add_detail", "alias": "detail_v2", "path": str(folder / "add_detail.safetensors"),
         "metadata": {"ss_output_name": "detail_v2", "ss_network_dim": "4"}},
        {"name": "ink", "alias": "ink", "path": str(folder / "styles" / "ink.safetensors"), "metadata": {}},
    ]


def test_an_unknown_lora_is_refused_before_the_job_with_known_names(api: ApiServer) -> None:
    _write_lora(api.services.settings.paths.lora_dir / "add_detail.safetensors")
    response = api.post("txt2img", json={"prompt": "a cat <lora:nope:0.8>", "steps": 2})
    assert response.status_code == 400  # the service's "this request cannot run" status
    assert "LoRA 'nope' not found" in response.text and "known: add_detail" in response.text
    assert api.engine.calls == []  # nothing reached the engine
    refused = api.post("txt2img", json={"prompt": "a cat <hypernet:anime:1>", "steps": 2})
    assert refused.status_code == 400 and "hypernetworks are not supported" in refused.text


@dataclass
class _EngineWithEmbeddings(FakeEngine):
    """The fake engine plus the real embedding library, checked against a 32-wide text encoder."""

    folder: Path | None = None

    def embeddings(self) -> dict[str, Any]:
        assert self.folder is not None
        return EmbeddingLibrary(self.folder).listing((32,))


def test_embeddings_loaded_and_skipped_with_reasons(start_api: Callable[..., ApiServer],
                                                    tmp_path: Path) -> None:
    folder = tmp_path / "embeddings"
    write_a1111_embedding(folder / "fluffy.pt", torch.zeros(3, 32), step=250)
    write_safetensors_embedding(folder / "wide.safetensors", {"emb_params": torch.zeros(2, 1024)})
    api = start_api(engine=_EngineWithEmbeddings(folder=folder))
    body = api.get("embeddings").json()
    assert body["loaded"] == {"fluffy": {"step": 250, "sd_checkpoint": "0123456789",
                                         "sd_checkpoint_name": "tiny-sd1", "shape": 32, "vectors": 3,
                                         "reason": None}}
    assert body["skipped"]["wide"]["reason"] == "dimension 1024 does not match this model's 32"
    assert body["skipped"]["wide"]["vectors"] == 2
    assert api.post("refresh-embeddings").status_code == 200


def test_embeddings_without_an_engine_listing_are_empty(api: ApiServer) -> None:
    assert api.get("embeddings").json() == {"loaded": {}, "skipped": {}}

"""The Checkpoint Merger service and ``webui.py merge``: models found by name, families checked, A1111's
names and merge-recipe metadata, the result listed at once with its hash."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sdweb.cli import main
from sdweb.services.merger import MergeRequest, MergeRequestError
from tests.fakes import make_services
from tests.fixtures.checkpoints import write_tiny_sd1, write_tiny_sdxl, write_tiny_vae


def variant(original: Path, target: Path, seed: int, **metadata: str) -> Path:
    generator = torch.Generator().manual_seed(seed)
    state = {k: (v + 0.1 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v)
             for k, v in load_file(str(original)).items()}
    save_file(state, str(target), metadata={"format": "pt", **metadata})
    return target


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("merger-inputs")
    base = write_tiny_sd1(folder / "base.safetensors")
    return {"a": variant(base, folder / "alpha.safetensors", 1, source="alpha", note="from a"),
            "b": variant(base, folder / "beta.safetensors", 2, source="beta"),
            "c": variant(base, folder / "gamma.safetensors", 3),
            "xl": write_tiny_sdxl(folder / "big-xl.safetensors"),
            "vae": write_tiny_vae(folder / "other-vae.safetensors")}


@pytest.fixture()
def services(tmp_path: Path, inputs: dict[str, Path]) -> Any:
    models = tmp_path / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    for key in ("a", "b", "c", "xl"):
        shutil.copy(inputs[key], models / inputs[key].name)
    (tmp_path / "models" / "VAE").mkdir(parents=True)
    shutil.copy(inputs["vae"], tmp_path / "models" / "VAE" / "other-vae.safetensors")
    services, _ = make_services(tmp_path, with_checkpoint=False)
    yield services
    services.worker.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_weighted_sum_is_listed_at_once_with_its_hash_and_recipe(services: Any) -> None:
    request = MergeRequest("alpha", "beta", interp_method="Weighted sum", multiplier=0.25)
    result = services.merger.merge(request)
    assert result.path.name == "0.75(alpha) + 0.25(beta).safetensors"
    assert result.sha256 == sha256(result.path)
    assert result.title == f"0.75(alpha) + 0.25(beta).safetensors [{result.sha256[:10]}]"
    assert result.title in [info.title for info in services.models.list_checkpoints()]
    assert services.models.find(result.title).family == "sd1"
    with safe_open(str(result.path), "pt") as handle:
        metadata = handle.metadata()
    folder = result.path.parent
    recipe = json.loads(metadata["sd_merge_recipe"])
    assert recipe["type"] == "webui" and recipe["interp_method"] == "Weighted sum"
    assert recipe["multiplier"] == 0.25
    assert recipe["primary_model_hash"] == sha256(folder / "alpha.safetensors")
    assert recipe["secondary_model_hash"] == sha256(folder / "beta.safetensors")
    assert recipe["tertiary_model_hash"] is None and recipe["is_inpainting"] is False
    models = json.loads(metadata["sd_merge_models"])
    assert {entry["name"] for entry in models.values()} == {"alpha.safetensors", "beta.safetensors"}
    assert all(len(entry["legacy_hash"]) == 8 for entry in models.values())
    # The inputs' own fields are copied (B's over A's), then "format".
    assert metadata["source"] == "beta" and metadata["note"] == "from a" and metadata["format"] == "pt"


def test_add_difference_names_and_bakes_and_halves(services: Any) -> None:
    result = services.merger.merge(MergeRequest(
        "alpha", "beta", "gamma", interp_method="Add difference", multiplier=0.5, save_as_half=True,
        bake_in_vae="other-vae.safetensors", metadata_json='{"author": "me", "n": 3}',
        add_merge_recipe=False))
    assert result.path.name == "alpha + 0.5(beta - gamma).safetensors"
    merged = load_file(str(result.path))
    assert merged["model.diffusion_model.out.2.weight"].dtype == torch.float16
    vae = load_file(str(services.settings.paths.vae_dir / "other-vae.safetensors"))
    assert torch.equal(merged["first_stage_model.decoder.conv_out.weight"],
                       vae["decoder.conv_out.weight"].half())
    with safe_open(str(result.path), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["author"] == "me" and metadata["n"] == "3" and "sd_merge_recipe" not in metadata


def test_models_of_different_families_are_refused(services: Any) -> None:
    with pytest.raises(MergeRequestError, match=r"alpha.safetensors is SD 1.x \(sd1\) but big-xl.safetensors "
                                                r"is SDXL \(sdxl\): checkpoints of different families"):
        services.merger.merge(MergeRequest("alpha", "big-xl"))


@pytest.mark.parametrize(("request_fields", "words"), [
    ({"primary_model_name": "alpha", "secondary_model_name": "nope"},
     "secondary_model_name: checkpoint 'nope'"),
    ({"primary_model_name": "alpha", "interp_method": "Add difference", "secondary_model_name": "beta"},
     "tertiary_model_name: this merge needs a model here"),
    ({"primary_model_name": "alpha", "secondary_model_name": "beta", "interp_method": "Average"},
     "interp_method: 'Average' is not one of"),
    ({"primary_model_name": "alpha", "secondary_model_name": "beta", "multiplier": 1.5},
     "multiplier: from 0 to 1"),
    ({"primary_model_name": "alpha", "secondary_model_name": "beta", "checkpoint_format": "ckpt"},
     "writes .safetensors only"),
    ({"primary_model_name": "alpha", "secondary_model_name": "beta", "custom_name": "../escape"},
     "must be a plain file name"),
    ({"primary_model_name": "alpha", "secondary_model_name": "beta", "custom_name": "beta"},
     "already exists"),
    ({"primary_model_name": "alpha", "bake_in_vae": "missing.pt", "interp_method": "No interpolation"},
     "bake_in_vae: VAE 'missing.pt' not found"),
    ({"primary_model_name": "alpha", "secondary_model_name": "beta", "metadata_json": "{oops"},
     "metadata_json: not valid JSON"),
])
def test_bad_requests_name_the_field_and_write_nothing(services: Any, request_fields: dict[str, Any],
                                                       words: str) -> None:
    before = sorted(p.name for p in services.settings.paths.ckpt_dirs[0].iterdir())
    with pytest.raises(MergeRequestError) as info:
        services.merger.merge(MergeRequest(**request_fields))
    assert words in str(info.value)
    assert sorted(p.name for p in services.settings.paths.ckpt_dirs[0].iterdir()) == before


def test_the_merge_command(tmp_path: Path, inputs: dict[str, Path],
                           capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    for key in ("a", "b", "xl"):
        shutil.copy(inputs[key], models / inputs[key].name)
    code = main(["--data-dir", str(tmp_path), "merge", "alpha", "beta", "--multiplier", "0.5",
                 "--name", "mixed"])
    out = capsys.readouterr()
    assert code == 0, out.err
    title = out.out.strip()
    assert title.startswith("mixed.safetensors [") and (models / "mixed.safetensors").exists()
    assert "Checkpoint saved to" in out.err
    code = main(["--data-dir", str(tmp_path), "merge", "alpha", "big-xl"])
    assert code == 2 and "error: alpha.safetensors is SD 1.x" in capsys.readouterr().err

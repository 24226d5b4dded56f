"""Checkpoint and VAE discovery, A1111 titles, and lookup by every name and hash a user may paste."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from sdweb.engine.models import hashes, safetensors_io
from sdweb.engine.models.errors import CheckpointNotFoundError, VaeNotFoundError
from sdweb.engine.models.hashes import HashCache
from sdweb.engine.models.registry import CheckpointInfo, CheckpointRegistry, VaeRegistry
from tests.fixtures.checkpoints import write_tiny_diffusers_folder

#: A few keys in the original single-file layout: enough to look like a checkpoint to a person.
SD1_KEYS = {
    "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
    "model.diffusion_model.out.2.weight": (4, 8, 3, 3),
    "first_stage_model.decoder.conv_in.weight": (8, 4, 3, 3),
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (16, 8),
}


def write_checkpoint(path: Path, seed: int = 0, keys: dict[str, tuple[int, ...]] = SD1_KEYS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    save_file({key: rng.standard_normal(shape).astype(np.float16) for key, shape in keys.items()}, str(path))
    return path


def write_diffusers_folder(folder: Path) -> Path:
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    write_checkpoint(folder / "unet" / "diffusion_pytorch_model.safetensors")
    return folder


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models" / "Stable-diffusion"
    write_checkpoint(root / "zeta.safetensors", seed=1)
    write_checkpoint(root / "Alpha.safetensors", seed=2)
    write_checkpoint(root / "sub" / "deep" / "beta.safetensors", seed=3)
    (root / "legacy.ckpt").write_bytes(b"not really a pickle, but listing never opens it")
    (root / "other.pt").write_bytes(b"pt")
    write_checkpoint(root / "zeta.vae.safetensors", seed=4)  # a VAE beside a checkpoint: not a checkpoint
    (root / "zeta.yaml").write_text("model: {}")
    (root / "notes.txt").write_text("hello")
    write_checkpoint(root / ".cache" / "partial.safetensors", seed=5)
    write_diffusers_folder(root / "diffusers" / "my-pipe")
    return root


@pytest.fixture
def cache(tmp_path: Path) -> HashCache:
    return HashCache(tmp_path / "cache")


def names(infos: list[CheckpointInfo]) -> list[str]:
    return [info.name for info in infos]


def test_scan_is_recursive_sorted_and_lists_diffusers_folders(models: Path, cache: HashCache) -> None:
    infos = CheckpointRegistry([models], cache).refresh()

    assert names(infos) == [
        "Alpha.safetensors",
        "diffusers/my-pipe",
        "legacy.ckpt",
        "other.pt",
        "sub/deep/beta.safetensors",
        "zeta.safetensors",
    ]
    kinds = {info.name: info.kind for info in infos}
    assert kinds["diffusers/my-pipe"] == "diffusers"
    assert kinds["legacy.ckpt"] == kinds["other.pt"] == "ckpt"
    assert kinds["zeta.safetensors"] == "safetensors"


def test_model_name_and_titles_follow_a1111(models: Path, cache: HashCache) -> None:
    registry = CheckpointRegistry([models], cache)
    beta = registry.find("sub/deep/beta.safetensors")

    assert beta.model_name == "sub_deep_beta"
    assert beta.title == "sub/deep/beta.safetensors"  # hash not known yet: title is the name alone
    assert beta.path == models / "sub" / "deep" / "beta.safetensors"
    assert beta.size == beta.path.stat().st_size

    hashed = registry.ensure_hash(beta)
    full = hashlib.sha256(beta.path.read_bytes()).hexdigest()

    assert hashed.sha256 == full
    assert hashed.shorthash == full[:10]
    assert hashed.title == f"sub/deep/beta.safetensors [{full[:10]}]"
    assert hashed.short_title == f"beta [{full[:10]}]"
    assert hashed.legacy_hash == "e3b0c442"  # files under 1 MiB, as in A1111
    assert registry.find("sub/deep/beta.safetensors").title == hashed.title
    assert not hashed.is_demo


def test_diffusers_folder_is_listed_once_and_not_descended(models: Path, cache: HashCache) -> None:
    infos = CheckpointRegistry([models], cache).refresh()
    pipe = next(info for info in infos if info.kind == "diffusers")

    assert pipe.path == models / "diffusers" / "my-pipe"
    assert pipe.model_name == "diffusers_my-pipe"
    assert pipe.title == "diffusers/my-pipe"
    assert not any("diffusion_pytorch_model" in name for name in names(infos))
    assert pipe.size > 0


@pytest.mark.parametrize(
    "query",
    [
        "sub/deep/beta.safetensors",
        "sub/deep/beta",
        "sub_deep_beta",
        "beta",
    ],
)
def test_find_by_names(models: Path, cache: HashCache, query: str) -> None:
    registry = CheckpointRegistry([models], cache)

    assert registry.find(query).name == "sub/deep/beta.safetensors"


def test_find_by_title_and_every_hash(models: Path, cache: HashCache) -> None:
    registry = CheckpointRegistry([models], cache)
    registry.hash_all()
    beta = registry.find("sub/deep/beta.safetensors")
    data = beta.path.read_bytes()
    full = hashlib.sha256(data).hexdigest()

    assert registry.find(beta.title) == beta
    assert registry.find(full[:10]) == beta
    assert registry.find(full[:10].upper()) == beta
    assert registry.find(full) == beta
    assert registry.find(f"beta [{full[:10]}]") == beta


def test_find_by_legacy_hash_of_a_large_file(tmp_path: Path, cache: HashCache) -> None:
    root = tmp_path / "ckpts"
    root.mkdir()
    big = root / "old.ckpt"
    payload = bytes(range(256)) * (0x120000 // 256)
    big.write_bytes(payload)
    registry = CheckpointRegistry([root], cache)
    legacy = hashlib.sha256(payload[0x100000:0x110000]).hexdigest()[:8]

    # Legacy hashes are cheap (64 KiB), so lookup computes them even before hash_all.
    found = registry.find(legacy)

    assert found.path == big
    assert found.legacy_hash == legacy
    assert registry.find(f"old.ckpt [{legacy}]").path == big


def test_title_priority_beats_hash_lookalike_names(tmp_path: Path, cache: HashCache) -> None:
    root = tmp_path / "ckpts"
    first = write_checkpoint(root / "a.safetensors", seed=1)
    registry = CheckpointRegistry([root], cache)
    short = registry.ensure_hash(registry.find("a")).shorthash
    assert short is not None
    write_checkpoint(root / f"{short}.safetensors", seed=2)  # a file *named* like the other's hash
    registry.refresh()

    assert registry.find(short).name == f"{short}.safetensors"  # name without extension comes first
    assert registry.find(f"a.safetensors [{short}]").path == first


def test_saved_title_of_an_unhashed_file_is_found_by_hashing_it(models: Path, tmp_path: Path) -> None:
    full = hashlib.sha256((models / "zeta.safetensors").read_bytes()).hexdigest()
    registry = CheckpointRegistry([models], HashCache(tmp_path / "fresh-cache"))

    found = registry.find(f"zeta.safetensors [{full[:10]}]")

    assert found.sha256 == full


def test_saved_title_of_a_replaced_file_says_so(models: Path, cache: HashCache) -> None:
    registry = CheckpointRegistry([models], cache)

    with pytest.raises(CheckpointNotFoundError, match=r"zeta\.safetensors \[[0-9a-f]{10}\] has another hash"):
        registry.find("zeta.safetensors [0123456789]")


def test_unknown_name_lists_known_titles(models: Path, cache: HashCache) -> None:
    registry = CheckpointRegistry([models], cache)

    with pytest.raises(CheckpointNotFoundError) as caught:
        registry.find("sd_xl_base_1.0.safetensors")

    message = str(caught.value)
    assert "sd_xl_base_1.0.safetensors" in message
    assert "Alpha.safetensors" in message and "and 1 more" in message
    assert isinstance(caught.value, LookupError)


def test_unhashed_files_are_mentioned_when_a_hash_is_not_found(models: Path, cache: HashCache) -> None:
    registry = CheckpointRegistry([models], cache)

    with pytest.raises(CheckpointNotFoundError, match="not hashed yet"):
        registry.find("0123456789")


def test_empty_folder_says_where_to_put_checkpoints(tmp_path: Path, cache: HashCache) -> None:
    empty = tmp_path / "models" / "Stable-diffusion"
    empty.mkdir(parents=True)
    registry = CheckpointRegistry([empty, tmp_path / "missing"], cache)

    assert registry.refresh() == []
    expected = "no checkpoints found; put .safetensors files in"
    with pytest.raises(CheckpointNotFoundError, match=expected) as caught:
        registry.find("anything")
    assert str(empty) in str(caught.value)


def test_a_folder_that_is_itself_a_diffusers_model(tmp_path: Path, cache: HashCache) -> None:
    pipe = write_diffusers_folder(tmp_path / "my-pipe")

    infos = CheckpointRegistry([pipe], cache).refresh()

    assert [(info.name, info.kind) for info in infos] == [("my-pipe", "diffusers")]


def test_several_folders_and_duplicates(tmp_path: Path, cache: HashCache) -> None:
    main, extra = tmp_path / "main", tmp_path / "extra"
    write_checkpoint(main / "one.safetensors", seed=1)
    write_checkpoint(extra / "two.safetensors", seed=2)
    (main / "link").symlink_to(extra, target_is_directory=True)

    infos = CheckpointRegistry([main, extra], cache).refresh()

    assert sorted(info.path.resolve().name for info in infos) == ["one.safetensors", "two.safetensors"]


def test_refresh_sees_new_and_removed_files(models: Path, cache: HashCache) -> None:
    registry = CheckpointRegistry([models], cache)
    assert "new.safetensors" not in names(registry.list())

    write_checkpoint(models / "new.safetensors")
    (models / "zeta.safetensors").unlink()
    assert "new.safetensors" not in names(registry.list())  # list() is the last scan
    registry.refresh()

    assert "new.safetensors" in names(registry.list())
    assert "zeta.safetensors" not in names(registry.list())


def test_garbage_file_is_listed_with_a_reason(models: Path, cache: HashCache) -> None:
    (models / "garbage.safetensors").write_bytes(b"\x00" * 3)
    (models / "truncated.safetensors").write_bytes(struct.pack("<Q", 1 << 20) + b"{")

    infos = {info.name: info for info in CheckpointRegistry([models], cache).refresh()}

    assert infos["garbage.safetensors"].detect_error
    assert infos["truncated.safetensors"].detect_error
    assert not infos["garbage.safetensors"].usable
    assert infos["legacy.ckpt"].detect_error is None and infos["legacy.ckpt"].family is None


def test_listing_never_hashes_and_is_fast_once_hashes_are_cached(
    tmp_path: Path, cache: HashCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "many"
    keys = {f"model.diffusion_model.block.{i}.weight": (4, 4) for i in range(1000)}
    for index in range(50):
        path = write_checkpoint(root / f"model-{index:02d}.safetensors", seed=index, keys=keys)
        with path.open("r+b") as handle:
            handle.truncate(4 * 1024**3)  # a sparse 4 GB file: listing must not read its data
    fake_hashes = {}

    def fake_sha256(path: Path, on_progress=None) -> str:
        fake_hashes[path.name] = hashlib.sha256(path.name.encode()).hexdigest()
        return fake_hashes[path.name]

    monkeypatch.setattr(hashes, "file_sha256", fake_sha256)
    monkeypatch.setattr(hashes, "legacy_hash", lambda path: "0badc0de")
    CheckpointRegistry([root], cache).hash_all()
    assert len(fake_hashes) == 50

    def no_hashing(*args: object, **kwargs: object) -> str:
        raise AssertionError("listing hashed a file")

    def no_header_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("a fresh start re-read a header whose detection result was stored")

    monkeypatch.setattr(hashes, "file_sha256", no_hashing)
    monkeypatch.setattr(hashes, "legacy_hash", no_hashing)
    monkeypatch.setattr(safetensors_io, "read_safetensors_header", no_header_reading)
    fresh = CheckpointRegistry([root], HashCache(tmp_path / "cache"))  # as after a restart
    started = time.perf_counter()
    infos = fresh.refresh()
    elapsed = time.perf_counter() - started

    assert len(infos) == 50
    assert all(info.detect_error and "no text encoder" in info.detect_error for info in infos)
    assert all(info.size == 4 * 1024**3 for info in infos)
    assert infos[0].title == f"model-00.safetensors [{fake_hashes['model-00.safetensors'][:10]}]"
    assert elapsed < 1.0, f"listing 50 cached checkpoints took {elapsed:.2f} s"


def test_importing_the_registry_does_not_import_torch() -> None:
    code = (
        "import sys, pathlib, tempfile\n"
        "from sdweb.engine.models.hashes import HashCache\n"
        "from sdweb.engine.models.registry import CheckpointRegistry\n"
        "d = pathlib.Path(tempfile.mkdtemp())\n"
        "(d / 'm.safetensors').write_bytes(b'\\x02\\x00\\x00\\x00\\x00\\x00\\x00\\x00{}')\n"
        "CheckpointRegistry([d], HashCache(d / 'cache')).refresh()\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# -- detection (tiny checkpoints in the original single-file layout, from tests/fixtures) -----------


def test_listing_reports_families_from_headers(
    tmp_path: Path, cache: HashCache, tiny_sd1_path: Path, tiny_sd2v_path: Path, tiny_sdxl_path: Path
) -> None:
    root = tmp_path / "ckpts"
    root.mkdir()
    for source in (tiny_sd1_path, tiny_sd2v_path, tiny_sdxl_path):
        (root / source.name).symlink_to(source)
    lora = root / "not-a-model.safetensors"
    save_file({"lora_unet_down_blocks_0.lora_down.weight": np.zeros((4, 8), np.float16)}, str(lora))

    infos = {info.name: info for info in CheckpointRegistry([root], cache).refresh()}

    assert infos["tiny-sd1.safetensors"].family == "sd1"
    assert infos["tiny-sd2v.safetensors"].family == "sd2-v"
    assert infos["tiny-sdxl.safetensors"].family == "sdxl"
    assert all(infos[name].detect_error is None for name in infos if name.startswith("tiny"))
    assert infos["not-a-model.safetensors"].family is None
    assert "LoRA" in (infos["not-a-model.safetensors"].detect_error or "")


def test_yaml_beside_a_checkpoint_decides_sd2_prediction_and_changes_are_noticed(
    tmp_path: Path, cache: HashCache, tiny_sd2v_path: Path
) -> None:
    root = tmp_path / "ckpts"
    root.mkdir()
    model = root / "model.safetensors"
    model.write_bytes(tiny_sd2v_path.read_bytes())
    registry = CheckpointRegistry([root], cache)
    assert registry.refresh()[0].family == "sd2-v"  # A1111: SD 2.x without a .yaml is the 768-v model

    (root / "model.yaml").write_text("model:\n  params:\n    parameterization: eps\n")
    assert registry.refresh()[0].family == "sd2"

    write_checkpoint(model)  # replaced by something that is not a checkpoint
    info = registry.refresh()[0]
    assert info.family is None and info.detect_error


def test_diffusers_folder_family(tmp_path: Path, cache: HashCache) -> None:
    root = tmp_path / "ckpts"
    write_tiny_diffusers_folder(root / "tiny-diffusers")

    (info,) = CheckpointRegistry([root], cache).refresh()

    assert info.kind == "diffusers"
    assert info.family == "sd1"
    assert info.detect_error is None


# -- VAEs -----------------------------------------------------------------------------------------


@pytest.fixture
def vae_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "models" / "VAE"
    write_checkpoint(folder / "vae-ft-mse.safetensors", seed=10)
    write_checkpoint(folder / "sdxl" / "sdxl_vae.safetensors", seed=11)
    (folder / "kl-f8.pt").write_bytes(b"pt")
    (folder / "readme.txt").write_text("hi")
    return folder


def test_vaes_are_listed_recursively(vae_dir: Path) -> None:
    vaes = VaeRegistry(vae_dir)

    listed = [info.name for info in vaes.list()]
    assert listed == ["kl-f8.pt", "sdxl/sdxl_vae.safetensors", "vae-ft-mse.safetensors"]
    assert vaes.choices()[:2] == ["Automatic", "None"]


@pytest.mark.parametrize("name", ["vae-ft-mse.safetensors", "vae-ft-mse"])
def test_find_vae_by_name(vae_dir: Path, name: str) -> None:
    assert VaeRegistry(vae_dir).find(name).path == vae_dir / "vae-ft-mse.safetensors"


def test_find_vae_in_subfolder(vae_dir: Path) -> None:
    vaes = VaeRegistry(vae_dir)

    assert vaes.find("sdxl/sdxl_vae.safetensors").path == vae_dir / "sdxl" / "sdxl_vae.safetensors"
    assert vaes.find("sdxl_vae").path == vae_dir / "sdxl" / "sdxl_vae.safetensors"


def test_unknown_vae_lists_known_ones(vae_dir: Path) -> None:
    with pytest.raises(VaeNotFoundError, match="known VAEs: kl-f8.pt"):
        VaeRegistry(vae_dir).find("missing.safetensors")


def test_resolve_automatic_picks_the_vae_beside_the_checkpoint(
    models: Path, vae_dir: Path, cache: HashCache
) -> None:
    registry = CheckpointRegistry([models], cache)
    vaes = VaeRegistry(vae_dir)
    zeta, alpha = registry.find("zeta"), registry.find("Alpha")

    assert vaes.resolve("Automatic", zeta) == models / "zeta.vae.safetensors"
    assert vaes.resolve(None, zeta) == models / "zeta.vae.safetensors"
    assert vaes.resolve("Automatic", alpha) is None
    assert vaes.resolve("None", zeta) is None
    assert vaes.resolve("vae-ft-mse.safetensors", zeta) == vae_dir / "vae-ft-mse.safetensors"
    with pytest.raises(VaeNotFoundError):
        vaes.resolve("nope", zeta)


def test_resolve_automatic_also_accepts_a_vae_pt_and_the_vae_folder(
    models: Path, vae_dir: Path, cache: HashCache
) -> None:
    (models / "sub" / "deep" / "beta.vae.pt").write_bytes(b"pt")
    write_checkpoint(vae_dir / "Alpha.vae.safetensors", seed=12)
    registry = CheckpointRegistry([models], cache)
    vaes = VaeRegistry(vae_dir)

    assert vaes.resolve("Automatic", registry.find("beta")) == models / "sub" / "deep" / "beta.vae.pt"
    assert vaes.resolve("Automatic", registry.find("Alpha")) == vae_dir / "Alpha.vae.safetensors"
    assert vaes.resolve("Automatic", registry.find("diffusers/my-pipe")) is None


def test_missing_vae_folder_lists_nothing(tmp_path: Path) -> None:
    vaes = VaeRegistry(tmp_path / "nowhere")

    assert vaes.list() == []
    with pytest.raises(VaeNotFoundError, match="no VAE files in"):
        vaes.find("x")


def test_vae_hash_is_a1111_short_hash_and_cached(vae_dir: Path, cache: HashCache) -> None:
    vaes = VaeRegistry(vae_dir, cache)
    path = vaes.find("vae-ft-mse").path

    assert vaes.short_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    assert cache.get(path) == hashlib.sha256(path.read_bytes()).hexdigest()

"""Checkpoint merging: the result equals A1111's formula tensor by tensor, has A's layout, loads, and is
written one tensor at a time."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sdweb.engine.models.merge import MergeError, MergePlan, merge_checkpoints
from tests.fixtures.checkpoints import write_tiny_sd1, write_tiny_vae

REPO = Path(__file__).resolve().parents[3]


def variant(source: Path, target: Path, seed: int) -> Path:
    """``source`` with every float weight moved by seeded noise: another model of the same layout."""
    generator = torch.Generator().manual_seed(seed)
    state = load_file(str(source))
    changed = {k: (v + 0.1 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v)
               for k, v in state.items()}
    save_file(changed, str(target), metadata={"format": "pt", "source": target.stem})
    return target


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny_sd1_path: Path) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("merge-inputs")
    return {"a": variant(tiny_sd1_path, folder / "a.safetensors", 1),
            "b": variant(tiny_sd1_path, folder / "b.safetensors", 2),
            "c": variant(tiny_sd1_path, folder / "c.safetensors", 3)}


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))  # also checks the file is valid safetensors


def test_weighted_sum_is_the_formula_for_every_tensor(models: dict[str, Path], tmp_path: Path,
                                                      load: Callable[..., Any]) -> None:
    out = tmp_path / "merged.safetensors"
    outcome = merge_checkpoints(MergePlan("Weighted sum", models["a"], models["b"], multiplier=0.3,
                                          metadata={"format": "pt", "note": "x"}), out)
    a, b, merged = tensors(models["a"]), tensors(models["b"]), tensors(out)
    assert list(merged) == list(a) or set(merged) == set(a)
    merged_count = 0
    for key, value in merged.items():
        assert value.dtype == a[key].dtype and value.shape == a[key].shape, key
        if value.is_floating_point() and "position_ids" not in key:
            torch.testing.assert_close(value, 0.7 * a[key] + 0.3 * b[key], rtol=0, atol=1e-6)
            merged_count += 1
        else:
            assert torch.equal(value, a[key]), key
    assert merged_count == outcome.merged > 100
    with safe_open(str(out), "pt") as handle:
        assert handle.metadata() == {"format": "pt", "note": "x"}
    model = load(out)  # the real single-file loader builds a pipeline from it
    assert model.pipe.unet is not None


def test_add_difference_is_the_formula(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "diff.safetensors"
    merge_checkpoints(MergePlan("Add difference", models["a"], models["b"], models["c"], multiplier=0.6), out)
    a, b, c, merged = (tensors(p) for p in (models["a"], models["b"], models["c"], out))
    key = "model.diffusion_model.input_blocks.0.0.weight"
    torch.testing.assert_close(merged[key], a[key] + 0.6 * (b[key] - c[key]), rtol=0, atol=1e-6)
    for key in merged:
        if merged[key].is_floating_point() and "position_ids" not in key:
            torch.testing.assert_close(merged[key], a[key] + 0.6 * (b[key] - c[key]), rtol=0, atol=1e-6)


def test_fp16_and_no_interpolation(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "half.safetensors"
    merge_checkpoints(MergePlan("No interpolation", models["a"], half=True), out)
    a, merged = tensors(models["a"]), tensors(out)
    for key, value in merged.items():
        if a[key].is_floating_point():
            assert value.dtype == torch.float16 and torch.equal(value, a[key].half())
        else:
            assert value.dtype == a[key].dtype
    weighted = tmp_path / "weighted-half.safetensors"
    merge_checkpoints(MergePlan("Weighted sum", models["a"], models["b"], multiplier=0.5, half=True),
                      weighted)
    key = "first_stage_model.decoder.conv_out.weight"
    b = tensors(models["b"])
    assert torch.equal(tensors(weighted)[key], (0.5 * a[key] + 0.5 * b[key]).half())
    assert out.stat().st_size < models["a"].stat().st_size * 0.6


def test_an_inpainting_a_takes_b_into_its_first_four_channels(models: dict[str, Path],
                                                              tmp_path: Path) -> None:
    inpaint = write_tiny_sd1(tmp_path / "inpaint.safetensors", in_channels=9)
    out = tmp_path / "merged.safetensors"
    outcome = merge_checkpoints(MergePlan("Weighted sum", inpaint, models["b"], multiplier=0.5), out)
    assert outcome.is_inpainting
    key = "model.diffusion_model.input_blocks.0.0.weight"
    a, b, merged = tensors(inpaint)[key], tensors(models["b"])[key], tensors(out)[key]
    assert merged.shape[1] == 9
    torch.testing.assert_close(merged[:, :4], 0.5 * a[:, :4] + 0.5 * b, rtol=0, atol=1e-6)
    assert torch.equal(merged[:, 4:], a[:, 4:])
    with pytest.raises(MergeError, match="A must be the inpainting model"):
        merge_checkpoints(MergePlan("Weighted sum", models["b"], inpaint), tmp_path / "wrong.safetensors")
    assert not (tmp_path / "wrong.safetensors").exists()


@pytest.mark.parametrize("ldm", [True, False])
def test_a_vae_is_baked_in(models: dict[str, Path], tmp_path: Path, ldm: bool) -> None:
    vae = write_tiny_vae(tmp_path / "other.vae.safetensors", ldm=ldm)
    out = tmp_path / "baked.safetensors"
    merge_checkpoints(MergePlan("No interpolation", models["a"], vae=vae), out)
    baked, original = tensors(out), tensors(models["a"])
    reference = tensors(write_tiny_vae(tmp_path / "ldm.vae.safetensors", ldm=True))
    for key, value in reference.items():
        full = "first_stage_model." + key
        assert torch.equal(baked[full].reshape(value.shape), value), key
    assert not torch.equal(baked["first_stage_model.decoder.conv_out.weight"],
                           original["first_stage_model.decoder.conv_out.weight"])
    unet = "model.diffusion_model.out.2.weight"
    assert torch.equal(baked[unet], original[unet])


def test_discarded_weights_are_left_out(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "no-vae.safetensors"
    merge_checkpoints(MergePlan("No interpolation", models["a"], discard=r"^first_stage_model\."), out)
    keys = set(tensors(out))
    assert keys and not any(key.startswith("first_stage_model.") for key in keys)
    with pytest.raises(MergeError, match="not a regular expression"):
        merge_checkpoints(MergePlan("No interpolation", models["a"], discard="(oops"), out)


def test_layouts_that_differ_are_refused_naming_the_key(models: dict[str, Path], tmp_path: Path) -> None:
    state = tensors(models["b"])
    state["model.diffusion_model.out.2.weight"] = torch.zeros(3, 3)
    odd = tmp_path / "odd.safetensors"
    save_file(state, str(odd))
    with pytest.raises(MergeError, match=r"model.diffusion_model.out.2.weight: A has shape \[4, 32, 3, 3\]"):
        merge_checkpoints(MergePlan("Weighted sum", models["a"], odd), tmp_path / "x.safetensors")
    with pytest.raises(MergeError, match="needs a tertiary model"):
        merge_checkpoints(MergePlan("Add difference", models["a"], models["b"]), tmp_path / "x.safetensors")


def test_peak_memory_stays_far_below_the_models_size(tmp_path: Path) -> None:
    """Three 48 MiB models merged in a fresh process: the resident peak grows by far less than one model
    (loading them whole would add 3 x 48 MiB)."""
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        generator = torch.Generator().manual_seed(seed)
        weights = {f"model.diffusion_model.w{i}": torch.randn(256, 1024, generator=generator)
                   for i in range(48)}
        save_file(weights, str(tmp_path / f"{name}.safetensors"))
    script = textwrap.dedent(f"""
        import json, re, sys
        from pathlib import Path
        import torch
        from sdweb.engine.models.merge import MergePlan, merge_checkpoints
        torch.ones(8) * 2  # warm up the allocator
        def status(name):
            return int(re.search(name + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current size
        except OSError:
            print(json.dumps(None)); sys.exit()
        before = status("VmRSS")
        folder = Path({str(tmp_path)!r})
        merge_checkpoints(MergePlan("Add difference", folder / "a.safetensors", folder / "b.safetensors",
                                    folder / "c.safetensors", multiplier=0.5), folder / "out.safetensors")
        print(json.dumps(status("VmHWM") - before))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                          timeout=120, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                                            "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    grown = json.loads(done.stdout.strip().splitlines()[-1])
    if grown is None:
        pytest.skip("this kernel does not let a process reset its peak memory")
    model_size = 48 * 2**20
    assert grown < model_size / 2, f"the merge's peak grew by {grown / 2**20:.0f} MiB"
    assert (tmp_path / "out.safetensors").stat().st_size > model_size

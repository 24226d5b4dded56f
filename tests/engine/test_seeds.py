"""Seeds as A1111 uses them: per-image generators, CPU/GPU source, variation seeds, seed resize."""

from __future__ import annotations

import pytest
import torch

from sdweb.engine.seeds import create_batch_noise, create_generator, slerp


def _noise(seeds: list[int], **kwargs) -> torch.Tensor:
    kwargs.setdefault("width", 64)
    kwargs.setdefault("height", 64)
    kwargs.setdefault("rng", "CPU")
    kwargs.setdefault("device", "cpu")
    return create_batch_noise(seeds=seeds, **kwargs).latents


def test_cpu_noise_is_torch_randn_of_the_seed() -> None:
    """The noise an A1111 user gets for a seed with the CPU source."""
    expected = torch.randn((4, 8, 8), generator=torch.Generator("cpu").manual_seed(1234))
    assert torch.equal(_noise([1234])[0], expected)


def test_image_i_of_a_batch_equals_the_seed_alone() -> None:
    batch = _noise([7, 8, 9])
    assert torch.equal(batch[2], _noise([9])[0])
    assert not torch.equal(batch[0], batch[1])


def test_generators_keep_drawing_per_image_after_the_initial_noise() -> None:
    batch = create_batch_noise(seeds=[5, 6], width=64, height=64, rng="CPU", device="cpu")
    alone = create_batch_noise(seeds=[6], width=64, height=64, rng="CPU", device="cpu")
    assert torch.equal(torch.randn(3, generator=batch.generators[1]),
                       torch.randn(3, generator=alone.generators[0]))


def test_gpu_source_on_a_cpu_device_is_the_cpu_noise() -> None:
    assert torch.equal(_noise([3], rng="GPU"), _noise([3], rng="CPU"))
    assert create_generator(3, "GPU", "cpu").device.type == "cpu"


def test_noise_is_float32_on_the_device() -> None:
    noise = create_batch_noise(seeds=[1], width=128, height=64, rng="CPU", device="cpu", scale_factor=8)
    assert noise.latents.dtype == torch.float32
    assert noise.latents.shape == (1, 4, 8, 16)


def test_variation_strength_zero_is_the_seed_and_one_is_the_subseed() -> None:
    plain = _noise([10])
    assert torch.equal(_noise([10], subseeds=[20], subseed_strength=0.0), plain)
    torch.testing.assert_close(_noise([10], subseeds=[20], subseed_strength=1.0), _noise([20]))
    half = _noise([10], subseeds=[20], subseed_strength=0.5)
    assert not torch.allclose(half, plain) and not torch.allclose(half, _noise([20]))


def test_slerp_keeps_the_noise_scale() -> None:
    low = torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(1))
    high = torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(2))
    mixed = slerp(0.5, low, high)
    # a linear blend of two independent noises would shrink the std to ~0.71
    assert 0.9 < float(mixed.std()) < 1.1


def test_seed_resize_from_the_same_size_changes_nothing() -> None:
    assert torch.equal(_noise([4], seed_resize_from=(64, 64)), _noise([4]))


def test_seed_resize_from_a_smaller_size_centres_its_noise() -> None:
    small = _noise([4], width=32, height=32)[0]  # 4 x 4 latents
    resized = _noise([4], width=64, height=64, seed_resize_from=(32, 32))[0]  # 8 x 8
    assert torch.equal(resized[:, 2:6, 2:6], small)
    # outside the centre: the image's own generator at the real size
    own = _noise([4])[0]
    assert torch.equal(resized[:, 0, :], own[:, 0, :])


def test_seed_resize_from_a_larger_size_crops_its_middle() -> None:
    large = _noise([4], width=128, height=128)[0]  # 16 x 16
    resized = _noise([4], width=64, height=64, seed_resize_from=(128, 128))[0]  # 8 x 8
    assert torch.equal(resized, large[:, 4:12, 4:12])


def test_unresolved_seed_is_refused() -> None:
    with pytest.raises(ValueError, match="concrete"):
        _noise([-1])

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


# -- NV: A1111's CPU reproduction of CUDA's torch.randn ------------------------------------------------


def test_nv_generator_gives_a1111s_published_values() -> None:
    """A1111's rng_philox documents Generator(seed=0).randn((3, 4)); CUDA's torch.randn gives the same."""
    from sdweb.engine.seeds import PhiloxGenerator

    expected = torch.tensor([[-0.92466259, -0.42534415, -2.6438457, 0.14518388],
                             [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
                             [-1.07454231, -0.36314407, -1.67105067, 2.26550497]])
    drawn = PhiloxGenerator(0).randn((3, 4))
    assert drawn.dtype == torch.float32
    torch.testing.assert_close(drawn, expected, atol=3e-7, rtol=0)  # printed with 8 decimals: 1 ulp


@pytest.mark.parametrize(("seed", "expected"), [
    # Derived from the definition (Philox-4x32-10 on counters (draw, 0, i, 0), key = the 64-bit seed,
    # Box-Muller sine branch of the first two words); seed 2**40 + 7 uses the key's high word.
    (1, [-0.29627782, 2.67644811, -0.14084640, -0.84409505, 0.29053840, -0.28383082]),
    (12345, [0.57864130, -0.52475548, -0.29190373, 0.01401389, -2.16472960, 0.27898726]),
    (2**40 + 7, [-0.47904980, -1.27825058, -0.24156637, -0.38499948, 0.27952310, -0.60232973]),
])
def test_nv_generator_pinned_values(seed: int, expected: list[float]) -> None:
    from sdweb.engine.seeds import PhiloxGenerator

    torch.testing.assert_close(PhiloxGenerator(seed).randn((6,)), torch.tensor(expected), atol=1e-7, rtol=0)


def test_nv_second_draw_moves_the_offset_and_noise_uses_it() -> None:
    from sdweb.engine.seeds import PhiloxGenerator

    generator = PhiloxGenerator(0)
    first, second = generator.randn((8,)), generator.randn((8,))
    assert not torch.equal(first, second)
    batch = create_batch_noise(seeds=[0, 1], width=16, height=16, rng="NV", device="cpu")
    assert torch.equal(batch.latents[0], PhiloxGenerator(0).randn((4, 2, 2)))
    assert torch.equal(batch.latents[1], PhiloxGenerator(1).randn((4, 2, 2)))
    # the sampler's next draw is the generator's second one
    continued = PhiloxGenerator(0)
    continued.randn((4, 2, 2))
    assert torch.equal(batch.generators[0].randn((4, 2, 2)), continued.randn((4, 2, 2)))


@pytest.mark.gpu
def test_nv_equals_cuda_torch_randn_bit_for_bit() -> None:
    from sdweb.engine.seeds import PhiloxGenerator

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    for seed in (0, 1, 12345, 2**40 + 7):
        for shape in ((4, 64, 64), (4, 128, 96)):
            cuda = torch.randn(shape, generator=torch.Generator("cuda").manual_seed(seed), device="cuda")
            assert torch.equal(PhiloxGenerator(seed).randn(shape), cuda.cpu()), (seed, shape)


# -- ENSD ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rng", ["CPU", "NV"])
def test_ensd_reseeds_the_sampling_noise_not_the_initial_noise(rng: str) -> None:
    plain = create_batch_noise(seeds=[100, 101], width=16, height=16, rng=rng, device="cpu")
    delta = create_batch_noise(seeds=[100, 101], width=16, height=16, rng=rng, device="cpu",
                               eta_noise_seed_delta=31337)
    assert torch.equal(plain.latents, delta.latents)  # the picture's starting noise is the seed's
    for index, seed in enumerate([100, 101]):
        fresh = create_generator(seed + 31337, rng, "cpu")
        expected = fresh.randn((4, 2, 2)) if rng == "NV" else torch.randn((4, 2, 2), generator=fresh)
        drawn = (delta.generators[index].randn((4, 2, 2)) if rng == "NV"
                 else torch.randn((4, 2, 2), generator=delta.generators[index]))
        assert torch.equal(drawn, expected)

"""Example sampler extension: plain Euler in the sampling-function contract of ``sdweb.plugin_api``."""

from sdweb.plugin_api import SamplerSpec, hookimpl


def sample_euler(denoise, x, sigmas, *, generator=None, callback=None):
    """Step the probability-flow ODE ``dx/dsigma = (x - x0) / sigma`` from ``sigmas[0]`` down to 0.

    Plain Euler adds no noise, so ``generator`` is unused; ancestral samplers would draw from it.
    """
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, sigma)
        slope = (x - x0) / sigma
        x = x + slope * (sigma_next - sigma)
        if callback is not None:
            callback(i, x, x0)
    return x


@hookimpl
def register_samplers():
    return [SamplerSpec(name="Euler (example)", sample_fn=sample_euler, aliases=("k_euler_example",))]

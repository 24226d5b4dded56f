"""A1111's k-diffusion path: its model wrapper, its noise and its sampling algorithms.

This module owns "the same latents as A1111" for the samplers A1111 runs through k-diffusion (Euler a,
Euler, LMS, Heun, DPM2, DPM2 a, DPM++ 2S a, DPM++ 2M, DPM++ SDE, DPM++ 2M SDE (+ Heun), DPM++ 3M SDE,
DPM fast, DPM adaptive, Restart, LCM). It is written for sdweb from the published algorithms (Karras et
al. 2022, Lu et al. 2022/2023 (DPM-Solver, DPM-Solver++), Xu et al. 2023 (Restart), Luo et al. 2023
(LCM)) and from what A1111 does around them, read as facts:

- **The model wrapper** (:class:`DiscreteDenoiser`): a sigma reaches the UNet as the *nearest* training
  timestep of the model's sigmas (:class:`~sdweb.engine.samplers.schedules.DiscreteSigmas`; A1111's
  default "Enable quantization in K samplers"), the input scaled by ``1 / sqrt(sigma^2 + 1)``.
- **Schedules** are :mod:`sdweb.engine.samplers.schedules`'s; A1111's DDIM, PLMS and UniPC, which do
  not run through k-diffusion, are :mod:`sdweb.engine.samplers.timestep_samplers`'s.
- **Noise**: ancestral samplers draw the next noise of each image's own generator (A1111's
  ``ImageRNG.next``); the SDE samplers draw from one Brownian tree per image seeded with the image's seed
  (A1111's ``create_noise_sampler``), via ``torchsde``.

Every sampling function follows the contract of ``sdweb.engine.samplers.functions`` (``denoise``,
``x``, ``sigmas``, ``generator``, ``callback(i, x, x0)`` after each step) with optional keywords
``eta``, ``seeds`` (Brownian trees) and ``sigma_range`` (DPM fast / adaptive integrate between the
model's extreme sigmas, not over the schedule).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from sdweb.engine.samplers.functions import Denoise, Generators, StepCallback, noise_like
from sdweb.engine.samplers.schedules import DiscreteSigmas, LCMSigmas, karras

NoiseSampler = Callable[[Any, Any], torch.Tensor]
Cache = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------
# The denoiser: a UNet prediction as x0, as A1111's CompVis(V)Denoiser computes it
# ---------------------------------------------------------------------------------------------


class DiscreteDenoiser:
    """``denoise(x, sigma) -> x0`` around ``predict(scaled_x, timestep)`` (the CFG-combined UNet output).

    ``epsilon`` models: ``x - sigma * eps``; ``v_prediction``: ``x / (sigma^2 + 1) - v * sigma /
    sqrt(sigma^2 + 1)``. Classifier-free guidance combined on the UNet output equals A1111's combination
    on x0 (the map is affine with the same coefficients for every conditioning). LCM adds its boundary
    condition (``c_skip``/``c_out`` of the timestep scaled by 10).
    """

    def __init__(self, predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], model: DiscreteSigmas,
                 *, prediction_type: str = "epsilon", device: torch.device | str = "cpu") -> None:
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"A1111's k-diffusion samplers do not support prediction type "
                             f"{prediction_type!r}")
        self._predict = predict
        self.model = model
        self.prediction_type = prediction_type
        self._device = torch.device(device)

    def __call__(self, x: torch.Tensor, sigma: Any, *, timestep: Any = None) -> torch.Tensor:
        """x0 of ``x`` at noise level ``sigma``; the UNet sees ``timestep`` when given (UniPC's fractional
        timesteps), else the training timestep nearest to ``sigma``.
        """
        sigma_t = torch.as_tensor(sigma, dtype=torch.float32)
        c_in = float(1.0 / (sigma_t**2 + 1.0) ** 0.5)
        t = self.model.sigma_to_t(sigma_t) if timestep is None else torch.as_tensor(timestep)
        model_input = x * c_in
        output = self._predict(model_input, t.to(device=self._device, dtype=torch.float32)).to(x.dtype)
        sigma_value = float(sigma_t)
        if self.prediction_type == "epsilon":
            denoised = x + output * -sigma_value
        elif timestep is not None:
            # A1111's timestep samplers turn v into noise with the alphas of the timestep's whole part.
            alpha_bar = float(1.0 / (self.model.sigmas[int(float(t))] ** 2 + 1.0))
            eps = output * alpha_bar**0.5 + model_input * (1.0 - alpha_bar) ** 0.5
            denoised = x + eps * -sigma_value
        else:
            c_skip = float(1.0 / (sigma_t**2 + 1.0))
            c_out = float(-sigma_t / (sigma_t**2 + 1.0) ** 0.5)
            denoised = x * c_skip + output * c_out
        if isinstance(self.model, LCMSigmas):
            scaled = float(t) * 10.0
            c_skip = 0.25 / (scaled**2 + 0.25)
            c_out = scaled / (scaled**2 + 0.25) ** 0.5
            denoised = denoised * c_out + x * c_skip
        return denoised


# ---------------------------------------------------------------------------------------------
# Noise during sampling
# ---------------------------------------------------------------------------------------------


def generator_noise(x: torch.Tensor, generator: Generators) -> NoiseSampler:
    """Each call: the next noise of every image's own generator (A1111's ``ImageRNG.next``)."""
    return lambda _sigma, _sigma_next: noise_like(x, generator)


class BrownianNoise:
    """One Brownian tree per image, seeded with its seed, over ``[sigma_min, sigma_max]``.

    ``noise(sigma, sigma_next)`` is the tree's increment between the two levels, normalised to unit
    variance: so the noise depends on the sigmas, not on how many steps were taken or the batch size.
    """

    def __init__(self, x: torch.Tensor, sigma_min: Any, sigma_max: Any, seeds: Sequence[int]) -> None:
        import torchsde

        t0, t1 = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
        self._sign = 1 if t0 < t1 else -1
        t0, t1 = (t0, t1) if t0 < t1 else (t1, t0)
        w0 = torch.zeros_like(x)[0]
        if len(seeds) != x.shape[0]:
            raise ValueError(f"Brownian noise needs one seed per image: {len(seeds)} seeds, "
                             f"{x.shape[0]} images")
        self._trees = [torchsde.BrownianTree(t0, w0, t1, entropy=int(seed)) for seed in seeds]

    def __call__(self, sigma: Any, sigma_next: Any) -> torch.Tensor:
        a, b = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        sign = 1 if a < b else -1
        lo, hi = (a, b) if a < b else (b, a)
        w = torch.stack([tree(lo, hi) for tree in self._trees]) * (self._sign * sign)
        return w / (hi - lo).abs().sqrt()


def _sde_noise(x: torch.Tensor, sigmas: torch.Tensor, generator: Generators,
               seeds: Sequence[int] | None, noise_range: tuple[float, float] | None = None) -> NoiseSampler:
    """Brownian trees over the sigmas' range, or ``noise_range``; without seeds each image's generator.

    ``noise_range``: A1111's img2img spans the trees over the whole schedule, of which ``sigmas`` is the tail.
    """
    if seeds is None:
        return generator_noise(x, generator)
    if noise_range is not None:
        return BrownianNoise(x, noise_range[0], noise_range[1], seeds)
    positive = sigmas[sigmas > 0]
    return BrownianNoise(x, positive.min(), sigmas.max(), seeds)


# ---------------------------------------------------------------------------------------------
# Sampling functions
# ---------------------------------------------------------------------------------------------


def _levels(sigmas: torch.Tensor) -> list[float]:
    return [float(value) for value in sigmas]


def _f32(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)


def _ancestral(sigma_from: float, sigma_to: float, eta: float) -> tuple[float, float]:
    """``(sigma_down, sigma_up)`` in float32 tensor arithmetic, as k-diffusion computes them: a level that
    differs in its last bit can round to another training timestep in the model wrapper.
    """
    if not eta:
        return sigma_to, 0.0
    start, end = _f32(sigma_from), _f32(sigma_to)
    up = torch.minimum(end, eta * (end**2 * (start**2 - end**2) / start**2) ** 0.5)
    return float((end**2 - up**2) ** 0.5), float(up)


class Churn:
    """Karras et al.'s churn (Algorithm 2) as k-diffusion's Euler, Heun and DPM2 take it (A1111's "Sigma
    churn", "Sigma tmin", "Sigma tmax", "Sigma noise"): before step i, at ``s_tmin <= sigma_i <= s_tmax``,
    the level is raised to ``sigma_hat = sigma_i * (1 + gamma)``, ``gamma = min(s_churn / steps, sqrt(2) -
    1)``, by adding noise of size ``sqrt(sigma_hat^2 - sigma_i^2)`` scaled by ``s_noise``.

    With churn, every step draws its noise from each image's generator (k-diffusion draws it whether the
    step churns or not, and A1111 hands it the images' generators), so later steps see the same noise as
    A1111's; without churn nothing is drawn (the draws would change nothing).
    """

    def __init__(self, x: torch.Tensor, sigmas: torch.Tensor, generator: Generators, s_churn: float,
                 s_tmin: float, s_tmax: float, s_noise: float) -> None:
        self._noise = generator_noise(x, generator) if s_churn > 0 else None
        self._gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1)
        self._tmin, self._tmax, self._s_noise = s_tmin, s_tmax, s_noise

    def __call__(self, x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, float]:
        """``(x, sigma_hat)`` for the step from ``sigma``: the churned latents and level (float32 math)."""
        if self._noise is None:
            return x, sigma
        eps = self._noise(sigma, sigma) * self._s_noise
        gamma = self._gamma if self._tmin <= float(_f32(sigma)) <= self._tmax else 0.0
        if gamma <= 0:
            return x, sigma
        level = _f32(sigma)
        hat = level * (gamma + 1)
        x = x + eps * float((hat**2 - level**2) ** 0.5)
        return x, float(hat)


def report_step(callback: StepCallback | None, i: int, x: torch.Tensor, x0: torch.Tensor) -> None:
    if callback is not None:
        callback(i, x, x0)


def sample_euler(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators = None,
                 callback: StepCallback | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
                 s_tmax: float = math.inf, s_noise: float = 1.0) -> torch.Tensor:
    """Euler steps on the probability-flow ODE (Karras et al. 2022, Algorithm 2; churn: :class:`Churn`)."""
    s = _levels(sigmas)
    churn = Churn(x, sigmas, generator, s_churn, s_tmin, s_tmax, s_noise)
    for i in range(len(s) - 1):
        x, hat = churn(x, s[i])
        x0 = denoise(x, hat)
        x = x + (x - x0) / hat * (s[i + 1] - hat)
        report_step(callback, i, x, x0)
    return x


def sample_euler_ancestral(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *,
                           generator: Generators = None, callback: StepCallback | None = None,
                           eta: float = 1.0) -> torch.Tensor:
    """Euler step down to sigma_down, then fresh noise of size sigma_up (A1111's "Euler a"; A1111 hands it
    no ``s_noise``).
    """
    s = _levels(sigmas)
    noise = generator_noise(x, generator)
    for i in range(len(s) - 1):
        x0 = denoise(x, s[i])
        down, up = _ancestral(s[i], s[i + 1], eta)
        x = x + (x - x0) / s[i] * (down - s[i])
        if s[i + 1] > 0:
            x = x + noise(s[i], s[i + 1]) * up
        report_step(callback, i, x, x0)
    return x


def sample_heun(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators = None,
                callback: StepCallback | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
                s_tmax: float = math.inf, s_noise: float = 1.0) -> torch.Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 2, churn: :class:`Churn`); Euler on the
    last step to 0.
    """
    s = _levels(sigmas)
    churn = Churn(x, sigmas, generator, s_churn, s_tmin, s_tmax, s_noise)
    for i in range(len(s) - 1):
        x, hat = churn(x, s[i])
        x0 = denoise(x, hat)
        d = (x - x0) / hat
        dt = s[i + 1] - hat
        if s[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - denoise(x_2, s[i + 1])) / s[i + 1]
            x = x + (d + d_2) / 2 * dt
        report_step(callback, i, x, x0)
    return x


def _dpm2_step(denoise: Denoise, x: torch.Tensor, d: torch.Tensor, sigma: float,
               sigma_to: float) -> torch.Tensor:
    # The geometric mean in float32 (log, lerp, exp), as k-diffusion: see _ancestral.
    sigma_mid = float(_f32(sigma).log().lerp(_f32(sigma_to).log(), 0.5).exp())
    x_2 = x + d * (sigma_mid - sigma)
    d_2 = (x_2 - denoise(x_2, sigma_mid)) / sigma_mid
    return x + d_2 * (sigma_to - sigma)


def sample_dpm_2(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators = None,
                 callback: StepCallback | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
                 s_tmax: float = math.inf, s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver-2 style midpoint steps in log sigma (k-diffusion's "DPM2"; churn: :class:`Churn`)."""
    s = _levels(sigmas)
    churn = Churn(x, sigmas, generator, s_churn, s_tmin, s_tmax, s_noise)
    for i in range(len(s) - 1):
        x, hat = churn(x, s[i])
        x0 = denoise(x, hat)
        d = (x - x0) / hat
        x = x + d * (s[i + 1] - hat) if s[i + 1] == 0 else _dpm2_step(denoise, x, d, hat, s[i + 1])
        report_step(callback, i, x, x0)
    return x


def sample_dpm_2_ancestral(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *,
                           generator: Generators = None, callback: StepCallback | None = None,
                           eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    """DPM2 down to sigma_down, then fresh noise of size sigma_up (times ``s_noise``)."""
    s = _levels(sigmas)
    noise = generator_noise(x, generator)
    for i in range(len(s) - 1):
        x0 = denoise(x, s[i])
        down, up = _ancestral(s[i], s[i + 1], eta)
        d = (x - x0) / s[i]
        if down == 0:
            x = x + d * (down - s[i])
        else:
            x = _dpm2_step(denoise, x, d, s[i], down)
            x = x + noise(s[i], s[i + 1]) * s_noise * up
        report_step(callback, i, x, x0)
    return x


def _lms_coefficient(order: int, t: Sequence[float], i: int, j: int) -> float:
    """The integral over [t_i, t_{i+1}] of the Lagrange basis polynomial of node t_{i-j}."""
    nodes = [t[i - k] for k in range(order)]
    poly = np.poly1d([1.0])
    for k, node in enumerate(nodes):
        if k != j:
            poly = poly * np.poly1d([1.0, -node]) / (nodes[j] - node)
    antiderivative = poly.integ()
    return float(antiderivative(t[i + 1]) - antiderivative(t[i]))


def sample_lms(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators = None,
               callback: StepCallback | None = None, order: int = 4) -> torch.Tensor:
    """Linear multistep in sigma, up to 4th order (k-diffusion's "LMS")."""
    s = _levels(sigmas)
    ds: list[torch.Tensor] = []
    for i in range(len(s) - 1):
        x0 = denoise(x, s[i])
        ds.append((x - x0) / s[i])
        if len(ds) > order:
            ds.pop(0)
        current = min(i + 1, order)
        coefficients = [_lms_coefficient(current, s, i, j) for j in range(current)]
        x = x + sum(c * d for c, d in zip(coefficients, reversed(ds), strict=False))
        report_step(callback, i, x, x0)
    return x


def sample_dpmpp_2s_ancestral(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *,
                              generator: Generators = None, callback: StepCallback | None = None,
                              eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver++(2S) to sigma_down (midpoint r = 1/2 in log sigma), then ancestral noise (times
    ``s_noise``).
    """
    s = _levels(sigmas)
    noise = generator_noise(x, generator)
    for i in range(len(s) - 1):
        x0 = denoise(x, s[i])
        down, up = _ancestral(s[i], s[i + 1], eta)
        if down == 0:
            x = x + (x - x0) / s[i] * (down - s[i])
        else:
            # Times and the midpoint level in float32, as k-diffusion: see _ancestral.
            t, t_next = _f32(s[i]).log().neg(), _f32(down).log().neg()
            h = t_next - t
            sigma_mid = float((t + 0.5 * h).neg().exp())
            x_2 = (sigma_mid / s[i]) * x - float((-h * 0.5).expm1()) * x0
            x = (down / s[i]) * x - float((-h).expm1()) * denoise(x_2, sigma_mid)
        if s[i + 1] > 0:
            x = x + noise(s[i], s[i + 1]) * s_noise * up
        report_step(callback, i, x, x0)
    return x


def sample_dpmpp_sde(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators = None,
                     callback: StepCallback | None = None, eta: float = 1.0,
                     seeds: Sequence[int] | None = None,
                     noise_range: tuple[float, float] | None = None, s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver++ SDE (two model calls per step, r = 1/2), Brownian-tree noise (times ``s_noise``)."""
    s = _levels(sigmas)
    noise = _sde_noise(x, sigmas, generator, seeds, noise_range)
    for i in range(len(s) - 1):
        x0 = denoise(x, s[i])
        if s[i + 1] == 0:
            x = x + (x - x0) / s[i] * (s[i + 1] - s[i])
        else:
            # The Brownian tree is queried at float32 levels computed in log space, as k-diffusion
            # does: W(t) is only 1/2-Hoelder, so a level off by one ulp changes the noise visibly.
            t32, t_next32 = -sigmas[i].log(), -sigmas[i + 1].log()
            s32 = t32 + (t_next32 - t32) * 0.5
            here, mid, there = (float(v) for v in (t32.neg().exp(), s32.neg().exp(), t_next32.neg().exp()))
            t = -math.log(here)
            down, up = _ancestral(here, mid, eta)
            x_2 = (down / here) * x - math.expm1(t + math.log(down)) * x0
            x_2 = x_2 + noise(here, mid) * s_noise * up
            x0_2 = denoise(x_2, mid)
            down, up = _ancestral(here, there, eta)
            x = (down / here) * x - math.expm1(t + math.log(down)) * x0_2
            x = x + noise(here, there) * s_noise * up
        report_step(callback, i, x, x0)
    return x


def sample_dpmpp_2m(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators = None,
                    callback: StepCallback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M): second-order multistep in log sigma; first order on the first and last step."""
    s = _levels(sigmas)
    previous: torch.Tensor | None = None
    for i in range(len(s) - 1):
        x0 = denoise(x, s[i])
        if s[i + 1] == 0:
            x = x0  # (0 / sigma) * x - expm1(-inf) * x0
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            target = x0
            if previous is not None:
                r = (math.log(s[i - 1]) - math.log(s[i])) / h
                target = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * previous
            x = (s[i + 1] / s[i]) * x - math.expm1(-h) * target
        previous = x0
        report_step(callback, i, x, x0)
    return x


def sample_dpmpp_2m_sde(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *,
                        generator: Generators = None, callback: StepCallback | None = None, eta: float = 1.0,
                        seeds: Sequence[int] | None = None, solver_type: str = "midpoint",
                        noise_range: tuple[float, float] | None = None, s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver++(2M) SDE, midpoint or Heun correction, Brownian-tree noise (times ``s_noise``)."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    s = _levels(sigmas)
    noise = _sde_noise(x, sigmas, generator, seeds, noise_range)
    previous: torch.Tensor | None = None
    h_last = 0.0
    h = 0.0
    for i in range(len(s) - 1):
        x0 = denoise(x, s[i])
        if s[i + 1] == 0:
            x = x0
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            eta_h = eta * h
            gain = -math.expm1(-h - eta_h)
            x = s[i + 1] / s[i] * math.exp(-eta_h) * x + gain * x0
            if previous is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + (gain / (-h - eta_h) + 1) * (1 / r) * (x0 - previous)
                else:
                    x = x + 0.5 * gain * (1 / r) * (x0 - previous)
            if eta:
                x = x + noise(s[i], s[i + 1]) * (s[i + 1] * math.sqrt(-math.expm1(-2 * eta_h))) * s_noise
        previous = x0
        h_last = h
        report_step(callback, i, x, x0)
    return x


def sample_dpmpp_2m_sde_heun(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *,
                             generator: Generators = None, callback: StepCallback | None = None,
                             eta: float = 1.0, seeds: Sequence[int] | None = None,
                             noise_range: tuple[float, float] | None = None,
                             s_noise: float = 1.0) -> torch.Tensor:
    """DPM++ 2M SDE with the Heun correction (A1111's "DPM++ 2M SDE Heun")."""
    return sample_dpmpp_2m_sde(denoise, x, sigmas, generator=generator, callback=callback, eta=eta,
                               seeds=seeds, solver_type="heun", noise_range=noise_range, s_noise=s_noise)


def sample_dpmpp_3m_sde(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *,
                        generator: Generators = None, callback: StepCallback | None = None, eta: float = 1.0,
                        seeds: Sequence[int] | None = None,
                        noise_range: tuple[float, float] | None = None, s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver++(3M) SDE: third-order multistep, Brownian-tree noise (times ``s_noise``)."""
    s = _levels(sigmas)
    noise = _sde_noise(x, sigmas, generator, seeds, noise_range)
    x0_1: torch.Tensor | None = None
    x0_2: torch.Tensor | None = None
    h_1: float | None = None
    h_2: float | None = None
    h: float | None = None
    for i in range(len(s) - 1):
        x0 = denoise(x, s[i])
        if s[i + 1] == 0:
            x = x0
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            h_eta = h * (eta + 1)
            x = math.exp(-h_eta) * x + (-math.expm1(-h_eta)) * x0
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            if h_2 is not None and x0_1 is not None and x0_2 is not None and h_1 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (x0 - x0_1) / r0
                d1_1 = (x0_1 - x0_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None and x0_1 is not None:
                x = x + phi_2 * ((x0 - x0_1) / (h_1 / h))
            if eta:
                x = x + noise(s[i], s[i + 1]) * (s[i + 1] * math.sqrt(-math.expm1(-2 * h * eta))) * s_noise
        x0_1, x0_2 = x0, x0_1
        h_1, h_2 = h, h_1
        report_step(callback, i, x, x0)
    return x


# -- DPM-Solver (Lu et al. 2022): fixed-step "DPM fast" and adaptive "DPM adaptive" ---------------


class _DPMSolver:
    """DPM-Solver-1/2/3 steps in t = -log(sigma), with a per-step cache of the noise predictions."""

    def __init__(self, denoise: Denoise, callback: Callable[[torch.Tensor, torch.Tensor], None]) -> None:
        self._denoise = denoise
        self._on_eval = callback

    def eps(self, cache: dict[str, torch.Tensor], key: str, x: torch.Tensor, t: float) -> torch.Tensor:
        if key not in cache:
            sigma = math.exp(-t)
            x0 = self._denoise(x, sigma)
            cache[key] = (x - x0) / sigma
            if key == "eps":
                self._on_eval(x, x0)
        return cache[key]

    def step_1(self, x: torch.Tensor, t: float, t_next: float, cache: Cache) -> torch.Tensor:
        eps = self.eps(cache, "eps", x, t)
        return x - math.exp(-t_next) * math.expm1(t_next - t) * eps

    def step_2(self, x: torch.Tensor, t: float, t_next: float, cache: dict[str, torch.Tensor],
               r1: float = 0.5) -> torch.Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - math.exp(-s1) * math.expm1(r1 * h) * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        sigma_next = math.exp(-t_next)
        return x - sigma_next * math.expm1(h) * eps - sigma_next / (2 * r1) * math.expm1(h) * (eps_r1 - eps)

    def step_3(self, x: torch.Tensor, t: float, t_next: float, cache: Cache) -> torch.Tensor:
        r1, r2 = 1 / 3, 2 / 3
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - math.exp(-s1) * math.expm1(r1 * h) * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (x - math.exp(-s2) * math.expm1(r2 * h) * eps
              - math.exp(-s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        sigma_next = math.exp(-t_next)
        correction = sigma_next / r2 * (math.expm1(h) / h - 1) * (eps_r2 - eps)
        return x - sigma_next * math.expm1(h) * eps - correction


def _model_range(sigmas: torch.Tensor, sigma_range: tuple[float, float] | None) -> tuple[float, float]:
    if sigma_range is not None:
        return float(sigma_range[0]), float(sigma_range[1])
    positive = sigmas[sigmas > 0]
    return float(positive.min()), float(sigmas.max())


def sample_dpm_fast(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators = None,
                    callback: StepCallback | None = None, eta: float = 1.0,
                    sigma_range: tuple[float, float] | None = None, steps: int | None = None,
                    s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver-fast: ``steps`` model calls in 3rd/2nd/1st-order steps evenly spaced in t.

    Integrates from the model's largest sigma to its smallest (``sigma_range``), not over the
    schedule: A1111 hands k-diffusion the model's range and the requested step count (``steps``;
    without it, the schedule's step count).
    """
    nfe = int(steps) if steps is not None else len(sigmas) - 1
    sigma_min, sigma_max = _model_range(sigmas, sigma_range)
    noise = generator_noise(x, generator)
    step = {"i": 0}
    solver = _DPMSolver(denoise, lambda _x, _x0: None)
    t_start, t_end = -math.log(sigma_max), -math.log(sigma_min)
    m = nfe // 3 + 1
    ts = [float(v) for v in torch.linspace(t_start, t_end, m + 1)]
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        cache: dict[str, torch.Tensor] = {}
        t, t_next = ts[i], ts[i + 1]
        if eta:
            down, _up = _ancestral(math.exp(-t), math.exp(-t_next), eta)
            t_next_ = min(t_end, -math.log(down))
            up = (math.exp(-t_next) ** 2 - math.exp(-t_next_) ** 2) ** 0.5
        else:
            t_next_, up = t_next, 0.0
        eps = solver.eps(cache, "eps", x, t)
        x0 = x - math.exp(-t) * eps
        if order == 1:
            x = solver.step_1(x, t, t_next_, cache)
        elif order == 2:
            x = solver.step_2(x, t, t_next_, cache)
        else:
            x = solver.step_3(x, t, t_next_, cache)
        x = x + up * s_noise * noise(math.exp(-t), math.exp(-t_next))
        report_step(callback, step["i"], x, x0)
        step["i"] += 1
    return x


def sample_dpm_adaptive(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *,
                        generator: Generators = None, callback: StepCallback | None = None, eta: float = 1.0,
                        sigma_range: tuple[float, float] | None = None, order: int = 3, rtol: float = 0.05,
                        atol: float = 0.0078, h_init: float = 0.05) -> torch.Tensor:
    """DPM-Solver-23 with an adaptive step size (integral controller), from the model's largest sigma
    to its smallest; the step count follows the error estimate, not the schedule.
    """
    sigma_min, sigma_max = _model_range(sigmas, sigma_range)
    noise = generator_noise(x, generator)
    solver = _DPMSolver(denoise, lambda _x, _x0: None)
    t_start, t_end = -math.log(sigma_max), -math.log(sigma_min)
    h = abs(h_init)
    exponent = 1.0 / (1.5 if eta else order)  # integral controller: icoeff 1 / order
    inverse_errors: list[float] = []
    s = t_start
    x_prev = x
    steps = 0
    while s < t_end - 1e-5:
        cache: dict[str, torch.Tensor] = {}
        t = min(t_end, s + h)
        if eta:
            down, _up = _ancestral(math.exp(-s), math.exp(-t), eta)
            t_ = min(t_end, -math.log(down))
            up = (math.exp(-t) ** 2 - math.exp(-t_) ** 2) ** 0.5
        else:
            t_, up = t, 0.0
        eps = solver.eps(cache, "eps", x, s)
        x0 = x - math.exp(-s) * eps
        if order == 2:
            x_low = solver.step_1(x, s, t_, cache)
            x_high = solver.step_2(x, s, t_, cache)
        else:
            x_low = solver.step_2(x, s, t_, cache, r1=1 / 3)
            x_high = solver.step_3(x, s, t_, cache)
        delta = torch.maximum(torch.tensor(atol), rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = float(torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5)
        inverse = 1 / (error + 1e-8)
        if not inverse_errors:
            inverse_errors = [inverse, inverse, inverse]
        inverse_errors[0] = inverse
        factor = 1 + math.atan(inverse_errors[0] ** exponent - 1)
        accept = factor >= 0.81
        if accept:
            inverse_errors[2], inverse_errors[1] = inverse_errors[1], inverse_errors[0]
        h *= factor
        if accept:
            x_prev = x_low
            x = x_high + up * noise(math.exp(-s), math.exp(-t))
            s = t
        report_step(callback, steps, x, x0)
        steps += 1
    return x


def sample_restart(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators = None,
                   callback: StepCallback | None = None) -> torch.Tensor:
    """Restart sampling (Xu et al. 2023) as A1111 sets it up: Heun steps, and from 20 steps on, a
    Karras schedule of fewer steps plus restart segments (noise back up to sigma 2, Heun down again)
    at the step nearest sigma 0.1; segments (9 steps, once; from 36 steps, steps/4 steps, twice).
    """
    steps = len(sigmas) - 1
    restart: dict[float, tuple[int, int, float]] = {}
    if steps >= 20:
        restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = karras(steps - restart_steps * restart_times, float(sigmas[-2]), float(sigmas[0]))
        restart = {0.1: (restart_steps + 1, restart_times, 2.0)}
    at_index = {int(torch.argmin(abs(sigmas - key))): value for key, value in restart.items()}
    pairs: list[tuple[float, float]] = []
    for i in range(len(sigmas) - 1):
        pairs.append((float(sigmas[i]), float(sigmas[i + 1])))
        if i + 1 in at_index:
            segment_steps, times, sigma_top = at_index[i + 1]
            low, high = i + 1, int(torch.argmin(abs(sigmas - sigma_top)))
            if high < low:
                segment = karras(segment_steps, float(sigmas[low]), float(sigmas[high]))[:-1]
                values = [float(v) for v in segment]
                for _ in range(times):
                    pairs.extend(zip(values[:-1], values[1:], strict=True))
    noise = generator_noise(x, generator)
    last: float | None = None
    for step, (old, new) in enumerate(pairs):
        if last is not None and last < old:
            x = x + noise(last, old) * (old**2 - last**2) ** 0.5
        x0 = denoise(x, old)
        d = (x - x0) / old
        if new == 0:
            x = x + d * (new - old)
        else:
            x_2 = x + d * (new - old)
            d_2 = (x_2 - denoise(x_2, new)) / new
            x = x + (d + d_2) / 2 * (new - old)
        last = new
        report_step(callback, step, x, x0)
    return x


def sample_lcm(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators = None,
               callback: StepCallback | None = None) -> torch.Tensor:
    """LCM: each step jumps to the model's x0, then re-noises it to the next sigma."""
    s = _levels(sigmas)
    noise = generator_noise(x, generator)
    for i in range(len(s) - 1):
        x0 = denoise(x, s[i])
        x = x0
        if s[i + 1] > 0:
            x = x + noise(s[i], s[i + 1]) * s[i + 1]
        report_step(callback, i, x, x0)
    return x

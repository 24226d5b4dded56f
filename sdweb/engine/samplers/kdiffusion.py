"""A1111's k-diffusion path: its sigma schedules, its model wrapper and its sampling algorithms.

This module owns "the same latents as A1111" for the samplers A1111 runs through k-diffusion (Euler a,
Euler, LMS, Heun, DPM2, DPM2 a, DPM++ 2S a, DPM++ 2M, DPM++ SDE, DPM++ 2M SDE (+ Heun), DPM++ 3M SDE,
DPM fast, DPM adaptive, Restart, LCM) and for its schedule types. It is written for sdweb from the
published algorithms (Karras et al. 2022, Lu et al. 2022/2023 (DPM-Solver, DPM-Solver++), Xu et al.
2023 (Restart), Luo et al. 2023 (LCM)) and from what A1111 does around them, read as facts:

- **The model's sigmas** (:class:`DiscreteSigmas`): ``sqrt((1 - a) / a)`` of the training
  ``alphas_cumprod``, computed as the original LDM code does (betas in float64, stored float32).
  A sigma reaches the UNet as the *nearest* training timestep (A1111's default "Enable quantization in
  K samplers"), the input scaled by ``1 / sqrt(sigma^2 + 1)``.
- **Schedules** (:data:`SCHEDULES`): A1111 1.10's, by label, with its "discard penultimate sigma" rule
  for DPM2, DPM2 a and DPM++ 3M SDE (ask one step more, drop the next-to-last sigma).
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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from sdweb.engine.samplers.functions import Denoise, Generators, StepCallback, noise_like

NoiseSampler = Callable[[Any, Any], torch.Tensor]
Cache = dict[str, torch.Tensor]

#: A1111's Beta schedule defaults (settings ``beta_dist_alpha`` / ``beta_dist_beta``).
BETA_ALPHA = 0.6
BETA_BETA = 0.6
#: Align Your Steps' published 10-step sigmas (NVIDIA), SD 1.x/2.x and SDXL.
AYS_SD = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


# ---------------------------------------------------------------------------------------------
# The model's discrete noise levels
# ---------------------------------------------------------------------------------------------


def ldm_alphas_cumprod(config: Mapping[str, Any]) -> torch.Tensor:
    """The checkpoint's training ``alphas_cumprod`` as the original LDM code builds them (float32).

    Betas in float64 (``scaled_linear`` is LDM's "linear": a linspace of square roots, squared), the
    cumulative product in float64, stored as float32: what A1111's model carries.
    """
    cfg = dict(config)
    steps = int(cfg.get("num_train_timesteps", 1000))
    start = float(cfg.get("beta_start", 0.00085))
    end = float(cfg.get("beta_end", 0.012))
    kind = str(cfg.get("beta_schedule", "scaled_linear"))
    trained = cfg.get("trained_betas")
    if trained is not None:
        betas = np.asarray(trained, dtype=np.float64)
    elif kind == "scaled_linear":
        betas = np.linspace(start**0.5, end**0.5, steps, dtype=np.float64) ** 2
    elif kind == "linear":
        betas = np.linspace(start, end, steps, dtype=np.float64)
    else:  # cosine and others: diffusers' own table (no LDM checkpoint uses them)
        from diffusers import DDPMScheduler

        from sdweb.engine.samplers.functions import scheduler_from_config
        return scheduler_from_config(DDPMScheduler, cfg).alphas_cumprod.to(torch.float32)
    return torch.from_numpy(np.cumprod(1.0 - betas)).to(torch.float32)


class DiscreteSigmas:
    """A discrete-time model's noise levels: k-diffusion's ``DiscreteSchedule`` facts, as A1111 uses them."""

    def __init__(self, alphas_cumprod: torch.Tensor, *, quantize: bool = True) -> None:
        alphas_cumprod = alphas_cumprod.detach().to("cpu", torch.float32)
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()
        self.quantize = quantize

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: Any, quantize: bool | None = None) -> torch.Tensor:
        """The training timestep of ``sigma``: the nearest one, or interpolated in log sigma."""
        quantize = self.quantize if quantize is None else quantize
        log_sigma = torch.as_tensor(sigma, dtype=torch.float32).log()
        dists = log_sigma - self.log_sigmas
        if quantize:
            return dists.abs().argmin()
        low = int((dists >= 0).cumsum(0).argmax().clamp(max=len(self.log_sigmas) - 2))
        low_log, high_log = self.log_sigmas[low], self.log_sigmas[low + 1]
        w = ((low_log - log_sigma) / (low_log - high_log)).clamp(0, 1)
        return (1 - w) * low + w * (low + 1)

    def t_to_sigma(self, t: Any) -> torch.Tensor:
        """The sigma at (fractional) timestep ``t``: interpolated in log sigma."""
        t = torch.as_tensor(t).float()
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def uniform(self, n: int) -> torch.Tensor:
        """``n`` sigmas evenly spaced in timestep from the last training step to the first, then 0."""
        t = torch.linspace(len(self.sigmas) - 1, 0, n)
        return _append_zero(self.t_to_sigma(t))


class LCMSigmas(DiscreteSigmas):
    """A1111's LCM wrapper: only the 50 timesteps LCM was distilled on (999, 979, ..., 19)."""

    ORIGINAL_STEPS = 50

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        total = len(alphas_cumprod)
        self.skip = total // self.ORIGINAL_STEPS
        valid = torch.stack([alphas_cumprod[total - 1 - k * self.skip]
                             for k in reversed(range(self.ORIGINAL_STEPS))])
        super().__init__(valid, quantize=True)

    def sigma_to_t(self, sigma: Any, quantize: bool | None = None) -> torch.Tensor:
        log_sigma = torch.as_tensor(sigma, dtype=torch.float32).log()
        return (log_sigma - self.log_sigmas).abs().argmin() * self.skip + (self.skip - 1)

    def t_to_sigma(self, t: Any) -> torch.Tensor:
        index = ((torch.as_tensor(t) - (self.skip - 1)) / self.skip).float().clamp(0, len(self.sigmas) - 1)
        return super().t_to_sigma(index)

    def uniform(self, n: int) -> torch.Tensor:
        start = self.sigma_to_t(self.sigma_max)
        end = self.sigma_to_t(self.sigma_min)
        return _append_zero(self.t_to_sigma(torch.linspace(float(start), float(end), n)))


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
# Schedules (A1111 1.10's sd_schedulers, by label)
# ---------------------------------------------------------------------------------------------


def _append_zero(values: torch.Tensor) -> torch.Tensor:
    return torch.cat([values.to(torch.float32), values.new_zeros(1, dtype=torch.float32)])


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): evenly spaced in ``sigma^(1/rho)``."""
    ramp = torch.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in log sigma."""
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """Log sigma along a polynomial ramp of power ``rho``."""
    ramp = torch.linspace(1, 0, n) ** rho
    return _append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def _sgm_uniform(n: int, model: DiscreteSigmas, sigma_min: float, sigma_max: float) -> torch.Tensor:
    start, end = model.sigma_to_t(sigma_max), model.sigma_to_t(sigma_min)
    values = [float(model.t_to_sigma(t)) for t in torch.linspace(float(start), float(end), n + 1)[:-1]]
    return torch.tensor([*values, 0.0], dtype=torch.float32)


def _normal(n: int, model: DiscreteSigmas, sigma_min: float, sigma_max: float) -> torch.Tensor:
    start, end = model.sigma_to_t(sigma_max), model.sigma_to_t(sigma_min)
    values = [float(model.t_to_sigma(t)) for t in torch.linspace(float(start), float(end), n)]
    return torch.tensor([*values, 0.0], dtype=torch.float32)


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """KL-optimal (Sabour et al. 2024): evenly spaced in arctan(sigma); ends at sigma_min, not 0 (A1111's)."""
    alpha_min = torch.arctan(torch.tensor(sigma_min))
    alpha_max = torch.arctan(torch.tensor(sigma_max))
    index = torch.arange(n + 1)
    return torch.tan(index / n * alpha_min + (1.0 - index / n) * alpha_max)


def align_your_steps(n: int, *, sdxl: bool = False) -> torch.Tensor:
    """NVIDIA's Align Your Steps sigmas, log-linearly resampled to ``n`` values, then 0."""
    published = list(AYS_SDXL if sdxl else AYS_SD)
    if n == len(published):
        return torch.tensor([*published, 0.0], dtype=torch.float32)
    xs = np.linspace(0, 1, len(published))
    ys = np.log(published[::-1])
    resampled = np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1]
    return torch.tensor([*resampled.tolist(), 0.0], dtype=torch.float32)


def _simple(n: int, model: DiscreteSigmas) -> torch.Tensor:
    stride = len(model.sigmas) / n
    values = [float(model.sigmas[-(1 + int(k * stride))]) for k in range(n)]
    return torch.tensor([*values, 0.0], dtype=torch.float32)


def _ddim(n: int, model: DiscreteSigmas) -> torch.Tensor:
    stride = max(len(model.sigmas) // n, 1)
    values = [float(model.sigmas[k]) for k in range(1, len(model.sigmas), stride)]
    return torch.tensor([*values[::-1], 0.0], dtype=torch.float32)


def beta(n: int, sigma_min: float, sigma_max: float, alpha: float = BETA_ALPHA,
         beta_param: float = BETA_BETA) -> torch.Tensor:
    """Lee et al. (2024): sigma_min + (sigma_max - sigma_min) * BetaPPF(1 - k/(n-1))."""
    from scipy import stats

    points = [float(stats.beta.ppf(x, alpha, beta_param)) for x in 1 - np.linspace(0, 1, n)]
    values = [sigma_min + p * (sigma_max - sigma_min) for p in points]
    return torch.tensor([*values, 0.0], dtype=torch.float32)


def _by_label(label: str, n: int, model: DiscreteSigmas, sdxl: bool) -> torch.Tensor:
    lo, hi = model.sigma_min, model.sigma_max
    table: dict[str, Callable[[], torch.Tensor]] = {
        "Uniform": lambda: model.uniform(n),
        "Karras": lambda: karras(n, lo, hi),
        "Exponential": lambda: exponential(n, lo, hi),
        "Polyexponential": lambda: polyexponential(n, lo, hi),
        "SGM Uniform": lambda: _sgm_uniform(n, model, lo, hi),
        "KL Optimal": lambda: kl_optimal(n, lo, hi),
        "Align Your Steps": lambda: align_your_steps(n, sdxl=sdxl),
        "Simple": lambda: _simple(n, model),
        "Normal": lambda: _normal(n, model, lo, hi),
        "DDIM": lambda: _ddim(n, model),
        "Beta": lambda: beta(n, lo, hi),
    }
    if label not in table:
        raise ValueError(f"schedule type {label!r} is not one of A1111's: {', '.join(table)}")
    return table[label]()


#: A1111's schedule types (labels) this module computes.
SCHEDULES = ("Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
             "Align Your Steps", "Simple", "Normal", "DDIM", "Beta")


def a1111_sigmas(label: str, steps: int, model: DiscreteSigmas, *, discard_penultimate: bool = False,
                 sdxl: bool = False) -> torch.Tensor:
    """The float32 CPU sigmas A1111 samples ``steps`` steps on, for schedule type ``label``.

    ``discard_penultimate`` (DPM2, DPM2 a, DPM++ 3M SDE): one step more is asked for, and the
    next-to-last sigma dropped.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    n = steps + 1 if discard_penultimate else steps
    sigmas = _by_label(label, n, model, sdxl).to(torch.float32)
    if discard_penultimate:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas


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


def _report(callback: StepCallback | None, i: int, x: torch.Tensor, x0: torch.Tensor) -> None:
    if callback is not None:
        callback(i, x, x0)


def sample_euler(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators = None,
                 callback: StepCallback | None = None) -> torch.Tensor:
    """Euler steps on the probability-flow ODE (Karras et al. 2022, Algorithm 2 without churn)."""
    s = _levels(sigmas)
    for i in range(len(s) - 1):
        x0 = denoise(x, s[i])
        x = x + (x - x0) / s[i] * (s[i + 1] - s[i])
        _report(callback, i, x, x0)
    return x


def sample_euler_ancestral(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *,
                           generator: Generators = None, callback: StepCallback | None = None,
                           eta: float = 1.0) -> torch.Tensor:
    """Euler step down to sigma_down, then fresh noise of size sigma_up (A1111's "Euler a")."""
    s = _levels(sigmas)
    noise = generator_noise(x, generator)
    for i in range(len(s) - 1):
        x0 = denoise(x, s[i])
        down, up = _ancestral(s[i], s[i + 1], eta)
        x = x + (x - x0) / s[i] * (down - s[i])
        if s[i + 1] > 0:
            x = x + noise(s[i], s[i + 1]) * up
        _report(callback, i, x, x0)
    return x


def sample_heun(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators = None,
                callback: StepCallback | None = None) -> torch.Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 2); Euler on the last step to 0."""
    s = _levels(sigmas)
    for i in range(len(s) - 1):
        x0 = denoise(x, s[i])
        d = (x - x0) / s[i]
        dt = s[i + 1] - s[i]
        if s[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - denoise(x_2, s[i + 1])) / s[i + 1]
            x = x + (d + d_2) / 2 * dt
        _report(callback, i, x, x0)
    return x


def _dpm2_step(denoise: Denoise, x: torch.Tensor, d: torch.Tensor, sigma: float,
               sigma_to: float) -> torch.Tensor:
    # The geometric mean in float32 (log, lerp, exp), as k-diffusion: see _ancestral.
    sigma_mid = float(_f32(sigma).log().lerp(_f32(sigma_to).log(), 0.5).exp())
    x_2 = x + d * (sigma_mid - sigma)
    d_2 = (x_2 - denoise(x_2, sigma_mid)) / sigma_mid
    return x + d_2 * (sigma_to - sigma)


def sample_dpm_2(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators = None,
                 callback: StepCallback | None = None) -> torch.Tensor:
    """DPM-Solver-2 style midpoint steps in log sigma (k-diffusion's "DPM2")."""
    s = _levels(sigmas)
    for i in range(len(s) - 1):
        x0 = denoise(x, s[i])
        d = (x - x0) / s[i]
        x = x + d * (s[i + 1] - s[i]) if s[i + 1] == 0 else _dpm2_step(denoise, x, d, s[i], s[i + 1])
        _report(callback, i, x, x0)
    return x


def sample_dpm_2_ancestral(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *,
                           generator: Generators = None, callback: StepCallback | None = None,
                           eta: float = 1.0) -> torch.Tensor:
    """DPM2 down to sigma_down, then fresh noise of size sigma_up."""
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
            x = x + noise(s[i], s[i + 1]) * up
        _report(callback, i, x, x0)
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
        _report(callback, i, x, x0)
    return x


def sample_dpmpp_2s_ancestral(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *,
                              generator: Generators = None, callback: StepCallback | None = None,
                              eta: float = 1.0) -> torch.Tensor:
    """DPM-Solver++(2S) to sigma_down (midpoint r = 1/2 in log sigma), then ancestral noise."""
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
            x = x + noise(s[i], s[i + 1]) * up
        _report(callback, i, x, x0)
    return x


def sample_dpmpp_sde(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators = None,
                     callback: StepCallback | None = None, eta: float = 1.0,
                     seeds: Sequence[int] | None = None,
                     noise_range: tuple[float, float] | None = None) -> torch.Tensor:
    """DPM-Solver++ SDE (two model calls per step, r = 1/2), Brownian-tree noise."""
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
            x_2 = x_2 + noise(here, mid) * up
            x0_2 = denoise(x_2, mid)
            down, up = _ancestral(here, there, eta)
            x = (down / here) * x - math.expm1(t + math.log(down)) * x0_2
            x = x + noise(here, there) * up
        _report(callback, i, x, x0)
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
        _report(callback, i, x, x0)
    return x


def sample_dpmpp_2m_sde(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *,
                        generator: Generators = None, callback: StepCallback | None = None, eta: float = 1.0,
                        seeds: Sequence[int] | None = None, solver_type: str = "midpoint",
                        noise_range: tuple[float, float] | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) SDE, midpoint or Heun correction, Brownian-tree noise."""
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
                x = x + noise(s[i], s[i + 1]) * (s[i + 1] * math.sqrt(-math.expm1(-2 * eta_h)))
        previous = x0
        h_last = h
        _report(callback, i, x, x0)
    return x


def sample_dpmpp_2m_sde_heun(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *,
                             generator: Generators = None, callback: StepCallback | None = None,
                             eta: float = 1.0, seeds: Sequence[int] | None = None,
                             noise_range: tuple[float, float] | None = None) -> torch.Tensor:
    """DPM++ 2M SDE with the Heun correction (A1111's "DPM++ 2M SDE Heun")."""
    return sample_dpmpp_2m_sde(denoise, x, sigmas, generator=generator, callback=callback, eta=eta,
                               seeds=seeds, solver_type="heun", noise_range=noise_range)


def sample_dpmpp_3m_sde(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *,
                        generator: Generators = None, callback: StepCallback | None = None, eta: float = 1.0,
                        seeds: Sequence[int] | None = None,
                        noise_range: tuple[float, float] | None = None) -> torch.Tensor:
    """DPM-Solver++(3M) SDE: third-order multistep, Brownian-tree noise."""
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
                x = x + noise(s[i], s[i + 1]) * (s[i + 1] * math.sqrt(-math.expm1(-2 * h * eta)))
        x0_1, x0_2 = x0, x0_1
        h_1, h_2 = h, h_1
        _report(callback, i, x, x0)
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
                    sigma_range: tuple[float, float] | None = None, steps: int | None = None) -> torch.Tensor:
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
        x = x + up * noise(math.exp(-t), math.exp(-t_next))
        _report(callback, step["i"], x, x0)
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
        _report(callback, steps, x, x0)
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
        _report(callback, step, x, x0)
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
        _report(callback, i, x, x0)
    return x


# -- A1111's timestep samplers (DDIM, PLMS): DDPM-space updates on its own evenly spaced timesteps -------


def a1111_timesteps(steps: int, *, discard_penultimate: bool = False) -> list[int]:
    """A1111's DDIM / PLMS timesteps: every ``1000 // steps``-th from 0, plus 1 (1, 51, ..., 951 for 20)."""
    n = steps + 1 if discard_penultimate else steps
    if not 0 < n <= 1000:
        raise ValueError(f"A1111's DDIM / PLMS timesteps take 1 to 1000 steps (the model's trained steps), "
                         f"not {steps}")
    return [min(max(t + 1, 0), 999) for t in range(0, 1000, 1000 // n)]


def timestep_sigmas(steps: int, model: DiscreteSigmas) -> torch.Tensor:
    """The sigmas of :func:`a1111_timesteps`, largest first, then 0 (the sampling-function contract)."""
    levels = [float(model.sigmas[t]) for t in reversed(a1111_timesteps(steps))]
    return torch.tensor([*levels, 0.0], dtype=torch.float32)


def _image_levels(sigmas: torch.Tensor, from_image: bool) -> tuple[list[float], float]:
    """The levels a timestep sampler steps through, and the level its start is noised to.

    From an image (img2img) the first sigma is the level A1111 noised the init latents to, one timestep
    above the ones it samples on; from noise it is the first of them.
    """
    levels = [float(v) for v in sigmas if float(v) > 0]
    if from_image and len(levels) > 1:
        return levels[1:], levels[0]
    return levels, levels[0]


NoiseOf = Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]


def _ddpm_view(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor,
               from_image: bool = False) -> tuple[torch.Tensor, list[float], list[float], NoiseOf]:
    """The start in DDPM scale, the levels stepped through, their alphas_cumprod, ``eps(x_ddpm, sigma)
    -> (eps, x0)``.

    A1111's timestep samplers start from the noise itself (``x_T = noise`` at the largest timestep) and
    predict the noise of ``x_t`` at integer timesteps; in the contract's terms ``x_t = x / sqrt(sigma^2 +
    1)`` and ``eps = (x - x0) / sigma``, the same prediction of the same UNet input.
    """
    levels, noised = _image_levels(sigmas, from_image)
    alphas = [1.0 / (s * s + 1.0) for s in levels]

    def eps(x_t: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        scaled = x_t * (sigma * sigma + 1.0) ** 0.5
        x0 = denoise(scaled, sigma)
        return (scaled - x0) / sigma, x0

    # From an image (img2img) the start is init + noise * sigma: x_t = x / sqrt(sigma^2 + 1) exactly.
    start = x / (noised**2 + 1.0) ** 0.5 if from_image else x / noised
    return start, levels, alphas, eps


def sample_ddim(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators = None,
                callback: StepCallback | None = None, eta: float = 0.0,
                from_image: bool = False) -> torch.Tensor:
    """DDIM (Song et al. 2020) as A1111 runs it: from the largest of its timesteps down to the smallest
    (one model call fewer than the step count), eta-scaled fresh noise.
    """
    x, levels, alphas, eps = _ddpm_view(denoise, x, sigmas, from_image)
    noise = generator_noise(x, generator)
    for i in range(len(alphas) - 1):
        a_t, a_prev = alphas[i], alphas[i + 1]
        e_t, _ = eps(x, levels[i])
        sigma_t = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        pred_x0 = (x - math.sqrt(1 - a_t) * e_t) / math.sqrt(a_t)
        x = math.sqrt(a_prev) * pred_x0 + math.sqrt(1.0 - a_prev - sigma_t**2) * e_t
        x = x + sigma_t * noise(levels[i], levels[i + 1])
        _report(callback, i, x, pred_x0)
    return x


def sample_plms(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators = None,
                callback: StepCallback | None = None, from_image: bool = False) -> torch.Tensor:
    """PLMS (Liu et al. 2022, pseudo linear multistep) as A1111 runs it: a pseudo improved-Euler first
    step, then Adams-Bashforth of order 2, 3, 4 on the noise predictions.
    """
    x, levels, alphas, eps = _ddpm_view(denoise, x, sigmas, from_image)
    history: list[torch.Tensor] = []

    def step(x_t: torch.Tensor, e: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        a_t, a_prev = alphas[i], alphas[i + 1]
        pred_x0 = (x_t - math.sqrt(1 - a_t) * e) / math.sqrt(a_t)
        return math.sqrt(a_prev) * pred_x0 + math.sqrt(1.0 - a_prev) * e, pred_x0

    for i in range(len(alphas) - 1):
        e_t, _ = eps(x, levels[i])
        if not history:
            x_prev, _ = step(x, e_t, i)
            e_next, _ = eps(x_prev, levels[i + 1])
            e_prime = (e_t + e_next) / 2
        elif len(history) == 1:
            e_prime = (3 * e_t - history[-1]) / 2
        elif len(history) == 2:
            e_prime = (23 * e_t - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            e_prime = (55 * e_t - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        x, pred_x0 = step(x, e_prime, i)
        history.append(e_t)
        if len(history) >= 4:
            history.pop(0)
        _report(callback, i, x, pred_x0)
    return x


# -- A1111's UniPC (Zhao et al. 2023): a multistep predictor-corrector in half-log-SNR time --------------

#: A1111's settings for UniPC (``uni_pc_variant``, ``uni_pc_skip_type``) and their choices.
UNIPC_VARIANTS = ("bh1", "bh2", "vary_coeff")
UNIPC_SKIP_TYPES = ("time_uniform", "time_quadratic", "logSNR")


class VPSchedule:
    """A discrete-time model in DPM-Solver's continuous time ``t`` in ``(0, 1]`` (variance preserving).

    Training step ``n`` of ``N`` sits at ``t = (n + 1) / N``; between them ``log alpha_t`` (half the log
    of ``alphas_cumprod``) is linear in ``t``; ``sigma_t = sqrt(1 - alpha_t^2)`` and ``lambda_t =
    log(alpha_t / sigma_t)``. The UNet is shown ``1000 (t - 1/N)``: a fractional timestep, not rounded.
    """

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        alphas_cumprod = alphas_cumprod.detach().to("cpu", torch.float32)
        self.total = len(alphas_cumprod)
        # The float32 tables A1111's NoiseScheduleVP holds, read in float64.
        self._times = torch.linspace(0.0, 1.0, self.total + 1)[1:].double().numpy()
        self._log_alphas = (0.5 * alphas_cumprod.log()).double().numpy()

    @property
    def t_end(self) -> float:
        """The smallest time: training step 0."""
        return float(np.float32(1.0 / self.total))

    def log_alpha(self, t: float) -> float:
        return float(np.interp(t, self._times, self._log_alphas))

    def alpha(self, t: float) -> float:
        return math.exp(self.log_alpha(t))

    def std(self, t: float) -> float:
        return math.sqrt(-math.expm1(2.0 * self.log_alpha(t)))

    def lam(self, t: float) -> float:
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * math.log(-math.expm1(2.0 * log_alpha))

    def t_of_lambda(self, lam: float) -> float:
        log_alpha = -0.5 * float(np.logaddexp(0.0, -2.0 * lam))
        return float(np.interp(log_alpha, self._log_alphas[::-1], self._times[::-1]))

    def model_timesteps(self, times: torch.Tensor) -> torch.Tensor:
        """The UNet's (fractional) timesteps for float32 ``times``: ``(t - 1/N) * 1000``, in float32."""
        return (times.to(torch.float32) - 1.0 / self.total) * 1000.0


def unipc_times(steps: int, schedule: VPSchedule, *, skip_type: str = "time_uniform",
                t_start: float | torch.Tensor = 1.0) -> torch.Tensor:
    """UniPC's ``steps + 1`` float32 times from ``t_start`` down to the first training step (``1/N``).

    ``time_uniform``: evenly spaced in t; ``time_quadratic``: evenly spaced in sqrt(t); ``logSNR``:
    evenly spaced in lambda (half log-SNR), mapped back to t through the schedule.
    """
    if skip_type not in UNIPC_SKIP_TYPES:
        raise ValueError(f"UniPC skip type must be one of {', '.join(UNIPC_SKIP_TYPES)}, got {skip_type!r}")
    start = float(torch.as_tensor(t_start, dtype=torch.float32))
    end = 1.0 / schedule.total
    if skip_type == "time_uniform":
        return torch.linspace(start, end, steps + 1)
    if skip_type == "time_quadratic":
        return torch.linspace(start**0.5, end**0.5, steps + 1) ** 2
    lambdas = torch.linspace(schedule.lam(start), schedule.lam(end), steps + 1)
    return torch.tensor([schedule.t_of_lambda(float(value)) for value in lambdas], dtype=torch.float32)


def unipc_step_orders(steps: int, order: int, *, lower_order_final: bool = True) -> list[int]:
    """The order of each of UniPC's ``steps`` updates: warming up 1, 2, ... ``order``; with
    ``lower_order_final`` the last ones fall back so no step looks further ahead than the steps left.
    """
    order = max(1, min(order, steps))
    orders = list(range(1, order))
    for step in range(order, steps + 1):
        orders.append(min(order, steps + 1 - step) if lower_order_final else order)
    return orders


def _unipc_bh_weights(hh: float, rks: Sequence[float],
                      variant: str) -> tuple[float, list[float], list[float]]:
    """B(h), the predictor weights (one per earlier point) and the corrector weights (one more: the new
    point), from UniPC's order conditions ``sum_m rho_m r_m^(k-1) = k! phi_{k+1}(h) / B(h)``.
    """
    order = len(rks)
    big_b = hh if variant == "bh1" else math.expm1(hh)
    # phi-like terms: g_1 = (e^hh - 1) / hh - 1, g_(k+1) = g_k / hh - 1 / (k+1)!
    rhs: list[float] = []
    g = math.expm1(hh) / hh - 1.0
    for k in range(1, order + 1):
        rhs.append(g * math.factorial(k) / big_b)
        g = g / hh - 1.0 / math.factorial(k + 1)
    powers = np.array([[float(r) ** (k - 1) for r in rks] for k in range(1, order + 1)], dtype=np.float64)
    if order == 1:
        predictor: list[float] = []
        corrector = [0.5]
    else:
        corrector = np.linalg.solve(powers, np.array(rhs)).tolist()
        predictor = [0.5] if order == 2 else np.linalg.solve(powers[:-1, :-1], np.array(rhs[:-1])).tolist()
    return big_b, predictor, corrector


def _weighted(weights: Sequence[float], tensors: Sequence[torch.Tensor]) -> torch.Tensor | float:
    total: torch.Tensor | float = 0.0
    for weight, tensor in zip(weights, tensors, strict=True):
        total = total + float(weight) * tensor
    return total


Model = Callable[[torch.Tensor], torch.Tensor]


def _unipc_update(x: torch.Tensor, times: Sequence[float], outputs: Sequence[torch.Tensor], t: float,
                  order: int, schedule: VPSchedule, variant: str,
                  model: Model | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One UniPC update of ``x`` (VP scale) from ``times[-1]`` to ``t`` using the last ``order`` data
    predictions; ``model`` (the prediction at ``t``) given means: predict, evaluate there, correct.

    Returns the new ``x`` and the model's prediction at the predicted point (None without a corrector):
    UniPC reuses it as the history value of ``t``.
    """
    s = times[-1]
    lam_s, lam_t = schedule.lam(s), schedule.lam(t)
    h = lam_t - lam_s
    hh = -h  # data prediction
    alpha_t = schedule.alpha(t)
    newest = outputs[-1]
    rks = [(schedule.lam(times[-1 - i]) - lam_s) / h for i in range(1, order)]
    diffs = [(outputs[-1 - i] - newest) / rk for i, rk in zip(range(1, order), rks, strict=True)]
    rks.append(1.0)
    # The first-order (DDIM-like) step both parts start from.
    base = (schedule.std(t) / schedule.std(s)) * x - (alpha_t * math.expm1(hh)) * newest
    if variant in ("bh1", "bh2"):
        big_b, predictor, corrector = _unipc_bh_weights(hh, rks, variant)
        x_new = base - (alpha_t * big_b) * _weighted(predictor, diffs) if diffs else base
        if model is None:
            return x_new, None
        output = model(x_new)
        correction = _weighted(corrector[:-1], diffs) + corrector[-1] * (output - newest)
        return base - (alpha_t * big_b) * correction, output
    if variant != "vary_coeff":
        raise ValueError(f"UniPC variant must be one of {', '.join(UNIPC_VARIANTS)}, got {variant!r}")
    return _unipc_vary_coeff(base, diffs, rks, hh, alpha_t, newest, model)


def _unipc_vary_coeff(base: torch.Tensor, diffs: Sequence[torch.Tensor], rks: Sequence[float], hh: float,
                      alpha_t: float, newest: torch.Tensor,
                      model: Model | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """UniPC's "vary_coeff" update: Taylor weights from the inverse of ``C[i][j] = r_i^j / (j+1)!``."""
    size = len(rks)
    taylor = np.array([[float(r) ** j / math.factorial(j + 1) for j in range(size)] for r in rks],
                      dtype=np.float64)
    # h phi_k(h) terms: e^hh - 1, then each one divided by hh less 1/k!
    phis = [math.expm1(hh)]
    for k in range(1, size + 1):
        phis.append(phis[-1] / hh - 1.0 / math.factorial(k))
    x_new = base
    if diffs:
        inverse = np.linalg.inv(taylor[:-1, :-1])
        for k in range(size - 1):
            x_new = x_new - (alpha_t * phis[k + 1]) * _weighted(inverse[k], diffs)
    if model is None:
        return x_new, None
    output = model(x_new)
    inverse = np.linalg.inv(taylor)
    corrected = base
    for k in range(size - 1):
        corrected = corrected - (alpha_t * phis[k + 1]) * _weighted(inverse[k][:-1], diffs)
    # The new point's weight is the last row's entry of the final k of the loop above (row 0 without
    # one): what A1111's UniPC applies, kept for the same images.
    row = max(size - 2, 0)
    corrected = corrected - (alpha_t * phis[size] * float(inverse[row][-1])) * (output - newest)
    return corrected, output


def sample_unipc(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators = None,
                 callback: StepCallback | None = None, alphas_cumprod: torch.Tensor | None = None,
                 from_image: bool = False, variant: str = "bh1", skip_type: str = "time_uniform",
                 order: int = 3, lower_order_final: bool = True) -> torch.Tensor:
    """UniPC (Zhao et al. 2023, multistep, data prediction) as A1111 runs it.

    ``sigmas`` are the levels of A1111's timesteps (:func:`timestep_sigmas`; from an image, the level the
    init latents were noised to, then the timesteps img2img keeps); like A1111 it uses only their count
    and, from an image, the first kept one: one UniPC step per level, from ``t = 1`` (pure noise) or from
    the first kept level's training step (``t = (n + 1) / 1000``), down to training step 0 on its own
    grid (``skip_type``). The model is evaluated at those
    continuous times (fractional UNet timesteps, ``denoise(x, sigma, timestep=...)``), on the schedule of
    the model's ``alphas_cumprod``. A1111's settings: ``variant`` (uni_pc_variant), ``skip_type``,
    ``order`` (uni_pc_order; at most the step count: A1111 refuses more) and ``lower_order_final``.
    Like A1111 it stops at training step 0 (no final denoise to zero) and returns x in VP scale.
    """
    if alphas_cumprod is None:
        raise ValueError("UniPC needs the model's alphas_cumprod")
    if variant not in UNIPC_VARIANTS:
        raise ValueError(f"UniPC variant must be one of {', '.join(UNIPC_VARIANTS)}, got {variant!r}")
    schedule = VPSchedule(alphas_cumprod)
    if not (sigmas > 0).any():
        raise ValueError("UniPC needs at least one noise level above 0")
    levels, noised = _image_levels(sigmas, from_image)
    steps = len(levels)
    if from_image:
        # A1111: t_start = timesteps[-1] / 1000 + 1 / 1000, the largest of img2img's timesteps; the
        # latents were noised one timestep above it.
        start_step = DiscreteSigmas(alphas_cumprod).sigma_to_t(levels[0], quantize=True)
        t_start: float | torch.Tensor = start_step.to(torch.float32) / 1000 + 1 / 1000
        x_t = x / (noised**2 + 1.0) ** 0.5
    else:
        t_start, x_t = 1.0, x / noised
    times = unipc_times(steps, schedule, skip_type=skip_type, t_start=t_start)
    model_steps = schedule.model_timesteps(times)
    grid = [float(v) for v in times]

    def data_prediction(x_vp: torch.Tensor, i: int) -> torch.Tensor:
        alpha, std = schedule.alpha(grid[i]), schedule.std(grid[i])
        return denoise(x_vp / alpha, std / alpha, timestep=model_steps[i])

    orders = unipc_step_orders(steps, order, lower_order_final=lower_order_final)
    history_t, history_x0 = [grid[0]], [data_prediction(x_t, 0)]
    for i, step_order in enumerate(orders, start=1):
        last = i == steps
        model = None if last else (lambda x_vp, i=i: data_prediction(x_vp, i))
        x_t, output = _unipc_update(x_t, history_t, history_x0, grid[i], step_order, schedule, variant, model)
        alpha = schedule.alpha(grid[i])
        _report(callback, i - 1, x_t / alpha, output if output is not None else x_t / alpha)
        if not last:
            assert output is not None
            history_t.append(grid[i])
            history_x0.append(output)
            del history_t[:-max(orders)], history_x0[:-max(orders)]
    return x_t

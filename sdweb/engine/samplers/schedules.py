"""A1111's noise levels: the model's discrete sigmas and the schedule types (A1111 1.10's sd_schedulers).

- **The model's sigmas** (:class:`DiscreteSigmas`): ``sqrt((1 - a) / a)`` of the training
  ``alphas_cumprod``, computed as the original LDM code does (betas in float64, stored float32).
  A sigma reaches the UNet as the *nearest* training timestep (A1111's default "Enable quantization in
  K samplers").
- **Schedules** (:data:`SCHEDULES`): A1111 1.10's, by label, with its "discard penultimate sigma" rule
  for DPM2, DPM2 a and DPM++ 3M SDE (ask one step more, drop the next-to-last sigma).

The samplers that walk these levels are in :mod:`sdweb.engine.samplers.kdiffusion` (A1111's k-diffusion
ones) and :mod:`sdweb.engine.samplers.timestep_samplers` (its DDIM, PLMS and UniPC).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

#: A1111's Beta schedule defaults (settings ``beta_dist_alpha`` / ``beta_dist_beta``).
BETA_ALPHA = 0.6
BETA_BETA = 0.6


@dataclass(frozen=True)
class ScheduleTuning:
    """A1111's schedule settings (Settings > Sampler parameters; the infotext keys in brackets).

    ``sigma_min`` / ``sigma_max`` ("Schedule min/max sigma"): the range of the schedule types that take
    one (0: the model's); ``rho`` ("Schedule rho"): Karras' and Polyexponential's exponent (0: theirs, 7
    and 1); ``beta_alpha`` / ``beta_beta`` ("Beta schedule alpha/beta"); ``always_discard_penultimate``
    ("Discard penultimate sigma"): every sampler asks one step more and drops the next-to-last sigma.
    """

    sigma_min: float = 0.0
    sigma_max: float = 0.0
    rho: float = 0.0
    beta_alpha: float = 0.6
    beta_beta: float = 0.6
    always_discard_penultimate: bool = False


DEFAULT_TUNING = ScheduleTuning()
#: Align Your Steps' published 10-step sigmas (NVIDIA), SD 1.x/2.x and SDXL.
AYS_SD = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


# ---------------------------------------------------------------------------------------------
# The model's discrete noise levels
# ---------------------------------------------------------------------------------------------


def downcast_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """A1111's "Downcast alphas_cumprod" (``use_downcasted_alpha_bar``; always so before A1111 1.7): the
    model's alphas_cumprod rounded to fp16 before sampling. The result stays fp16: what is computed from it
    (sigmas, their logs) is computed in fp16, as A1111's k-diffusion wrapper does on its fp16 tensor.
    """
    return alphas_cumprod.detach().to("cpu", torch.float32).half()


#: The last alphas_cumprod of A1111's "Zero Terminal SNR" schedule: not 0, so the largest sigma stays finite
#: (about 4519).
ZTSNR_LAST_ALPHA = 4.8973451890853435e-08


def zero_terminal_snr_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """A1111's "Noise schedule for sampling: Zero Terminal SNR" (Lin et al., "Common Diffusion Noise
    Schedules and Sample Steps are Flawed"): ``sqrt(alphas_cumprod)`` shifted so its last value is 0 and
    scaled so its first is unchanged, squared back, and the last entry set to :data:`ZTSNR_LAST_ALPHA`.

    Computed in the table's own precision, as A1111 does after "Downcast alphas_cumprod" (fp16 stays fp16).
    """
    roots = alphas_cumprod.detach().to("cpu").sqrt()
    first, last = roots[0].clone(), roots[-1].clone()
    roots = (roots - last) * (first / (first - last))
    rescaled = roots**2
    rescaled[-1] = ZTSNR_LAST_ALPHA
    return rescaled


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
        # fp16 alphas (A1111's "Downcast alphas_cumprod"): k-diffusion then computes the sigmas and their
        # logs in fp16 too; every later use mixes them with float32 tensors, so float32 copies of those
        # fp16 values behave as its buffers do.
        dtype = torch.float16 if alphas_cumprod.dtype == torch.float16 else torch.float32
        alphas_cumprod = alphas_cumprod.detach().to("cpu", dtype)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.sigmas = sigmas.float()
        self.log_sigmas = sigmas.log().float()
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
                             for k in reversed(range(self.ORIGINAL_STEPS))]).float()  # A1111's float32 copy
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


def _by_label(label: str, n: int, model: DiscreteSigmas, sdxl: bool,
              tuning: ScheduleTuning = DEFAULT_TUNING) -> torch.Tensor:
    # A1111 hands each schedule type the model's range unless a setting replaces it (0 keeps it).
    lo = tuning.sigma_min or model.sigma_min
    hi = tuning.sigma_max or model.sigma_max
    table: dict[str, Callable[[], torch.Tensor]] = {
        "Uniform": lambda: model.uniform(n),
        "Karras": lambda: karras(n, lo, hi, tuning.rho or 7.0),
        "Exponential": lambda: exponential(n, lo, hi),
        "Polyexponential": lambda: polyexponential(n, lo, hi, tuning.rho or 1.0),
        "SGM Uniform": lambda: _sgm_uniform(n, model, lo, hi),
        "KL Optimal": lambda: kl_optimal(n, lo, hi),
        "Align Your Steps": lambda: align_your_steps(n, sdxl=sdxl),
        "Simple": lambda: _simple(n, model),
        "Normal": lambda: _normal(n, model, lo, hi),
        "DDIM": lambda: _ddim(n, model),
        "Beta": lambda: beta(n, lo, hi, tuning.beta_alpha, tuning.beta_beta),
    }
    if label not in table:
        raise ValueError(f"schedule type {label!r} is not one of A1111's: {', '.join(table)}")
    return table[label]()


#: A1111's schedule types (labels) this module computes.
SCHEDULES = ("Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
             "Align Your Steps", "Simple", "Normal", "DDIM", "Beta")


def a1111_sigmas(label: str, steps: int, model: DiscreteSigmas, *, discard_penultimate: bool = False,
                 sdxl: bool = False, tuning: ScheduleTuning = DEFAULT_TUNING) -> torch.Tensor:
    """The float32 CPU sigmas A1111 samples ``steps`` steps on, for schedule type ``label``.

    ``discard_penultimate`` (DPM2, DPM2 a, DPM++ 3M SDE; any sampler with the setting
    ``always_discard_next_to_last_sigma``): one step more is asked for, and the next-to-last sigma dropped.
    ``tuning``: A1111's schedule settings (:class:`ScheduleTuning`).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    discard_penultimate = discard_penultimate or tuning.always_discard_penultimate
    n = steps + 1 if discard_penultimate else steps
    sigmas = _by_label(label, n, model, sdxl, tuning).to(torch.float32)
    if discard_penultimate:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas

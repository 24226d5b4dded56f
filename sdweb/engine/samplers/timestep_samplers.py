"""A1111's timestep samplers: DDIM, PLMS and UniPC on its own evenly spaced timesteps.

A1111 (1.6+) runs these outside k-diffusion (``sd_samplers_timesteps``): DDPM-space updates on the
timesteps ``range(1, 1000, 1000 // steps)`` (DDIM, PLMS), and its UniPC (Zhao et al. 2023) on
DPM-Solver's continuous-time VP schedule with fractional UNet timesteps. Written for sdweb from the
published algorithms and what A1111 does around them, read as facts. The functions follow the
contract of ``sdweb.engine.samplers.functions``, as :mod:`sdweb.engine.samplers.kdiffusion`'s do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from sdweb.engine.samplers.functions import Denoise, Generators, StepCallback
from sdweb.engine.samplers.kdiffusion import generator_noise, report_step
from sdweb.engine.samplers.schedules import DiscreteSigmas

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


def _table_alphas(levels: Sequence[float],
                  alphas_cumprod: torch.Tensor | None) -> tuple[list[float], list[float]]:
    """The alphas_cumprod of ``levels`` and ``sqrt(1 - alpha)`` of each, as A1111's DDIM and PLMS take them.

    With the model's table (``alphas_cumprod``): the entries of the training timesteps the levels are the
    sigmas of, and ``sqrt(1 - alpha)`` computed in the table's precision (fp16 with "Downcast
    alphas_cumprod", where A1111 rounds it so). Without: from the sigmas, ``1 / (sigma^2 + 1)``.
    """
    if alphas_cumprod is None:
        alphas = [1.0 / (s * s + 1.0) for s in levels]
        return alphas, [math.sqrt(1.0 - a) for a in alphas]
    table = alphas_cumprod.detach().cpu()
    model = DiscreteSigmas(table)
    steps = [int(model.sigma_to_t(level, quantize=True)) for level in levels]
    picked = table[steps]
    return [float(a) for a in picked], [float(v) for v in torch.sqrt(1 - picked)]


def _ddpm_view(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, from_image: bool = False,
               alphas_cumprod: torch.Tensor | None = None) -> tuple[torch.Tensor, list[float], list[float],
                                                                    list[float], NoiseOf]:
    """The start in DDPM scale, the levels stepped through, their alphas_cumprod and ``sqrt(1 - alpha)``
    (:func:`_table_alphas`), ``eps(x_ddpm, sigma) -> (eps, x0)``.

    A1111's timestep samplers start from the noise itself (``x_T = noise`` at the largest timestep) and
    predict the noise of ``x_t`` at integer timesteps; in the contract's terms ``x_t = x / sqrt(sigma^2 +
    1)`` and ``eps = (x - x0) / sigma``, the same prediction of the same UNet input.
    """
    levels, noised = _image_levels(sigmas, from_image)
    alphas, sqrt_one_minus = _table_alphas(levels, alphas_cumprod)

    def eps(x_t: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        scaled = x_t * (sigma * sigma + 1.0) ** 0.5
        x0 = denoise(scaled, sigma)
        return (scaled - x0) / sigma, x0

    # From an image (img2img) the start is init + noise * sigma: x_t = x / sqrt(sigma^2 + 1) exactly.
    start = x / (noised**2 + 1.0) ** 0.5 if from_image else x / noised
    return start, levels, alphas, sqrt_one_minus, eps


def _inverse_one_minus(alpha: float, alphas_cumprod: torch.Tensor) -> float:
    """``1 / (1 - alpha)`` as A1111's eta term gets it: a float64 array divided by its ``1 - alphas``
    tensor, which torch computes as that tensor's reciprocal (in the table's precision) times the array.
    """
    return float(torch.reciprocal(1 - torch.tensor(alpha, dtype=alphas_cumprod.dtype)))


def sample_ddim(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators = None,
                callback: StepCallback | None = None, eta: float = 0.0, from_image: bool = False,
                alphas_cumprod: torch.Tensor | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2020) as A1111 runs it: from the largest of its timesteps down to the smallest
    (one model call fewer than the step count), eta-scaled fresh noise. ``alphas_cumprod``: the model's
    table, whose entries A1111 uses (fp16 ones with "Downcast alphas_cumprod").
    """
    x, levels, alphas, sqrt_one_minus, eps = _ddpm_view(denoise, x, sigmas, from_image, alphas_cumprod)
    noise = generator_noise(x, generator)
    for i in range(len(alphas) - 1):
        a_t, a_prev = alphas[i], alphas[i + 1]
        e_t, _ = eps(x, levels[i])
        if alphas_cumprod is None:
            sigma_t = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        else:  # A1111: 1 / (1 - alpha_t) in the table's precision, the rest in float64
            inverse = _inverse_one_minus(a_t, alphas_cumprod)
            sigma_t = eta * math.sqrt((1 - a_prev) * inverse * (1 - a_t / a_prev))
        pred_x0 = (x - sqrt_one_minus[i] * e_t) / math.sqrt(a_t)
        x = math.sqrt(a_prev) * pred_x0 + math.sqrt(1.0 - a_prev - sigma_t**2) * e_t
        x = x + sigma_t * noise(levels[i], levels[i + 1])
        report_step(callback, i, x, pred_x0)
    return x


def sample_plms(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators = None,
                callback: StepCallback | None = None, from_image: bool = False,
                alphas_cumprod: torch.Tensor | None = None) -> torch.Tensor:
    """PLMS (Liu et al. 2022, pseudo linear multistep) as A1111 runs it: a pseudo improved-Euler first
    step, then Adams-Bashforth of order 2, 3, 4 on the noise predictions. ``alphas_cumprod``: as DDIM's.
    """
    x, levels, alphas, sqrt_one_minus, eps = _ddpm_view(denoise, x, sigmas, from_image, alphas_cumprod)
    history: list[torch.Tensor] = []

    def step(x_t: torch.Tensor, e: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        a_t, a_prev = alphas[i], alphas[i + 1]
        pred_x0 = (x_t - sqrt_one_minus[i] * e) / math.sqrt(a_t)
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
        report_step(callback, i, x, pred_x0)
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
        # fp16 alphas ("Downcast alphas_cumprod"): A1111's NoiseScheduleVP takes their log in fp16.
        dtype = torch.float16 if alphas_cumprod.dtype == torch.float16 else torch.float32
        alphas_cumprod = alphas_cumprod.detach().to("cpu", dtype)
        self.total = len(alphas_cumprod)
        # The float32 tables A1111's NoiseScheduleVP holds, read in float64.
        self._times = torch.linspace(0.0, 1.0, self.total + 1)[1:].double().numpy()
        self._log_alphas = (0.5 * alphas_cumprod.log()).float().double().numpy()

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
        report_step(callback, i - 1, x_t / alpha, output if output is not None else x_t / alpha)
        if not last:
            assert output is not None
            history_t.append(grid[i])
            history_x0.append(output)
            del history_t[:-max(orders)], history_x0[:-max(orders)]
    return x_t

"""Sampling functions in the k-diffusion style, and the adapter that runs them on a diffusers UNet.

The contract (see ``SamplingFunction`` in ``sdweb.plugin_api``)::

    def sample(denoise, x, sigmas, *, generator, callback) -> x

- ``denoise(x, sigma) -> x0``: the CFG-combined denoiser; ``sigma`` a float or 0-dim tensor. A sampler
  that evaluates the model between training timesteps (UniPC) may pass ``timestep=`` (the UNet's
  fractional timestep for ``sigma``) instead of letting the denoiser map ``sigma`` to one.
- ``x``: the starting latents, already scaled to ``sigmas[0]`` (noise * sigmas[0]), float32.
- ``sigmas``: a decreasing 1-D float32 tensor **on the CPU**, ending in 0 (so reading a value is free:
  no device sync per step).
- ``generator``: one ``torch.Generator`` per image (a list, diffusers' convention), or None. Draw
  any extra noise with :func:`noise_like` (or diffusers' ``randn_tensor(shape, generator=...)``) so image
  *i* of a batch gets the same noise as the same seed at batch size 1.
- ``callback(i, x, x0)``: call after each step; it raises to stop early (interrupt / skip).
- Optional keyword ``eta`` (0..1): receives the request's eta when the function accepts it.

This module owns that contract, the sigma schedules for function samplers, the sigma -> timestep
mapping for models trained on discrete DDPM timesteps (:class:`DiffusersDenoiser`), and the built-in
sampling functions diffusers lacks (:func:`sample_dpmpp_2s_ancestral`).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler, EulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from sdweb.plugin_api import ScheduleSpec

logger = logging.getLogger(__name__)

Denoise = Callable[[torch.Tensor, Any], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]
Generators = Sequence[torch.Generator] | torch.Generator | None

_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
#: Config keys diffusers' Euler scheduler accepts: the ones a schedule type may set for function samplers.
_EULER_OPTIONS = frozenset(inspect.signature(EulerDiscreteScheduler.__init__).parameters) - {"self", "kwargs"}


# ---------------------------------------------------------------------------------------------
# Sigmas
# ---------------------------------------------------------------------------------------------


def scheduler_options(cls: type) -> frozenset[str]:
    """The config keys a diffusers scheduler class accepts."""
    return frozenset(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}


def scheduler_from_config(cls: type, base_config: Mapping[str, Any], **overrides: Any) -> Any:
    """``cls.from_config(base_config, **overrides)`` with diffusers' own semantics, without warnings.

    Kept as diffusers does it: values that were defaults in the model's scheduler (its
    ``_use_default_values``) take the new class's defaults, so a sampler here behaves like the same
    scheduler swapped into a diffusers pipeline. Keys neither class knows are dropped quietly, and an
    override the class does not accept is an error.
    """
    accepted = scheduler_options(cls)
    unknown = [key for key in overrides if key not in accepted]
    if unknown:
        raise ValueError(f"{cls.__name__} has no option {', '.join(map(repr, unknown))}")
    config = dict(base_config)
    if "_class_name" not in config:  # a plain dict: nothing tells diffusers which keys are foreign
        config = {key: value for key, value in config.items() if key in accepted or key.startswith("_")}
    return cls.from_config(config, **overrides)


def training_sigmas(base_config: Mapping[str, Any]) -> np.ndarray:
    """The model's sigma for each training timestep (index = timestep), from its beta schedule."""
    alphas_cumprod = scheduler_from_config(DDPMScheduler, base_config).alphas_cumprod.double().numpy()
    return np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)


def function_schedule_problem(schedule: ScheduleSpec) -> str | None:
    """Why a function sampler cannot use ``schedule``, or None when it can."""
    if schedule.sigmas_fn is not None:
        return None
    accepted = _EULER_OPTIONS
    unknown = [key for key in schedule.config if key not in accepted]
    if unknown:
        return f"it has neither a sigmas_fn nor diffusers sigma flags ({', '.join(unknown)} unknown)"
    return None


def schedule_sigmas(schedule: ScheduleSpec, steps: int, base_config: Mapping[str, Any]) -> torch.Tensor:
    """``steps + 1`` decreasing float32 CPU sigmas ending in 0, for schedule type ``schedule``.

    A schedule with a ``sigmas_fn`` is asked for its values between the model's smallest and largest
    training sigma. Otherwise the schedule's diffusers flags (``use_karras_sigmas``...) are applied to
    diffusers' Euler scheduler, which computes the same spacings every diffusers sampler uses, so a
    function sampler and a scheduler sampler with one schedule type see the same noise levels.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if schedule.sigmas_fn is not None:
        table = training_sigmas(base_config)
        extra: dict[str, Any] = {}
        if "model" in inspect.signature(schedule.sigmas_fn).parameters:
            from sdweb.engine.samplers.schedules import DiscreteSigmas, ldm_alphas_cumprod

            extra["model"] = DiscreteSigmas(ldm_alphas_cumprod(base_config))
        values = torch.as_tensor(schedule.sigmas_fn(steps, float(table[0]), float(table[-1]), **extra))
        values = values.detach().to("cpu", torch.float32).flatten()
        if values.numel() != steps or not torch.isfinite(values).all() or (values <= 0).any():
            raise ValueError(f"schedule type {schedule.name!r}: sigmas_fn must return {steps} finite, "
                             f"positive values (got {values.numel()})")
        if (values[1:] > values[:-1]).any():
            raise ValueError(f"schedule type {schedule.name!r}: sigmas_fn must return decreasing values")
        return torch.cat([values, values.new_zeros(1)])
    problem = function_schedule_problem(schedule)
    if problem is not None:
        raise ValueError(f"schedule type {schedule.name!r} cannot give sigmas: {problem}")
    options: dict[str, Any] = {flag: False for flag in _SIGMA_FLAGS}
    options.update(dict(schedule.config))
    options["final_sigmas_type"] = "zero"
    euler = scheduler_from_config(EulerDiscreteScheduler, base_config, **options)
    euler.set_timesteps(steps, device="cpu")
    return euler.sigmas.detach().to("cpu", torch.float32).clone()


# ---------------------------------------------------------------------------------------------
# The adapter: a diffusers UNet as a k-diffusion denoiser
# ---------------------------------------------------------------------------------------------


class DiffusersDenoiser:
    """``denoise(x, sigma) -> x0`` for a model trained on discrete DDPM timesteps.

    ``predict(model_input, timestep)`` runs the UNet (with classifier-free guidance) on the scaled
    input and returns its output; this class does the k-diffusion bookkeeping around it: input scaling
    ``c_in = 1 / sqrt(sigma^2 + 1)``, the continuous timestep for ``sigma`` (linear interpolation in log
    sigma over the training table, as diffusers' own schedulers do), and the conversion of the
    prediction to x0 for ``epsilon``, ``v_prediction`` and ``sample`` models.
    """

    def __init__(
        self,
        predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        *,
        base_config: Mapping[str, Any],
        device: torch.device | str,
    ) -> None:
        self._predict = predict
        self._device = torch.device(device)
        self.prediction_type = str(dict(base_config).get("prediction_type", "epsilon"))
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"function samplers do not support prediction type {self.prediction_type!r}")
        sigmas = training_sigmas(base_config)
        self._log_sigmas = np.log(sigmas)
        self.sigma_min = float(sigmas[0])
        self.sigma_max = float(sigmas[-1])

    def timestep(self, sigma: float) -> float:
        """The (fractional) training timestep whose noise level is ``sigma``."""
        log_sigma = math.log(max(sigma, 1e-10))
        return float(np.interp(log_sigma, self._log_sigmas, np.arange(len(self._log_sigmas))))

    def __call__(self, x: torch.Tensor, sigma: Any, *, timestep: Any = None) -> torch.Tensor:
        sigma_value = float(sigma)  # sigmas live on the CPU: no device sync
        c_in = 1.0 / math.sqrt(sigma_value**2 + 1.0)
        t = self.timestep(sigma_value) if timestep is None else float(timestep)
        timestep = torch.tensor(t, dtype=torch.float32, device=self._device)
        output = self._predict(x * c_in, timestep).to(x.dtype)
        if self.prediction_type == "epsilon":
            return x - sigma_value * output
        if self.prediction_type == "v_prediction":
            return x * (1.0 / (sigma_value**2 + 1.0)) - output * (sigma_value * c_in)
        return output


def noise_like(x: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, image *i* drawn from ``generator[i]``.

    Drawn in float32 (then cast), on the generators' device (then moved), like the initial noise, so
    the same seed gives the same noise whatever the model's dtype and batch size.
    """
    if isinstance(generator, Sequence) and generator and hasattr(generator[0], "randn"):
        # Generators with their own ``randn(shape)`` (the NV generator, sdweb.engine.seeds): one draw each.
        drawn = torch.stack([item.randn(tuple(x.shape[1:])) for item in generator])
        return drawn.to(device=x.device, dtype=x.dtype)
    noise = randn_tensor(tuple(x.shape), generator=list(generator) if isinstance(generator, Sequence)
                         else generator, device=x.device, dtype=torch.float32)
    return noise.to(x.dtype)


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step into a deterministic part down to ``sigma_down`` and fresh noise ``sigma_up``.

    From Karras et al. (2022) / k-diffusion: ``sigma_up^2 = eta^2 * sigma_to^2 (sigma_from^2 -
    sigma_to^2) / sigma_from^2`` (capped at ``sigma_to``), ``sigma_down^2 = sigma_to^2 - sigma_up^2``.
    """
    if not eta or sigma_to == 0.0:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    sigma_down = math.sqrt(max(sigma_to**2 - sigma_up**2, 0.0))
    return sigma_down, sigma_up


# ---------------------------------------------------------------------------------------------
# Built-in sampling functions
# ---------------------------------------------------------------------------------------------


def sample_dpmpp_2s_ancestral(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generators = None,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver++(2S) with ancestral noise (A1111's "DPM++ 2S a"): two model calls per step.

    Per step from sigma_i to sigma_{i+1}: take the ancestral split (sigma_down, sigma_up); solve the
    probability-flow ODE from sigma_i to sigma_down with the second-order singlestep DPM-Solver++
    update (Lu et al. 2022, Algorithm 1, r = 1/2) in half-log-SNR time t = -log(sigma); then add fresh
    noise of size sigma_up. The last step (to sigma 0) has no noise and is a plain Euler step.
    """
    levels = [float(value) for value in sigmas]
    for i in range(len(levels) - 1):
        sigma, sigma_next = levels[i], levels[i + 1]
        x0 = denoise(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0.0:
            x = x0  # Euler to 0: x + (x - x0) / sigma * (0 - sigma)
        else:
            t, t_next = -math.log(sigma), -math.log(sigma_down)
            h = t_next - t
            s = t + 0.5 * h  # midpoint, r = 1/2
            sigma_s = math.exp(-s)
            x_mid = (sigma_s / sigma) * x - math.expm1(-0.5 * h) * x0
            x0_mid = denoise(x_mid, sigma_s)
            x = (sigma_down / sigma) * x - math.expm1(-h) * x0_mid
        if sigma_next > 0.0 and sigma_up > 0.0:
            x = x + noise_like(x, generator) * (s_noise * sigma_up)
        if callback is not None:
            callback(i, x, x0)
    return x

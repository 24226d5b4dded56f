"""UniPC as A1111 runs it (its own implementation, driven from sd_samplers_timesteps), not diffusers'.

Facts checked here, read from A1111 1.10 (modules/sd_samplers_timesteps*.py and
modules/models/diffusion/uni_pc/uni_pc.py):

- it runs one UniPC step per timestep of A1111's DDIM-style list (``1000 // steps`` apart: 7 steps ask
  for 8), from ``t = 1`` (pure noise) down to ``t = 1/1000`` on its own grid (``uni_pc_skip_type``),
  and the UNet sees ``1000 (t - 1/1000)``: fractional timesteps;
- bh1 updates with a corrector after every step but the last, order warming up 1, 2, 3 and falling back
  at the end (``uni_pc_lower_order_final``); no final denoise to zero;
- img2img starts at ``t = (timestep + 1) / 1000`` of the largest timestep it keeps.

The expected values are derived here from those rules and the UniPC paper's formulas (Zhao et al.
2023), written out step by step on a linear model (``eps = a * x``), and, for whole trajectories, by a
second, tensor-wise restatement of A1111's solver (``_a1111_unipc``); sdweb's code
(``sdweb.engine.samplers.timestep_samplers.sample_unipc``) shares no code with either.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from sdweb.engine.samplers import builtin, kdiffusion, timestep_samplers
from sdweb.engine.samplers.kdiffusion import DiscreteDenoiser
from sdweb.engine.samplers.registry import FunctionSamplerPlan, SamplerRegistry, SchedulerPlan
from sdweb.engine.samplers.schedules import DiscreteSigmas
from sdweb.engine.samplers.timestep_samplers import sample_unipc
from tests.engine.test_kdiffusion_parity import SD_CONFIG, fake_cfg_unet, ldm_alphas_cumprod


@pytest.fixture(scope="module")
def registry() -> SamplerRegistry:
    return SamplerRegistry.from_plugin_results([("builtin", builtin.register_samplers())],
                                               [("builtin", builtin.register_schedules())])


class Recorder:
    """A UNet stand-in that remembers the timesteps and inputs it was shown."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.timesteps: list[float] = []
        self.inputs: list[torch.Tensor] = []

    def __call__(self, x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.timesteps.append(float(t))
        self.inputs.append(x_in.clone())
        return self.fn(x_in, t)


# -- the timestep grid -------------------------------------------------------------------------------


@pytest.mark.parametrize(("steps", "expected_count"), [(20, 20), (7, 8), (30, 31), (25, 25), (3, 4)])
def test_unipc_runs_one_step_per_a1111_timestep_on_a_uniform_time_grid(registry: SamplerRegistry, steps: int,
                                                                       expected_count: int) -> None:
    plan = registry.build("UniPC", "Automatic", SD_CONFIG)
    assert isinstance(plan, FunctionSamplerPlan) and plan.a1111
    sigmas = plan.sigmas(steps)
    recorder = Recorder(lambda x, t: 0.5 * x)
    denoiser = DiscreteDenoiser(recorder, plan.model_sigmas())
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    calls: list[int] = []
    sample_unipc(denoiser, noise * float(sigmas[0]), sigmas, alphas_cumprod=plan.alphas_cumprod(),
                 callback=lambda i, x, x0: calls.append(i))
    assert calls == list(range(expected_count))  # one report per step
    # UniPC evaluates the model once per step: at t = 1, then at every point but the last (the corrector's).
    # time_uniform: t_k = 1 - k (1 - 1/1000) / n, shown to the UNet as 1000 (t_k - 1/1000) = 999 (1 - k / n).
    expected = [999.0 * (1 - k / expected_count) for k in range(expected_count)]
    assert recorder.timesteps == pytest.approx(expected, abs=2e-3)
    assert recorder.timesteps[1] % 1 > 1e-3  # fractional, not rounded to a training step


def test_the_other_skip_types_space_the_grid_in_sqrt_t_and_in_log_snr() -> None:
    alphas_cumprod = ldm_alphas_cumprod()
    schedule = timestep_samplers.VPSchedule(alphas_cumprod)
    quadratic = timestep_samplers.unipc_times(4, schedule, skip_type="time_quadratic")
    root_end = math.sqrt(0.001)
    assert [float(v) for v in quadratic] == pytest.approx(
        [(1 - k * (1 - root_end) / 4) ** 2 for k in range(5)], rel=1e-6)
    log_snr = timestep_samplers.unipc_times(4, schedule, skip_type="logSNR")

    def lam(t: float) -> float:  # from alphas_cumprod directly: t = (n + 1) / 1000, linear log alpha between
        n = t * 1000 - 1
        low = min(int(math.floor(n)), 998)
        w = n - low
        logs = [math.log(float(alphas_cumprod[low])), math.log(float(alphas_cumprod[low + 1]))]
        log_alpha = 0.5 * ((1 - w) * logs[0] + w * logs[1])
        return log_alpha - 0.5 * math.log(1 - math.exp(2 * log_alpha))

    lambdas = [lam(float(t)) for t in log_snr]
    assert float(log_snr[0]) == pytest.approx(1.0) and float(log_snr[-1]) == pytest.approx(0.001, rel=1e-4)
    gaps = [b - a for a, b in zip(lambdas, lambdas[1:], strict=False)]
    assert gaps == pytest.approx([gaps[0]] * 4, rel=1e-3)
    with pytest.raises(ValueError, match="skip type must be one of time_uniform, time_quadratic, logSNR"):
        timestep_samplers.unipc_times(4, schedule, skip_type="karras")


def test_step_orders_warm_up_and_fall_back_at_the_end() -> None:
    assert timestep_samplers.unipc_step_orders(6, 3) == [1, 2, 3, 3, 2, 1]
    assert timestep_samplers.unipc_step_orders(6, 3, lower_order_final=False) == [1, 2, 3, 3, 3, 3]
    assert timestep_samplers.unipc_step_orders(20, 2)[-3:] == [2, 2, 1]
    # A1111 refuses an order above the step count; here it is capped to the step count.
    assert timestep_samplers.unipc_step_orders(2, 3) == [1, 1]


# -- one step, derived by hand on a linear model -------------------------------------------------------


def _hand_unipc(x: float, a: float, alphas_cumprod: torch.Tensor, lower_order_final: bool) -> list[float]:
    """Three bh1 UniPC steps on eps(x, t) = a * x from t = 1, grid t_input 999, 666, 333, 0 (integers, so
    alpha_t = sqrt(alphas_cumprod[t_input]) with no interpolation). Returns x after each step."""
    nodes = [999, 666, 333, 0]
    alpha = [math.sqrt(float(alphas_cumprod[n])) for n in nodes]
    sigma = [math.sqrt(1 - al**2) for al in alpha]
    lam = [math.log(al / s) for al, s in zip(alpha, sigma, strict=True)]

    def data(x_vp: float, k: int) -> float:  # x0 = (x - sigma eps) / alpha
        return (x_vp - sigma[k] * a * x_vp) / alpha[k]

    m = [data(x, 0)]
    xs = []
    # step 1 (order 1): first-order predictor, corrector with rho = 1/2, B(h) = -h (bh1)
    h = lam[1] - lam[0]
    base = sigma[1] / sigma[0] * x - alpha[1] * math.expm1(-h) * m[0]
    m1 = data(base, 1)
    x = base - alpha[1] * (-h) * 0.5 * (m1 - m[0])
    m.append(m1)
    xs.append(x)
    # step 2 (order 2): predictor rho_p = 1/2 on D1 = (m0 - m1) / r1; corrector from the 2x2 order conditions
    h = lam[2] - lam[1]
    hh = -h
    r1 = (lam[0] - lam[1]) / h
    d1 = (m[0] - m[1]) / r1
    g1 = math.expm1(hh) / hh - 1
    g2 = g1 / hh - 0.5
    b1, b2 = g1 / hh, 2 * g2 / hh
    base = sigma[2] / sigma[1] * x - alpha[2] * math.expm1(hh) * m[1]
    predicted = base - alpha[2] * hh * 0.5 * d1
    m2 = data(predicted, 2)
    # rho_1 + rho_2 = b1, r1 rho_1 + rho_2 = b2
    rho_1 = (b1 - b2) / (1 - r1)
    rho_2 = b1 - rho_1
    x = base - alpha[2] * hh * (rho_1 * d1 + rho_2 * (m2 - m[1]))
    m.append(m2)
    xs.append(x)
    # step 3, the last: predictor only; order 1 (lower order final) or 3
    h = lam[3] - lam[2]
    hh = -h
    base = sigma[3] / sigma[2] * x - alpha[3] * math.expm1(hh) * m[2]
    if lower_order_final:
        xs.append(base)
        return xs
    r = [(lam[1] - lam[2]) / h, (lam[0] - lam[2]) / h]
    d = [(m[1] - m[2]) / r[0], (m[0] - m[2]) / r[1]]
    g1 = math.expm1(hh) / hh - 1
    g2 = g1 / hh - 0.5
    b1, b2 = g1 / hh, 2 * g2 / hh
    # rho_1 + rho_2 = b1, r_1 rho_1 + r_2 rho_2 = b2
    rho_2 = (b2 - r[0] * b1) / (r[1] - r[0])
    rho_1 = b1 - rho_2
    xs.append(base - alpha[3] * hh * (rho_1 * d[0] + rho_2 * d[1]))
    return xs


@pytest.mark.parametrize("lower_order_final", [True, False])
def test_unipc_steps_equal_the_papers_formulas_on_a_linear_model(lower_order_final: bool) -> None:
    alphas_cumprod = ldm_alphas_cumprod()
    model = DiscreteSigmas(alphas_cumprod)
    a, start = 0.9, 1.3
    # three levels: three UniPC steps from t = 1 (pure noise); only their count matters
    sigmas = torch.tensor([14.0, 5.0, 1.0, 0.0])
    xs: list[float] = []

    def callback(i: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        xs.append(float(x.flatten()[0]))

    recorder = Recorder(lambda x, t: a * x)
    out = sample_unipc(DiscreteDenoiser(recorder, model), torch.full((1, 1, 1, 1), start * 14.0), sigmas,
                       alphas_cumprod=alphas_cumprod, callback=callback, lower_order_final=lower_order_final)
    expected = _hand_unipc(start, a, alphas_cumprod, lower_order_final)
    assert recorder.timesteps == pytest.approx([999.0, 666.0, 333.0], abs=1e-3)
    assert float(out) == pytest.approx(expected[-1], abs=1e-5)
    # callbacks report x in the contract's scale (x / alpha_t)
    alphas = [math.sqrt(float(alphas_cumprod[n])) for n in (666, 333, 0)]
    assert [x * al for x, al in zip(xs, alphas, strict=True)] == pytest.approx(expected, abs=1e-5)


def test_the_last_step_order_changes_the_image_only_at_the_end() -> None:
    alphas_cumprod = ldm_alphas_cumprod()
    model = DiscreteSigmas(alphas_cumprod)
    sigmas = timestep_samplers.timestep_sigmas(8, model)
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(5))
    runs = []
    for lower in (True, False):
        xs: list[torch.Tensor] = []
        sample_unipc(DiscreteDenoiser(fake_cfg_unet, model), noise * float(sigmas[0]), sigmas,
                     alphas_cumprod=alphas_cumprod, lower_order_final=lower,
                     callback=lambda i, x, x0, xs=xs: xs.append(x.clone()))
        runs.append(xs)
    # orders [1, 2, 3, 3, 3, 3, 2, 1] vs [1, 2, 3, ..., 3]: the first six steps are the same
    for i in range(6):
        torch.testing.assert_close(runs[0][i], runs[1][i])
    assert not torch.allclose(runs[0][7], runs[1][7])


# -- whole trajectories against A1111's solver, restated -------------------------------------------------


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear ``f(x)`` through (xp, fp), xp increasing, extended linearly past the ends."""
    index = torch.searchsorted(xp, x).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[index - 1], xp[index], fp[index - 1], fp[index]
    return f0 + (x - x0) * (f1 - f0) / (x1 - x0)


def _a1111_unipc(eps_model: Any, x: torch.Tensor, n_steps: int, *, variant: str = "bh1",
                 skip_type: str = "time_uniform", order: int = 3, lower_order_final: bool = True,
                 t_start: torch.Tensor | None = None, downcast: bool = False) -> list[torch.Tensor]:
    """A1111's UniPC (multistep, predict_x0, NoiseScheduleVP('discrete')), float32 tensors throughout.
    Returns x after every step. ``downcast``: "Downcast alphas_cumprod", the model's alphas_cumprod in fp16
    (NoiseScheduleVP takes their log in fp16, then holds it as float32)."""
    alphas_cumprod = ldm_alphas_cumprod().half() if downcast else ldm_alphas_cumprod()
    total = len(alphas_cumprod)
    t_array = torch.linspace(0.0, 1.0, total + 1)[1:]
    log_alpha_array = (0.5 * torch.log(alphas_cumprod)).float()

    def log_alpha(t: torch.Tensor) -> torch.Tensor:
        return _interp(t, t_array, log_alpha_array)

    def std(t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(1.0 - torch.exp(2.0 * log_alpha(t)))

    def lam(t: torch.Tensor) -> torch.Tensor:
        la = log_alpha(t)
        return la - 0.5 * torch.log(1.0 - torch.exp(2.0 * la))

    def model_x0(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = eps_model(x_t, (t - 1.0 / total) * 1000.0)
        return (x_t - std(t) * eps) / torch.exp(log_alpha(t))

    t_hi = torch.tensor(1.0) if t_start is None else t_start
    t_lo = torch.tensor(1.0 / total)
    if skip_type == "time_uniform":
        grid = torch.linspace(float(t_hi), float(t_lo), n_steps + 1)
    elif skip_type == "time_quadratic":
        grid = torch.linspace(float(t_hi) ** 0.5, (1.0 / total) ** 0.5, n_steps + 1) ** 2
    else:
        lambdas = torch.linspace(float(lam(t_hi)), float(lam(t_lo)), n_steps + 1)
        la = -0.5 * torch.logaddexp(torch.zeros(1), -2.0 * lambdas)
        grid = _interp(la, log_alpha_array.flip(0), t_array.flip(0))

    def update(x_s: torch.Tensor, ms: list[torch.Tensor], ts: list[torch.Tensor], t: torch.Tensor, p: int,
               corrector: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = lam(t) - lam(ts[-1])
        rks = [(lam(ts[-(i + 1)]) - lam(ts[-1])) / h for i in range(1, p)]
        d1s = [(ms[-(i + 1)] - ms[-1]) / rk for i, rk in zip(range(1, p), rks, strict=True)]
        rks_t = torch.tensor([float(r) for r in rks] + [1.0])
        hh = -h
        alpha_t = torch.exp(log_alpha(t))
        x_base = std(t) / std(ts[-1]) * x_s - alpha_t * torch.expm1(hh) * ms[-1]
        if variant == "vary_coeff":
            c = torch.stack([rks_t**j / math.factorial(j + 1) for j in range(p)], dim=1)
            phis = [torch.expm1(hh)]
            for k in range(1, p + 1):
                phis.append(phis[-1] / hh - 1.0 / math.factorial(k))
            x_new = x_base
            if d1s:
                a_p = torch.linalg.inv(c[:-1, :-1])
                for k in range(p - 1):
                    x_new = x_new - alpha_t * phis[k + 1] * sum(a_p[k][j] * d1s[j] for j in range(p - 1))
            if not corrector:
                return x_new, None
            m_t = model_x0(x_new, t)
            a_c = torch.linalg.inv(c)
            out = x_base
            k = 0
            for k in range(p - 1):
                out = out - alpha_t * phis[k + 1] * sum(a_c[k][j] * d1s[j] for j in range(p - 1))
            return out - alpha_t * phis[p] * (m_t - ms[-1]) * a_c[k][-1], m_t
        big_b = hh if variant == "bh1" else torch.expm1(hh)
        rows, b = [], []
        g = torch.expm1(hh) / hh - 1
        fact = 1
        for i in range(1, p + 1):
            rows.append(rks_t ** (i - 1))
            b.append(float(g * fact / big_b))
            fact *= i + 1
            g = g / hh - 1.0 / fact
        r_mat, b_vec = torch.stack(rows), torch.tensor(b)
        x_new = x_base
        if d1s:
            rho_p = torch.tensor([0.5]) if p == 2 else torch.linalg.solve(r_mat[:-1, :-1], b_vec[:-1])
            x_new = x_base - alpha_t * big_b * sum(rho_p[j] * d1s[j] for j in range(p - 1))
        if not corrector:
            return x_new, None
        rho_c = torch.tensor([0.5]) if p == 1 else torch.linalg.solve(r_mat, b_vec)
        m_t = model_x0(x_new, t)
        corr = sum((rho_c[j] * d1s[j] for j in range(p - 1)), torch.zeros_like(x_s))
        return x_base - alpha_t * big_b * (corr + rho_c[-1] * (m_t - ms[-1])), m_t

    ms, ts, xs = [model_x0(x, grid[0])], [grid[0]], []
    for p in range(1, order):
        x, m = update(x, ms, ts, grid[p], p, True)
        assert m is not None
        ms.append(m)
        ts.append(grid[p])
        xs.append(x)
    for step in range(order, n_steps + 1):
        p = min(order, n_steps + 1 - step) if lower_order_final else order
        x, m = update(x, ms, ts, grid[step], p, step != n_steps)
        xs.append(x)
        ms, ts = ms[1:], ts[1:] + [grid[step]]
        if step < n_steps:
            assert m is not None
            ms.append(m)
    return xs


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual / scale, expected / scale, atol=2e-5, rtol=0,
                               msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize(("variant", "skip_type", "order", "lower"), [
    ("bh1", "time_uniform", 3, True), ("bh2", "time_uniform", 3, True),
    ("vary_coeff", "time_uniform", 3, True),
    ("bh1", "time_quadratic", 3, True), ("bh1", "logSNR", 3, True), ("bh1", "time_uniform", 2, True),
    ("bh2", "logSNR", 4, False),
])
def test_unipc_trajectory_equals_a1111s_solver(registry: SamplerRegistry, variant: str, skip_type: str,
                                               order: int, lower: bool) -> None:
    steps = 7  # A1111 runs 8 UniPC steps for 7 (its 1000 // 7 timesteps)
    plan = registry.build("UniPC", "Automatic", SD_CONFIG)
    assert isinstance(plan, FunctionSamplerPlan)
    sigmas = plan.sigmas(steps)
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(11))
    xs: list[torch.Tensor] = []
    ours = sample_unipc(DiscreteDenoiser(fake_cfg_unet, plan.model_sigmas()), noise * float(sigmas[0]),
                        sigmas,
                        alphas_cumprod=plan.alphas_cumprod(), variant=variant, skip_type=skip_type,
                        order=order, lower_order_final=lower, callback=lambda i, x, x0: xs.append(x.clone()))
    expected = _a1111_unipc(fake_cfg_unet, noise, 8, variant=variant, skip_type=skip_type, order=order,
                            lower_order_final=lower)
    assert len(xs) == len(expected) == 8
    _close(ours, expected[-1], "final latents")


def test_unipc_with_downcast_alphas_cumprod_equals_a1111s_solver_on_fp16_alphas(
        registry: SamplerRegistry) -> None:
    plan = registry.build("UniPC", "Automatic", SD_CONFIG, downcast_alphas=True)
    assert isinstance(plan, FunctionSamplerPlan)
    sigmas = plan.sigmas(7)
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(11))
    ours = sample_unipc(DiscreteDenoiser(fake_cfg_unet, plan.model_sigmas()), noise * float(sigmas[0]),
                        sigmas,
                        alphas_cumprod=plan.alphas_cumprod())
    _close(ours, _a1111_unipc(fake_cfg_unet, noise, 8, downcast=True)[-1], "final latents")
    plain = _a1111_unipc(fake_cfg_unet, noise, 8)[-1]
    assert float((ours - plain).abs().max()) > 1e-3  # the fp16 schedule changes the image


def test_unipc_img2img_starts_at_the_largest_timestep_it_keeps(registry: SamplerRegistry) -> None:
    """A1111, 20 steps at strength 0.3: t_enc = 6, UniPC on timesteps 1 ... 251 from t = 252 / 1000, the
    init latents noised to timestep 301 (one above)."""
    plan = registry.build("UniPC", "Automatic", SD_CONFIG)
    assert isinstance(plan, FunctionSamplerPlan)
    tail = plan.sigmas(20)[13:]  # what img2img hands it: the noise level, then the six timesteps kept
    model = plan.model_sigmas()
    torch.testing.assert_close(tail[:-1], model.sigmas[[301, 251, 201, 151, 101, 51, 1]])
    init = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3)) * 0.5
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(4))
    start = init + noise * float(tail[0])
    recorder = Recorder(fake_cfg_unet)
    calls: list[int] = []
    ours = sample_unipc(DiscreteDenoiser(recorder, model), start, tail, alphas_cumprod=plan.alphas_cumprod(),
                        from_image=True, callback=lambda i, x, x0: calls.append(i))
    # six steps: the UNet first sees timestep 251 and the init image noised to 301, in VP scale
    # (sqrt(a) init + sqrt(1 - a) noise = x / sqrt(sigma^2 + 1)); then 251 (1 - k/6) on the uniform grid
    assert calls == list(range(6))
    assert recorder.timesteps == pytest.approx([251 * (1 - k / 6) for k in range(6)], abs=1e-3)
    alpha_bar = float(ldm_alphas_cumprod()[301])
    a1111_start = alpha_bar**0.5 * init + (1 - alpha_bar) ** 0.5 * noise
    torch.testing.assert_close(recorder.inputs[0], a1111_start, atol=1e-5, rtol=0)
    t_start = torch.tensor(251) / 1000 + 1 / 1000
    expected = _a1111_unipc(fake_cfg_unet, a1111_start, 6, t_start=t_start)
    _close(ours, expected[-1], "img2img final latents")


def test_unipc_img2img_with_downcast_alphas_cumprod_starts_from_a1111s_fp16_noising(
        registry: SamplerRegistry) -> None:
    """"Downcast alphas_cumprod": A1111 noises the init latents with fp16 sqrt(a) and sqrt(1 - a) of
    timestep 301 and runs UniPC on the fp16 table's schedule."""
    from sdweb.engine.img2img import timestep_sampler_start

    plan = registry.build("UniPC", "Automatic", SD_CONFIG, downcast_alphas=True)
    assert isinstance(plan, FunctionSamplerPlan)
    tail = plan.sigmas(20)[13:]
    init = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3)) * 0.5
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(4))
    recorder = Recorder(fake_cfg_unet)
    ours = sample_unipc(DiscreteDenoiser(recorder, plan.model_sigmas()),
                        timestep_sampler_start(plan, init, noise, float(tail[0])), tail,
                        alphas_cumprod=plan.alphas_cumprod(), from_image=True)
    alpha = ldm_alphas_cumprod().half()[301]
    a1111_start = init * torch.sqrt(alpha) + noise * torch.sqrt(1 - alpha)
    torch.testing.assert_close(recorder.inputs[0], a1111_start, atol=1e-6, rtol=0)
    expected = _a1111_unipc(fake_cfg_unet, a1111_start, 6, t_start=torch.tensor(251) / 1000 + 1 / 1000,
                            downcast=True)
    _close(ours, expected[-1], "img2img final latents")


@pytest.mark.parametrize(("name", "steps", "strength", "kept"), [
    ("UniPC", 20, 0.3, [301, 251, 201, 151, 101, 51, 1]),
    ("DDIM", 10, 0.5, [501, 401, 301, 201, 101, 1]),
    ("PLMS", 7, 0.45, [427, 285, 143, 1]),  # 1000 // 7 = 142: t_enc = 3, noised to timesteps[3] = 427
    ("UniPC", 4, 1.0, [751, 501, 251, 1]),  # strength 1: t_enc = int(0.999 * 4) = 3, as A1111
])
def test_img2img_gives_a1111s_timestep_samplers_its_timesteps_and_noise_level(
        monkeypatch: pytest.MonkeyPatch, sd1_model: Any, samplers: SamplerRegistry, name: str, steps: int,
        strength: float, kept: list[int]) -> None:
    import functools

    from sdweb.engine.img2img import run_img2img
    from sdweb.params import Img2ImgParams, JobControl
    from tests.engine.conftest import tiny_params
    from tests.engine.test_img2img import _gradient

    function_name = {"UniPC": "sample_unipc", "DDIM": "sample_ddim", "PLMS": "sample_plms"}[name]
    original = getattr(timestep_samplers, function_name)
    seen: list[tuple[torch.Tensor, bool]] = []

    @functools.wraps(original)
    def recording(denoise: Any, x: torch.Tensor, sigmas: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        seen.append((sigmas.clone(), kwargs.get("from_image", False)))
        return original(denoise, x, sigmas, **kwargs)

    monkeypatch.setattr(timestep_samplers, function_name, recording)
    values = tiny_params(sampler_name=name, steps=steps).model_dump()
    values.update(denoising_strength=strength)
    run_img2img(sd1_model, Img2ImgParams(**values), [_gradient()], samplers=samplers, control=JobControl(),
                on_step=lambda _: None)
    sigmas, from_image = seen[0]
    model = DiscreteSigmas(ldm_alphas_cumprod())
    assert from_image
    torch.testing.assert_close(sigmas[:-1], model.sigmas[kept])
    assert float(sigmas[-1]) == 0.0


def test_unipc_inpainting_blends_the_init_latents_into_the_unets_input_as_a1111(
        registry: SamplerRegistry) -> None:
    """A1111's timestep samplers blend before denoising: the UNet sees the clean init latents outside the
    mask, its noise prediction is applied to the sampler's latents; the result is blended once done."""
    from sdweb.engine.img2img import blend_before_denoising

    plan = registry.build("UniPC", "Automatic", SD_CONFIG)
    assert isinstance(plan, FunctionSamplerPlan)
    tail = plan.sigmas(20)[13:]
    model = plan.model_sigmas()
    init = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3)) * 0.5
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(4))
    mask = torch.zeros((1, 1, 8, 8))
    mask[..., 2:6, 1:5] = 1.0  # repaint here
    start = init + noise * float(tail[0])

    def unet(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # mixes neighbours, as a UNet does
        return fake_cfg_unet(x_in + 0.3 * torch.roll(x_in, 1, dims=-1), t)

    denoise = blend_before_denoising(DiscreteDenoiser(unet, model), init, mask)
    ours = sample_unipc(denoise, start, tail, alphas_cumprod=plan.alphas_cumprod(), from_image=True)
    ours = init * (1 - mask) + ours * mask

    def blended_unet(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # CFGDenoiser, mask before
        return unet(x_t * mask + init * (1 - mask), t)

    alpha_bar = float(ldm_alphas_cumprod()[301])
    a1111_start = alpha_bar**0.5 * init + (1 - alpha_bar) ** 0.5 * noise
    t_start = torch.tensor(251) / 1000 + 1 / 1000
    expected = _a1111_unipc(blended_unet, a1111_start, 6, t_start=t_start)[-1]
    expected = expected * mask + init * (1 - mask)
    _close(ours, expected, "inpainted latents")
    # not what blending the prediction would give
    denoiser = DiscreteDenoiser(unet, model)
    plain = sample_unipc(lambda x, s, **kw: denoiser(x, s, **kw) * mask + init * (1 - mask), start, tail,
                         alphas_cumprod=plan.alphas_cumprod(), from_image=True)
    assert float((plain * mask - expected * mask).abs().max()) > 1e-3


def test_v_prediction_turns_v_into_noise_with_the_whole_timesteps_alphas() -> None:
    """A1111's timestep denoiser for v models: eps = sqrt(a[int t]) v + sqrt(1 - a[int t]) x."""
    alphas_cumprod = ldm_alphas_cumprod()
    model = DiscreteSigmas(alphas_cumprod)
    v = torch.full((1, 1, 1, 1), 0.3)
    denoiser = DiscreteDenoiser(lambda x, t: v, model, prediction_type="v_prediction")
    alpha_bar = float(alphas_cumprod[500])
    x_vp = torch.full((1, 1, 1, 1), 0.8)
    # a fractional timestep between 500 and 501: the UNet's level is interpolated, the v conversion is not
    schedule = timestep_samplers.VPSchedule(alphas_cumprod)
    t = 0.5014  # 1000 (t - 1/1000) = 500.4
    alpha, std = schedule.alpha(t), schedule.std(t)
    x0 = denoiser(x_vp / alpha, std / alpha, timestep=torch.tensor(500.4))
    eps = alpha_bar**0.5 * 0.3 + (1 - alpha_bar) ** 0.5 * 0.8
    assert float(x0) == pytest.approx((0.8 - std * eps) / alpha, abs=1e-5)


# -- through the generation loop: A1111's UniPC by default, diffusers' on the diffusers path --------------


def test_unipc_images_follow_a1111_and_differ_from_diffusers_unipc(sd1_model: Any, samplers: SamplerRegistry
                                                                   ) -> None:
    from sdweb.engine.encode import PromptEncoder
    from sdweb.engine.generate import run_txt2img
    from sdweb.params import JobControl
    from tests.engine.conftest import tiny_params

    assert isinstance(samplers.build("UniPC", "Automatic", SD_CONFIG, path="diffusers"), SchedulerPlan)
    params = tiny_params(sampler_name="UniPC", steps=5, batch_size=2, cfg_scale=6.0)
    run = run_txt2img(sd1_model, params, samplers=samplers, control=JobControl(), on_step=lambda _: None,
                      output_type="latent")
    ours = torch.cat([image.image for image in run.images])
    diffusers_run = run_txt2img(sd1_model, params.model_copy(update={"sampler_path": "diffusers"}),
                                samplers=samplers, control=JobControl(), on_step=lambda _: None,
                                output_type="latent")
    theirs = torch.cat([image.image for image in diffusers_run.images])
    assert float((ours - theirs).abs().max()) > 1e-2

    # A1111: x = the seeds' noise, A1111's UniPC over the UNet with CFG on the noise prediction
    pipe = sd1_model.pipe
    cond, uncond = (item.hidden for item in PromptEncoder(pipe, device="cpu", dtype=torch.float32)
                    .encode_texts([params.prompt, params.negative_prompt], clip_skip=1))
    noise = torch.stack([torch.randn(tuple(ours.shape[1:]), generator=torch.Generator().manual_seed(seed))
                         for seed in (params.seed, params.seed + 1)])

    def eps_model(x_t: torch.Tensor, t_input: torch.Tensor) -> torch.Tensor:
        both = pipe.unet(torch.cat([x_t, x_t]), t_input.expand(2 * x_t.shape[0]),
                         encoder_hidden_states=torch.cat([cond.repeat(2, 1, 1), uncond.repeat(2, 1, 1)]),
                         return_dict=False)[0]
        eps_cond, eps_uncond = both.chunk(2)
        return eps_uncond + (eps_cond - eps_uncond) * params.cfg_scale

    with torch.no_grad():
        expected = _a1111_unipc(eps_model, noise, 5)[-1]
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(ours / scale, expected / scale, atol=1e-5, rtol=0)


def test_unipc_on_a_v_prediction_model_follows_a1111(sd2v_pipe: Any, samplers: SamplerRegistry) -> None:
    """SD 2.x 768-v: A1111's timestep denoiser turns each v into noise with the alphas of the timestep's
    whole part (the UNet itself sees the fractional timestep), CFG on the noise."""
    from sdweb.engine.encode import PromptEncoder
    from sdweb.engine.generate import run_txt2img
    from sdweb.params import JobControl
    from tests.engine.conftest import TinyModel, tiny_params

    params = tiny_params(sampler_name="UniPC", steps=4, cfg_scale=5.0)
    run = run_txt2img(TinyModel(pipe=sd2v_pipe, family="sd2"), params, samplers=samplers,
                      control=JobControl(), on_step=lambda _: None, output_type="latent")
    ours = run.images[0].image
    cond, uncond = (item.hidden for item in PromptEncoder(sd2v_pipe, device="cpu", dtype=torch.float32)
                    .encode_texts([params.prompt, params.negative_prompt], clip_skip=1))
    alphas_cumprod = ldm_alphas_cumprod()
    noise = torch.randn(tuple(ours.shape[1:]), generator=torch.Generator().manual_seed(params.seed))[None]

    def eps_model(x_t: torch.Tensor, t_input: torch.Tensor) -> torch.Tensor:
        both = sd2v_pipe.unet(torch.cat([x_t, x_t]), t_input.expand(2), return_dict=False,
                              encoder_hidden_states=torch.cat([cond, uncond]))[0]
        a = alphas_cumprod[int(t_input)]
        eps = a.sqrt() * both + (1 - a).sqrt() * torch.cat([x_t, x_t])
        eps_cond, eps_uncond = eps.chunk(2)
        return eps_uncond + (eps_cond - eps_uncond) * params.cfg_scale

    with torch.no_grad():
        expected = _a1111_unipc(eps_model, noise, 4)[-1]
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(ours / scale, expected / scale, atol=1e-5, rtol=0)


def test_the_infotext_of_a_unipc_image_makes_the_same_image_again(sd1_model: Any, samplers: SamplerRegistry
                                                                   ) -> None:
    from sdweb.engine.generate import run_txt2img
    from sdweb.images.infotext import build_infotext, infotext_to_params, parse_infotext
    from sdweb.params import JobControl
    from tests.engine.conftest import tiny_params

    params = tiny_params(sampler_name="UniPC", steps=4, seed=321)
    first = run_txt2img(sd1_model, params, samplers=samplers, control=JobControl(), on_step=lambda _: None)
    text = build_infotext(params, seed=params.seed, subseed=params.subseed, model_name="m", model_hash="h",
                          rng=params.rng, version="v")
    assert "Sampler: UniPC" in text and "Sampler path" not in text
    pasted, _rest = infotext_to_params(parse_infotext(text), gpu_rng="NV")
    assert pasted.sampler_name == "UniPC" and pasted.sampler_path == "A1111"
    pasted = pasted.model_copy(update={"clip_skip": pasted.clip_skip or 1, "subseed": params.subseed})
    again = run_txt2img(sd1_model, pasted, samplers=samplers, control=JobControl(), on_step=lambda _: None)
    assert list(again.images[0].image.getdata()) == list(first.images[0].image.getdata())


@pytest.mark.parametrize(("name", "module", "function_name"), [
    ("UniPC", timestep_samplers, "sample_unipc"), ("DPM adaptive", kdiffusion, "sample_dpm_adaptive")])
def test_a1111s_unipc_settings_reach_unipc_and_only_unipc(monkeypatch: pytest.MonkeyPatch, sd1_model: Any,
                                                          samplers: SamplerRegistry, name: str,
                                                          module: Any, function_name: str) -> None:
    import functools

    from sdweb.engine.generate import run_txt2img
    from sdweb.params import JobControl
    from tests.engine.conftest import tiny_params

    original = getattr(module, function_name)
    seen: list[dict[str, Any]] = []

    @functools.wraps(original)
    def recording(denoise: Any, x: torch.Tensor, sigmas: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        seen.append(kwargs)
        return original(denoise, x, sigmas, **kwargs)

    monkeypatch.setattr(module, function_name, recording)
    params = tiny_params(sampler_name=name, steps=4, uni_pc_variant="bh2", uni_pc_skip_type="logSNR",
                         uni_pc_order=2, uni_pc_lower_order_final=False)
    run_txt2img(sd1_model, params, samplers=samplers, control=JobControl(), on_step=lambda _: None)
    if name == "UniPC":
        assert {key: seen[0][key] for key in ("variant", "skip_type", "order", "lower_order_final")} == {
            "variant": "bh2", "skip_type": "logSNR", "order": 2, "lower_order_final": False}
    else:  # DPM adaptive has an "order" of its own: UniPC's setting is not it
        assert "order" not in seen[0]

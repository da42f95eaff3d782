"""Nested Diffusion on a rectified flow (nestedlib.flow): the grids and Euler steps of diffusers'
FlowMatchEulerDiscreteScheduler, the marginal-keeping family of steps, and Eq. 1 made exact on the 2-D toy."""
import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from nestedlib import Network, nested, run
from nestedlib.flow import (FlowDDIM, FlowExactPosterior, FlowMean, FlowProcess, FlowSchedule, euler, flow_abar, flow_noise_std,
                            flow_step, toy_network)
from nestedlib.toy import energy_distance

# SD3's scheduler (a fixed shift of 3), Flux's (dynamic shifting, FluxPipeline's own sigmas), and the defaults.
CONFIGS = {
    "default": (dict(), dict(), None),
    "sd3": (dict(shift=3.0), dict(), None),
    "flux": (dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15), dict(spacing="flux"), 0.83),
    "dynamic-linear": (dict(use_dynamic_shifting=True, time_shift_type="linear"), dict(), 1.7),
}


def _scheduler_sigmas(config, steps):
    options, ours, mu = CONFIGS[config]
    scheduler = FlowMatchEulerDiscreteScheduler(**options)
    sigmas = np.linspace(1.0, 1 / steps, steps) if ours.get("spacing") == "flux" else None  # FluxPipeline's
    scheduler.set_timesteps(steps, sigmas=sigmas, mu=mu)
    return scheduler, FlowSchedule.from_diffusers(scheduler, mu=mu, **ours)


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("steps", [1, 2, 7, 28, 50])
def test_grids_are_the_schedulers_sigmas_bit_for_bit(config, steps):
    scheduler, schedule = _scheduler_sigmas(config, steps)
    assert schedule.grid(steps) + [0.0] == scheduler.sigmas.tolist()
    assert torch.equal(schedule.timesteps(schedule.grid(steps)), scheduler.timesteps)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_an_inner_grid_starts_at_its_outer_sigma_and_keeps_the_spacing(config):
    _, schedule = _scheduler_sigmas(config, 4)
    outer = schedule.grid(4)
    for sigma in outer:
        inner = schedule.grid(6, sigma)
        assert inner[0] == pytest.approx(sigma, rel=1e-6) and all(a > b > 0 for a, b in zip(inner, inner[1:]))
        assert schedule.unshifted(inner[-1]) == pytest.approx(schedule.unshifted(sigma) * schedule.base(6)[-1],
                                                               rel=1e-5)
    assert schedule.grid(6, 1.0) == schedule.grid(6)


def test_unsupported_scheduler_options_are_refused_by_name():
    with pytest.raises(ValueError, match="use_karras_sigmas is not a grid nestedlib builds"):
        FlowSchedule.from_diffusers(FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True))
    with pytest.raises(ValueError, match="pass mu"):
        FlowSchedule.from_diffusers(FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True))
    with pytest.raises(ValueError, match="eta must lie in"):
        FlowDDIM(FlowSchedule(), eta=1.5)
    with pytest.raises(ValueError, match="unknown spacing"):
        FlowSchedule(spacing="karras")


# ---- Euler, step for step against diffusers (float64) ---------------------------------------------------------

def _linear_velocity(dim=6, seed=0):
    """A smooth stand-in network in float64: v = tanh(A x) + b sigma (any function of (x, sigma) would do)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim**0.5
    b = torch.randn(dim, generator=g, dtype=torch.float64)

    def fn(x, t, cond=None):
        return torch.tanh(x @ A.T) + b * t.to(x.dtype)[:, None]

    return fn


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_flow_ddim_at_eta_0_is_the_schedulers_euler_step(config):
    """Each step from the same x_t (float32-representable, so that the scheduler's cast of the sample to float32 is
    exact): ours goes through x̂_0 and epŝ in float64, diffusers adds dt v with dt = sigma' - sigma taken in float32
    (its sigmas are a float32 tensor). Error model: dt's rounding, 2^-24 |dt| |v|, plus float64 rounding (1e-13)."""
    steps = 12
    scheduler, schedule = _scheduler_sigmas(config, steps)
    fn, q = _linear_velocity(), FlowDDIM(schedule)
    grid = schedule.grid(steps)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float32).double()
    for j, sigma in enumerate(grid):
        v = fn(x, torch.full((5,), sigma, dtype=torch.float64))
        theirs = scheduler.step(v, scheduler.timesteps[j], x).prev_sample
        sigma_next = grid[j + 1] if j + 1 < steps else 0.0
        ours = q(x, x - sigma * v, sigma, sigma_next if j + 1 < steps else -1)
        bound = 2**-24 * (sigma - sigma_next) * v.abs().max().item() + 1e-13 * (1 + x.abs().max().item())
        assert (ours - theirs).abs().max().item() <= bound
        x = theirs.float().double()  # the next step's x_t, again exactly representable in float32


def test_euler_equals_the_scheduler_loop_in_float64():
    """The whole loop: ours in float64 throughout, diffusers rounds the sample to float32 at every step (its upcast
    to float32 is a downcast for float64 input): a relative 2^-24 per step, so 50 steps stay below 50 x 6e-8."""
    steps = 50
    scheduler, schedule = _scheduler_sigmas("sd3", steps)
    fn = _linear_velocity()
    x_T = torch.randn(5, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    seen = []
    ours = run(euler(Network(fn), schedule, steps), x_T, callback=lambda e: seen.append(e.t))
    x = x_T.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(fn(x, (t / 1000).double().expand(5)), t, x).prev_sample
    assert seen == schedule.grid(steps) and ours.nfe == steps
    assert (ours.x0 - x).abs().max().item() <= steps * 6e-8 * x.abs().max().item()


def test_fresh_noise_is_the_schedulers_stochastic_sampling():
    """In float32, where the scheduler draws its noise (it casts the sample to float32 first): the same draws from
    the same generator, and the same step up to float32 rounding of x̂_0 and epŝ (a few 1e-7 of |x|)."""
    steps = 8
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, stochastic_sampling=True)
    scheduler.set_timesteps(steps)
    schedule, fn = FlowSchedule.from_diffusers(scheduler), _linear_velocity()
    q, grid = FlowDDIM(schedule, fresh=True), schedule.grid(steps)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(3))
    for j, sigma in enumerate(grid):
        v = fn(x.double(), torch.full((5,), sigma, dtype=torch.float64)).float()
        theirs = scheduler.step(v, scheduler.timesteps[j], x, generator=torch.Generator().manual_seed(j)).prev_sample
        ours = q(x, x - sigma * v, sigma, grid[j + 1] if j + 1 < steps else -1, torch.Generator().manual_seed(j))
        assert (ours - theirs).abs().max().item() <= 1e-6 * (1 + x.abs().max().item() + v.abs().max().item())
        x = theirs


# ---- the family of steps keeps the marginals ---------------------------------------------------------------

@pytest.mark.parametrize("eta, fresh", [(0.0, False), (0.5, False), (1.0, False), (0.0, True)])
def test_every_step_of_the_family_keeps_the_marginal_given_x0(eta, fresh):
    """x_t ~ N((1 - sigma_t) x_0, sigma_t^2) and the step from the true x_0 give x_s ~ N((1 - sigma_s) x_0, sigma_s^2):
    mean and std over 200,000 draws within 5 standard errors."""
    n, x0, sigma_t, sigma_s = 200_000, 0.7, 0.8, 0.3
    g = torch.Generator().manual_seed(4)
    x_t = (1 - sigma_t) * x0 + sigma_t * torch.randn(n, 1, generator=g, dtype=torch.float64)
    x_s = FlowDDIM(FlowSchedule(), eta, fresh)(x_t, torch.full_like(x_t, x0), sigma_t, sigma_s, g)
    assert abs(x_s.mean().item() - (1 - sigma_s) * x0) < 5 * sigma_s / n**0.5  # standard error of a mean
    assert abs(x_s.std().item() - sigma_s) < 5 * sigma_s / (2 * n) ** 0.5  # ... and of a Gaussian's std


def test_eta_1_is_the_posterior_of_the_markov_path():
    """c(eta = 1) is the std of q(x_s | x_t, x_0) for the Gaussian path: Var(x_s | x_t) of the joint
    (x_s, x_t) given x_0, with x_t = (1 - sigma_t) x_0 + ... a scaled DDPM step (`flow_abar`)."""
    sigma_t, sigma_s = 0.9, 0.4
    (a_t, k_t), (a_s, k_s) = flow_abar(sigma_t), flow_abar(sigma_s)
    r = a_t / a_s  # the DDPM step's alpha between the two scaled paths
    posterior_var = k_s**2 * (1 - a_s) * (1 - r) / (1 - a_t)
    assert flow_noise_std(sigma_t, sigma_s, 1.0) == pytest.approx(math.sqrt(posterior_var), rel=1e-12)
    assert flow_noise_std(1.0, sigma_s, 1.0) == pytest.approx(sigma_s, rel=1e-12)  # from pure noise: fresh noise


def test_flow_step_at_c_0_is_euler_algebraically():
    x_t, v = torch.tensor([0.3, -1.2], dtype=torch.float64), torch.tensor([1.1, 0.4], dtype=torch.float64)
    out = flow_step(x_t, x_t - 0.6 * v, 0.6, 0.25)
    assert torch.allclose(out, x_t + (0.25 - 0.6) * v, rtol=0, atol=1e-15)


# ---- Eq. 1 on the 2-D toy: exact posterior draws make Algorithms 1 and 2 exact on the flow path --------------

# the same data check as tests/test_toy_exactness.py: its sample size, tolerances, reference draw and test
from test_toy_exactness import ED_TOL, N, WEIGHT_TOL, _matches_data, reference  # noqa: E402,F401 (reference: a fixture)


@pytest.mark.parametrize("steps", [1, 2, 10])
@pytest.mark.parametrize("eta, fresh", [(0.0, False), (0.5, False), (1.0, False), (0.0, True)])
def test_algorithm1_with_the_exact_flow_posterior_reproduces_the_data(steps, eta, fresh, mixture, reference):
    schedule = FlowSchedule(shift=3.0)
    exact = FlowExactPosterior(mixture, schedule)
    g = torch.Generator().manual_seed(steps)
    x_T = torch.randn(N, 2, dtype=torch.float64, generator=g)  # sigma = 1: pure noise
    result = run(FlowProcess(exact, FlowDDIM(schedule, eta, fresh), steps), x_T, generator=g)
    assert _matches_data(result.x0, mixture, reference)


def test_euler_with_the_exact_velocity_and_two_steps_fails_the_same_test(mixture, reference):
    schedule = FlowSchedule(shift=3.0)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(N, 2, dtype=torch.float64, generator=g)
    result = run(euler(Network(toy_network(mixture)), schedule, 2), x_T)
    assert energy_distance(result.x0, reference) > 100 * ED_TOL


def test_nested_flow_with_exact_inner_draws_is_exact_at_every_preview(mixture, reference):
    schedule = FlowSchedule(shift=3.0)
    inner = FlowProcess(FlowExactPosterior(mixture, schedule), FlowDDIM(schedule, 1.0), 3)
    outer = nested(inner, 4)
    g = torch.Generator().manual_seed(7)
    result = run(outer, torch.randn(N, 2, dtype=torch.float64, generator=g), generator=g)
    assert result.nfe == 12 and [p.t for p in result.previews] == schedule.grid(4)
    assert all(_matches_data(p.x0, mixture, reference) for p in result.previews)


# ---- one outer or one inner step is vanilla Euler ----------------------------------------------------------

@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_one_outer_or_one_inner_step_reverts_to_vanilla(config):
    _, schedule = _scheduler_sigmas(config, 3)
    net = Network(_linear_velocity())
    x_T = torch.randn(4, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    vanilla7 = run(euler(net, schedule, 7), x_T)
    one_outer = run(nested(euler(net, schedule, 7), 1), x_T)
    assert torch.equal(one_outer.x0, vanilla7.x0) and one_outer.nfe == 7
    one_inner = run(nested(euler(net, schedule, 1), 7), x_T)
    assert one_inner.nfe == 7 and [p.t for p in one_inner.previews] == [p.t for p in vanilla7.previews]
    for a, b in zip(one_inner.previews, vanilla7.previews):  # the same steps; x̂_0 and epŝ vs direct x̂_0 rounding
        assert (a.x - b.x).abs().max().item() <= 1e-12


def test_nested_flow_spends_outer_times_inner_and_reports_every_depth(mixture):
    schedule = FlowSchedule(shift=3.0)
    net = Network(toy_network(mixture))
    seen = []
    result = run(nested(euler(net, schedule, [2, 3, 4]), 3), torch.randn(10, 2, dtype=torch.float64),
                 callback=lambda e: seen.append((e.depth, e.nfe)))
    assert result.nfe == 9 and [p.nfe for p in result.previews] == [2, 5, 9]
    assert [d for d, _ in seen].count(1) == 9 and [d for d, _ in seen].count(0) == 3
    assert isinstance(nested(euler(net, schedule, 2), 3).transition, FlowDDIM)
    assert isinstance(euler(net, schedule, 2).x0_sampler, FlowMean)

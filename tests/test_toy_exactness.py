"""Eq. 1 on the 2-D toy: with exact draws from p(x_0 | x_t), Algorithms 1 and 2 sample the data law exactly."""
import pytest
import torch

from nestedlib import DDIM, DDPM, Diffusion, run, vanilla
from nestedlib.toy import ExactPosterior, energy_distance

N = 3000
# Two independent data samples of N points stay below 0.0023 in energy distance (20 seeds); a Dirac-at-the-mean
# sampler with 2 steps lands at 1.6 and with 10 steps at 0.018.
ED_TOL = 0.005
WEIGHT_TOL = 0.03  # about 3.3 standard errors of a mixture weight near 0.5 at N = 3000


@pytest.fixture(scope="module")
def reference(mixture):
    return mixture.sample(N, torch.Generator().manual_seed(12345))


def _matches_data(x, mixture, reference):
    weights = mixture.responsibilities(x).argmax(1).bincount(minlength=3) / len(x)
    return energy_distance(x, reference) < ED_TOL and (weights - mixture.weights).abs().max().item() < WEIGHT_TOL


def _x_T(mixture, schedule, seed):
    g = torch.Generator().manual_seed(seed)
    return mixture.sample_noisy(N, schedule.abar(999), g), g


@pytest.mark.parametrize("steps", [1, 2, 10])
@pytest.mark.parametrize("transition", ["ddpm", "ddim0", "ddim0.5"])
def test_algorithm1_with_exact_posterior_reproduces_the_data(steps, transition, mixture, schedule, reference):
    q = {"ddpm": DDPM(schedule), "ddim0": DDIM(schedule, 0.0), "ddim0.5": DDIM(schedule, 0.5)}[transition]
    x_T, g = _x_T(mixture, schedule, steps)
    result = run(Diffusion(ExactPosterior(mixture, schedule), q, steps), x_T, generator=g)
    assert _matches_data(result.x0, mixture, reference)


def test_a_dirac_at_the_mean_with_two_steps_fails_the_same_test(mixture, schedule, toy_net, reference):
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(N, 2, dtype=torch.float64, generator=g)
    result = run(vanilla(toy_net, schedule, 2, transition="ddpm"), x_T, generator=g)
    assert not _matches_data(result.x0, mixture, reference)
    assert energy_distance(result.x0, reference) > 100 * ED_TOL


def test_nested_with_exact_inner_sampling_is_exact(mixture, schedule, reference):
    inner = Diffusion(ExactPosterior(mixture, schedule), DDPM(schedule), 3)
    outer = Diffusion(inner, DDIM(schedule, 0.0), 4, t_end=1, drop_end=True)
    x_T, g = _x_T(mixture, schedule, 7)
    result = run(outer, x_T, generator=g)
    assert result.nfe == 12
    assert all(_matches_data(p.x0, mixture, reference) for p in result.previews)  # every preview is a true sample


def test_three_levels_of_nesting_come_for_free(mixture, schedule, reference):
    level2 = Diffusion(ExactPosterior(mixture, schedule), DDPM(schedule), 2)
    level1 = Diffusion(level2, DDIM(schedule, 0.0), 2, t_end=1, drop_end=True)
    level0 = Diffusion(level1, DDIM(schedule, 0.0), 3, t_end=1, drop_end=True)
    x_T, g = _x_T(mixture, schedule, 8)
    seen = []
    result = run(level0, x_T, generator=g, callback=lambda e: seen.append((e.depth, e.nfe)))
    assert result.nfe == level0.nfe(999) == 3 * 2 * 2
    assert {d for d, _ in seen} == {0, 1, 2}
    assert _matches_data(result.x0, mixture, reference)

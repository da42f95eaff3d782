"""The toy's exact reverse step p(x_{t'} | x_t) (the left side of Eq. 1), checked against the forward process and Eq. 1."""
import pytest
import torch

from nestedlib.toy import energy_distance
from nestedlib.transitions import ddpm_step

T, T_PREV = 500, 250  # a long respaced step: p(x_{t'} | x_t) is far from Gaussian here
N_JOINT = 4000
# Two independent joint samples (x_{t'}, x_t) of 4,000 points stay below 0.0014 in energy distance (6 seeds); the
# wrong samplers below land at 0.0044-0.0049 (forward-step variance) and 0.019-0.021 (responsibilities at t'), and a
# sampler that returns only the mean of p(x_{t'} | x_t) at 0.16.
ED_TOL = 0.0025
N_FIXED = 20000
MEAN_TOL, COV_TOL = 0.04, 0.1  # about 4 standard errors at 20,000 draws; the wrong variance is off by 0.38


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _forward_pairs(mixture, abar_t, abar_prev, seed):
    """(x_{t'}, x_t) from the forward process: x_{t'} ~ p(x_{t'}), then x_t = sqrt(r) x_{t'} + sqrt(1 - r) eps."""
    g = gen(seed)
    x_prev = mixture.sample_noisy(N_JOINT, abar_prev, g)
    r = abar_t / abar_prev
    x_t = r**0.5 * x_prev + (1 - r) ** 0.5 * torch.randn(x_prev.shape, dtype=x_prev.dtype, generator=g)
    return torch.cat([x_prev, x_t], 1)


def _reverse_pairs(mixture, abar_t, abar_prev, seed, step):
    """(x_{t'}, x_t) the other way round: x_t ~ p(x_t), then x_{t'} ~ step(x_t)."""
    g = gen(seed)
    x_t = mixture.sample_noisy(N_JOINT, abar_t, g)
    return torch.cat([step(x_t, abar_t, abar_prev, g), x_t], 1)


def _wrong_responsibilities(mixture):
    def step(x, abar_t, abar_prev, g):  # p(k | x_t) evaluated at t' instead of t
        m, v = mixture._reverse_components(x, abar_t, abar_prev)
        k = torch.multinomial(mixture.responsibilities(x, abar_prev), 1, generator=g)[:, 0]
        return m[torch.arange(len(k)), k] + v[k, None] ** 0.5 * torch.randn(x.shape, dtype=x.dtype, generator=g)

    return step


def _wrong_variance(mixture):
    def step(x, abar_t, abar_prev, g):  # the forward step's variance 1 - r instead of the posterior's V_k
        m, _ = mixture._reverse_components(x, abar_t, abar_prev)
        k = torch.multinomial(mixture.responsibilities(x, abar_t), 1, generator=g)[:, 0]
        noise = torch.randn(x.shape, dtype=x.dtype, generator=g)
        return m[torch.arange(len(k)), k] + (1 - abar_t / abar_prev) ** 0.5 * noise

    return step


def test_at_the_clean_end_it_is_the_posterior(mixture):
    x = torch.randn(50, 2, dtype=torch.float64, generator=gen(0))
    assert torch.equal(mixture.reverse_step_sample(x, 0.3, 1.0, gen(1)), mixture.posterior_sample(x, 0.3, gen(1)))
    mean, _ = mixture.reverse_step_moments(x, 0.3, 1.0)
    assert torch.allclose(mean, mixture.posterior_mean(x, 0.3), atol=1e-12)


def test_an_empty_step_returns_x_t_and_a_reversed_step_is_refused(mixture):
    x = torch.randn(5, 2, dtype=torch.float64, generator=gen(0))
    assert torch.equal(mixture.reverse_step_sample(x, 0.4, 0.4, gen(1)), x)
    with pytest.raises(ValueError, match="earlier t'"):
        mixture.reverse_step_sample(x, 0.5, 0.4, gen(1))


def test_joint_law_matches_the_forward_process(mixture, schedule):
    a, a_prev = schedule.abar(T), schedule.abar(T_PREV)
    reference = _forward_pairs(mixture, a, a_prev, seed=1)
    assert energy_distance(_forward_pairs(mixture, a, a_prev, seed=2), reference) < ED_TOL  # the test's own floor
    assert energy_distance(_reverse_pairs(mixture, a, a_prev, 3, mixture.reverse_step_sample), reference) < ED_TOL


@pytest.mark.parametrize("wrong", [_wrong_responsibilities, _wrong_variance], ids=["responsibilities", "variance"])
def test_the_same_check_rejects_a_wrong_reverse_step(wrong, mixture, schedule):
    a, a_prev = schedule.abar(T), schedule.abar(T_PREV)
    reference = _forward_pairs(mixture, a, a_prev, seed=1)
    assert energy_distance(_reverse_pairs(mixture, a, a_prev, 3, wrong(mixture)), reference) > ED_TOL


def test_moments_at_a_fixed_x_t_and_eq1_gives_the_same_law(mixture, schedule):
    a, a_prev = schedule.abar(T), schedule.abar(T_PREV)
    x_t = torch.tensor([[0.3, -0.2]], dtype=torch.float64).expand(N_FIXED, 2).clone()
    mean, cov = mixture.reverse_step_moments(x_t[:1], a, a_prev)
    g = gen(5)
    exact = mixture.reverse_step_sample(x_t, a, a_prev, g)
    x0 = mixture.posterior_sample(x_t, a, g)  # Eq. 1: x_0 ~ p(x_0 | x_t), then x_{t'} ~ q(x_{t'} | x_0, x_t)
    eq1 = ddpm_step(x_t, x0, a, a_prev, torch.randn(x_t.shape, dtype=x_t.dtype, generator=g))
    wrong = _wrong_variance(mixture)(x_t, a, a_prev, g)
    for y in (exact, eq1):
        assert (y.mean(0) - mean[0]).abs().max() < MEAN_TOL
        assert (torch.cov(y.T) - cov[0]).abs().max() < COV_TOL
    assert (torch.cov(wrong.T) - cov[0]).abs().max() > COV_TOL

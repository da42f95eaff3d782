"""The 2-D toy: a Gaussian mixture whose posterior p(x_0 | x_t) is known in closed form.

Data: p(x_0) = sum_k pi_k N(mu_k, s_k^2 I). The forward process x_t = sqrt(a) x_0 + sqrt(1 - a) eps (a = abar_t) keeps
it a mixture, p(x_t) = sum_k pi_k N(sqrt(a) mu_k, (a s_k^2 + 1 - a) I), and Bayes' rule per component gives
p(x_0 | x_t) = sum_k w_k(x_t) N(m_k(x_t), v_k I) with
    v_k = s_k^2 (1 - a) / (a s_k^2 + 1 - a),   m_k = v_k (mu_k / s_k^2 + sqrt(a) x_t / (1 - a)),
    w_k(x_t) ∝ pi_k N(x_t; sqrt(a) mu_k, (a s_k^2 + 1 - a) I).
So the toy has an exact denoiser E[x_0 | x_t] (a perfect epsilon network) and an exact posterior sampler: the two
ends of the x0-sampler spectrum, with nothing learned.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .sampling import Context, Estimate, count_nfe
from .schedules import Schedule


@dataclass(frozen=True)
class GaussianMixture:
    """p(x_0) = sum_k pi_k N(mu_k, s_k^2 I), in float64."""

    means: torch.Tensor  # mu_k, (K, D)
    stds: torch.Tensor  # s_k, (K,)
    weights: torch.Tensor  # pi_k, (K,)

    @classmethod
    def default(cls) -> "GaussianMixture":
        """Three well-separated modes with unequal weights: the book's running example."""
        return cls(
            means=torch.tensor([[-2.0, -1.0], [2.0, -1.0], [0.0, 2.0]], dtype=torch.float64),
            stds=torch.tensor([0.25, 0.25, 0.25], dtype=torch.float64),
            weights=torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64),
        )

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """x_0 ~ p(x_0): a component k ~ pi, then mu_k + s_k z."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        return self.means[k] + self.stds[k, None] * z

    def sample_noisy(self, n: int, abar: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """x_t ~ p(x_t), the exact marginal: x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps."""
        x0 = self.sample(n, generator)
        return abar**0.5 * x0 + (1 - abar) ** 0.5 * torch.randn(x0.shape, dtype=x0.dtype, generator=generator)

    def responsibilities(self, x_t: torch.Tensor, abar: float = 1.0) -> torch.Tensor:
        """w_k(x_t) = p(k | x_t), (n, K); with abar = 1 it classifies clean points by component."""
        var = abar * self.stds**2 + (1 - abar)  # a s_k^2 + 1 - a
        sq = ((x_t[:, None, :] - abar**0.5 * self.means[None]) ** 2).sum(-1)  # |x_t - sqrt(a) mu_k|^2
        logp = torch.log(self.weights) - 0.5 * sq / var - 0.5 * self.dim * torch.log(2 * torch.pi * var)
        return torch.softmax(logp, dim=1)

    def _components(self, x_t: torch.Tensor, abar: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-component posterior means m_k(x_t), (n, K, D), and variances v_k, (K,)."""
        s2 = self.stds**2
        v = s2 * (1 - abar) / (abar * s2 + 1 - abar)  # v_k
        if abar == 1.0:  # no noise: x_0 = x_t
            return x_t[:, None, :].expand(-1, len(s2), -1), v
        m = v[None, :, None] * (self.means[None] / s2[None, :, None] + abar**0.5 * x_t[:, None, :] / (1 - abar))
        return m, v

    def posterior_mean(self, x_t: torch.Tensor, abar: float) -> torch.Tensor:
        """E[x_0 | x_t] = sum_k w_k m_k: the exact denoiser (what a perfect network learns)."""
        m, _ = self._components(x_t, abar)
        return (self.responsibilities(x_t, abar)[..., None] * m).sum(1)

    def posterior_sample(self, x_t: torch.Tensor, abar: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """x_0 ~ p(x_0 | x_t) exactly: k ~ w(x_t), then N(m_k, v_k I)."""
        m, v = self._components(x_t, abar)
        k = torch.multinomial(self.responsibilities(x_t, abar), 1, generator=generator)[:, 0]
        z = torch.randn(x_t.shape, dtype=x_t.dtype, generator=generator)
        return m[torch.arange(len(k)), k] + v[k, None] ** 0.5 * z

    def _reverse_components(self, x_t: torch.Tensor, abar_t: float, abar_prev: float):
        """Per-component mean M_k(x_t), (n, K, D), and variance V_k, (K,), of p(x_{t'} | x_t, k), by Bayes.

        x_{t'} | k ~ N(sqrt(abar_{t'}) mu_k, S_k I) with S_k = abar_{t'} s_k^2 + 1 - abar_{t'}, and the forward step
        x_t | x_{t'} ~ N(sqrt(r) x_{t'}, (1 - r) I) with r = abar_t / abar_{t'}; with abar_{t'} = 1 this is `_components`.
        """
        if not 0.0 < abar_t <= abar_prev <= 1.0:
            raise ValueError(
                f"a reverse step goes from t to an earlier t' (0 < abar_t <= abar_t' <= 1), got abar_t={abar_t!r}, "
                f"abar_t'={abar_prev!r}; swap the two if they are reversed"
            )
        r = abar_t / abar_prev  # alpha'_t = abar_t / abar_{t'} of the respaced step
        S = abar_prev * self.stds**2 + (1 - abar_prev)  # S_k
        if r == 1.0:  # an empty step: x_{t'} = x_t
            return x_t[:, None, :].expand(-1, len(S), -1), torch.zeros_like(S)
        v = S * (1 - r) / (r * S + 1 - r)  # V_k = 1 / (1 / S_k + r / (1 - r))
        m = v[None, :, None] * (abar_prev**0.5 * self.means[None] / S[None, :, None] + r**0.5 * x_t[:, None, :] / (1 - r))
        return m, v

    def reverse_step_sample(
        self, x_t: torch.Tensor, abar_t: float, abar_prev: float, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """x_{t'} ~ p(x_{t'} | x_t) exactly, the left side of Eq. 1, by Bayes per component (no x_0 drawn)."""
        m, v = self._reverse_components(x_t, abar_t, abar_prev)
        k = torch.multinomial(self.responsibilities(x_t, abar_t), 1, generator=generator)[:, 0]  # p(k | x_t)
        z = torch.randn(x_t.shape, dtype=x_t.dtype, generator=generator)
        return m[torch.arange(len(k)), k] + v[k, None] ** 0.5 * z

    def reverse_step_moments(self, x_t: torch.Tensor, abar_t: float, abar_prev: float):
        """Mean (n, D) and covariance (n, D, D) of p(x_{t'} | x_t), the left side of Eq. 1, in closed form."""
        m, v = self._reverse_components(x_t, abar_t, abar_prev)
        w = self.responsibilities(x_t, abar_t)  # (n, K)
        mean = (w[..., None] * m).sum(1)
        second = (w[..., None, None] * (m[..., :, None] * m[..., None, :])).sum(1)  # sum_k w_k M_k M_k^T
        eye = torch.eye(self.dim, dtype=x_t.dtype)
        cov = second + (w * v[None]).sum(1)[:, None, None] * eye - mean[:, :, None] * mean[:, None, :]
        return mean, cov

    def eps(self, x_t: torch.Tensor, abar: float) -> torch.Tensor:
        """The exact epsilon-prediction: eps* = (x_t - sqrt(abar) E[x_0 | x_t]) / sqrt(1 - abar)."""
        return (x_t - abar**0.5 * self.posterior_mean(x_t, abar)) / (1 - abar) ** 0.5

    def network(self, schedule: Schedule):
        """The exact epsilon network fn(x, t, cond) in the signature `nestedlib.sampling.Network` wraps."""

        def fn(x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
            return self.eps(x, schedule.abar(int(t[0])))

        return fn


class ExactPosterior:
    """x̂_0 ~ p(x_0 | x_t) drawn exactly from the toy's closed form; one draw counts as one NFE."""

    def __init__(self, mixture: GaussianMixture, schedule: Schedule):
        self.mixture, self.schedule = mixture, schedule

    def nfe(self, t: int, index: int = 0) -> int:
        return 1

    def __call__(self, x: torch.Tensor, t: int, t_next: int, ctx: Context) -> Estimate:
        count_nfe()
        return Estimate(self.mixture.posterior_sample(x, self.schedule.abar(t), ctx.generator))


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Energy distance 2 E|A - B| - E|A - A'| - E|B - B'| (Székely & Rizzo), zero iff the laws are equal."""
    a, b = a.double(), b.double()
    ab = torch.cdist(a, b).mean()
    aa = torch.cdist(a, a).sum() / (len(a) * (len(a) - 1))  # unbiased: the zero diagonal left out
    bb = torch.cdist(b, b).sum() / (len(b) * (len(b) - 1))
    return float(2 * ab - aa - bb)

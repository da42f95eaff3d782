"""Transitions q(x_{t'} | x̂_0, x_t): the closed-form step of Eq. 1 once a clean estimate x̂_0 is drawn.

Eq. 1 of the paper: p(x_{t'} | x_t) = ∫ q(x_{t'} | x_0, x_t) p(x_0 | x_t) dx_0, with t' < t the next grid point.
DDPM and DDIM are two choices of q. Grids may skip timesteps, so every formula is written with
abar_t and abar_{t'} only (the "respaced" betas of Improved DDPM and DiT):  beta'_t = 1 - abar_t / abar_{t'}.
Stepping to the clean end (t' = -1, abar = 1) returns x̂_0 itself: no noise at the last step. DDIM may instead end
at abar = `final_alpha_cumprod` < 1, as diffusers' `set_alpha_to_one=False` and the authors' Stable Diffusion code do.
"""
from __future__ import annotations

import torch

from .schedules import CLEAN, Schedule


def randn(x: torch.Tensor, generator) -> torch.Tensor:
    """z ~ N(0, I) shaped like x, drawn from `generator` (never the global RNG when one is given), or from one
    generator per sample (a list, see `sampling.sample_generators`): each row then depends on its own stream only.
    A stream set that draws ahead (`sweep.PrefetchedStreams`, a list with a `draw` method) serves the same rows."""
    if hasattr(generator, "draw"):  # the same per-sample rows, drawn ahead in a background thread
        return generator.draw(x)
    if isinstance(generator, (list, tuple)):
        if len(generator) != x.shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {x.shape[0]}; give one per sample")
        rows = [torch.randn(x.shape[1:], generator=g, dtype=x.dtype, device=g.device) for g in generator]
        return torch.stack(rows).to(x.device)  # one copy to x's device (CPU streams feeding a GPU run)
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)


def ddpm_posterior_coefficients(abar_t, abar_prev):
    """DDPM eq. 7: q(x_{t'} | x_0, x_t) = N(c0 x_0 + ct x_t, beta~ I); returns (c0, ct, beta~) (floats or tensors)."""
    beta = 1.0 - abar_t / abar_prev  # beta'_t = 1 - alpha'_t, the step's own beta
    c0 = abar_prev**0.5 * beta / (1.0 - abar_t)  # sqrt(abar_{t'}) beta'_t / (1 - abar_t)
    ct = (1.0 - beta) ** 0.5 * (1.0 - abar_prev) / (1.0 - abar_t)  # sqrt(alpha'_t) (1 - abar_{t'}) / (1 - abar_t)
    var = (1.0 - abar_prev) / (1.0 - abar_t) * beta  # beta~_t = (1 - abar_{t'}) / (1 - abar_t) beta'_t
    var = var.clamp(min=1e-20) if torch.is_tensor(var) else max(var, 1e-20)  # clamped like diffusers
    return c0, ct, var


def learned_range_log_variance(v, log_beta, log_beta_tilde):
    """Improved DDPM eq. 15 (DiT's learned range): log sigma^2 = frac log beta + (1 - frac) log beta~, frac = (v + 1) / 2.

    v is the network's raw variance output, taken as it is (no clamp to [-1, 1]), as DiT and Improved DDPM do.
    """
    frac = (v + 1.0) / 2.0
    return frac * log_beta + (1.0 - frac) * log_beta_tilde


def ddpm_step(x_t: torch.Tensor, x0: torch.Tensor, abar_t: float, abar_prev: float, noise: torch.Tensor,
              variance=None):
    """A draw from the DDPM posterior q(x_{t'} | x̂_0, x_t) (Ho et al. 2020, eqs. 6-7), or with a learned variance."""
    c0, ct, var = ddpm_posterior_coefficients(abar_t, abar_prev)
    var = var if variance is None else variance  # beta~_t, or sigma_theta^2 of a learned-range step (DiT)
    return c0 * x0 + ct * x_t + var**0.5 * noise  # mu~_t(x_t, x̂_0) + sigma z


def ddim_sigma(abar_t: float, abar_prev: float, eta: float) -> float:
    """DDIM eq. 16: sigma_t(eta) = eta sqrt((1 - abar_{t'}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t'})."""
    return eta * ((1.0 - abar_prev) / (1.0 - abar_t)) ** 0.5 * (1.0 - abar_t / abar_prev) ** 0.5


def ddim_step(x_t, x0, abar_t: float, abar_prev: float, eta: float, noise: torch.Tensor | None):
    """A draw from DDIM's q_sigma(x_{t'} | x̂_0, x_t) (Song et al. 2021, eq. 12), eta in [0, 1]."""
    sigma = ddim_sigma(abar_t, abar_prev, eta)
    eps = (x_t - abar_t**0.5 * x0) / (1.0 - abar_t) ** 0.5  # epŝ = (x_t - sqrt(abar_t) x̂_0) / sqrt(1 - abar_t)
    direction = max(1.0 - abar_prev - sigma**2, 0.0) ** 0.5 * eps  # sqrt(1 - abar_{t'} - sigma^2) epŝ
    x_prev = abar_prev**0.5 * x0 + direction  # sqrt(abar_{t'}) x̂_0 + direction pointing to x_t
    return x_prev if sigma == 0.0 else x_prev + sigma * noise  # + sigma_t z


class DDPM:
    """The DDPM posterior as the transition of Algorithm 1 (Ho et al. 2020, eqs. 6-7)."""

    name = "ddpm"

    def __init__(self, schedule: Schedule):
        self.schedule = schedule

    def __call__(self, x_t, x0, t: int, t_next: int, generator=None, variance=None) -> torch.Tensor:
        if t_next == CLEAN:
            return x0  # q(x_{-1} | x̂_0, x_t) = delta(x̂_0): the last step adds no noise
        noise = randn(x_t, generator)
        return ddpm_step(x_t, x0, self.schedule.abar(t), self.schedule.abar(t_next), noise, variance)

    def __repr__(self) -> str:
        return "DDPM()"


class DDIM:
    """DDIM with stochasticity eta as the transition of Algorithm 1 (Song et al. 2021, eq. 12).

    final_alpha_cumprod is abar at the clean end (diffusers' name): 1 (the default, `set_alpha_to_one=True`) ends
    exactly at x̂_0 and draws nothing; schedule.abar(0) (`set_alpha_to_one=False`, the authors' Stable Diffusion
    inner process) makes the last step an ordinary eq. 12 step to t = 0: at eta = 0 with SD's betas it returns
    0.99957 x̂_0 + 0.0292 epŝ, and at eta > 0 it draws noise once more.
    """

    name = "ddim"

    def __init__(self, schedule: Schedule, eta: float = 0.0, final_alpha_cumprod: float = 1.0):
        if not isinstance(eta, (int, float)) or not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"DDIM's eta must lie in [0, 1] (0: deterministic DDIM, 1: DDPM), got {eta!r}")
        if not isinstance(final_alpha_cumprod, (int, float)) or not 0.0 < float(final_alpha_cumprod) <= 1.0:
            raise ValueError(f"final_alpha_cumprod must lie in (0, 1] (1: end exactly at x̂_0; schedule.abar(0): "
                             f"end at t = 0 as diffusers' set_alpha_to_one=False), got {final_alpha_cumprod!r}")
        self.schedule, self.eta, self.final_alpha_cumprod = schedule, float(eta), float(final_alpha_cumprod)

    def __call__(self, x_t, x0, t: int, t_next: int, generator=None, variance=None) -> torch.Tensor:
        if variance is not None:
            raise ValueError("a learned variance belongs to the DDPM transition (DiT's ancestral step), not to DDIM")
        abar_t = self.schedule.abar(t)
        abar_next = self.final_alpha_cumprod if t_next == CLEAN else self.schedule.abar(t_next)
        if abar_next == 1.0:
            return x0  # abar_{-1} = 1: x_{-1} = x̂_0 exactly, no draw
        if abar_next < abar_t:
            raise ValueError(f"the last step from t={t} (abar={abar_t:.6g}) would end noisier, at "
                             f"final_alpha_cumprod={abar_next:.6g}; end the grid higher (e.g. t_end=1) or use "
                             "final_alpha_cumprod=1")
        noise = randn(x_t, generator) if self.eta > 0 else None  # diffusers draws noise only when eta > 0
        return ddim_step(x_t, x0, abar_t, abar_next, self.eta, noise)

    def __repr__(self) -> str:
        end = "" if self.final_alpha_cumprod == 1.0 else f", final_alpha_cumprod={self.final_alpha_cumprod:.6g}"
        return f"DDIM(eta={self.eta:g}{end})"

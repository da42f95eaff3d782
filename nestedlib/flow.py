"""Nested Diffusion on a rectified flow: the path x_sigma = (1 - sigma) x_0 + sigma eps of Stable Diffusion 3 and Flux.

A rectified flow (Liu et al. 2023; Lipman et al. 2023; Esser et al. 2024, eq. 3) trains a network v_theta(x_sigma,
sigma) to predict the velocity v = eps - x_0 of the straight path from data (sigma = 0) to noise (sigma = 1). Eq. 1
of the paper needs the same three pieces as on a DDPM path:
- an x0-sampler: the network's mean x̂_0 = x_sigma - sigma v_theta (`FlowMean`), or a whole inner run;
- a transition q(x_s | x̂_0, x_t), s < t (`FlowDDIM`): with epŝ = (x_t - (1 - sigma_t) x̂_0) / sigma_t,
      x_s = (1 - sigma_s) x̂_0 + sqrt(sigma_s^2 - c^2) epŝ + c z,  z ~ N(0, I),
  which keeps the marginals x_s | x_0 ~ N((1 - sigma_s) x_0, sigma_s^2 I) for every c in [0, sigma_s]. c = 0 is
  the deterministic step, and with x̂_0 = x_t - sigma_t v it is exactly Euler's step x_s = x_t + (sigma_s - sigma_t) v
  (FlowMatchEulerDiscreteScheduler); c = eta times the DDPM posterior's std is DDIM's eta (`flow_noise_std`), and
  c = sigma_s (fresh noise) is diffusers' `stochastic_sampling`;
- a grid of sigmas (`FlowSchedule`), shifted as SD3 (a fixed shift) and Flux (a resolution-dependent mu) shift it.

Why c can be taken from DDIM: the flow path is a scaled DDPM path, x_sigma = k_sigma (sqrt(abar) x_0 + sqrt(1 - abar)
eps) with k_sigma = sqrt((1 - sigma)^2 + sigma^2) and abar = (1 - sigma)^2 / k_sigma^2 (`flow_abar`). Scaling does not
change epŝ, so DDIM's family of steps carries over with its std multiplied by k_s. The same identity gives the 2-D
toy's exact posterior on the flow path (`FlowExactPosterior`) from the DDPM one. Algorithm 2 is then the same
`nested(inner, outer)`: the schedule builds its outer process (`FlowSchedule.outer_process`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .sampling import Context, Diffusion, Estimate, count_nfe
from .schedules import CLEAN, positive_int, step_count
from .transitions import ddim_sigma, randn

SPACINGS = ("scheduler", "flux")  # FlowMatchEulerDiscreteScheduler.set_timesteps(n); FluxPipeline's own sigmas
SHIFT_TYPES = ("exponential", "linear")


def flow_abar(sigma: float) -> tuple[float, float]:
    """The DDPM path a flow path scales: abar = (1 - sigma)^2 / k^2 and k = sqrt((1 - sigma)^2 + sigma^2)."""
    k2 = (1.0 - sigma) ** 2 + sigma**2
    return (1.0 - sigma) ** 2 / k2, k2**0.5


def flow_noise_std(sigma_t: float, sigma_s: float, eta: float) -> float:
    """c(eta) = k_s sigma_DDIM(eta) (DDIM eq. 16 on the scaled path): eta = 1 is the DDPM posterior's std."""
    (abar_t, _), (abar_s, k_s) = flow_abar(sigma_t), flow_abar(sigma_s)
    return k_s * ddim_sigma(abar_t, abar_s, eta)


def flow_step(x_t: torch.Tensor, x0: torch.Tensor, sigma_t: float, sigma_s: float, c: float = 0.0,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """x_s = (1 - sigma_s) x̂_0 + sqrt(sigma_s^2 - c^2) epŝ + c z, epŝ = (x_t - (1 - sigma_t) x̂_0) / sigma_t."""
    eps = (x_t - (1.0 - sigma_t) * x0) / sigma_t  # epŝ: the noise that x_t and x̂_0 imply
    x_s = (1.0 - sigma_s) * x0 + max(sigma_s**2 - c**2, 0.0) ** 0.5 * eps  # back on the path at sigma_s
    return x_s if c == 0.0 else x_s + c * noise  # + c z


def predict_x0_flow(x_t: torch.Tensor, v: torch.Tensor, sigma: float) -> torch.Tensor:
    """x̂_0 = x_sigma - sigma v_theta (the rectified flow's v = eps - x_0, Esser et al. 2024, eq. 3)."""
    return x_t - sigma * v


class FlowDDIM:
    """q(x_s | x̂_0, x_t) on a flow path (`flow_step`): c = eta k_s sigma_DDIM, or c = sigma_s with fresh=True.

    eta = 0 (the default) is the deterministic step, Euler's step of FlowMatchEulerDiscreteScheduler; fresh=True
    forgets x_t's noise and draws it anew, the scheduler's `stochastic_sampling=True`. Stepping to the clean end
    (sigma = 0) returns x̂_0 and draws nothing.
    """

    name = "flow-ddim"

    def __init__(self, schedule: "FlowSchedule", eta: float = 0.0, fresh: bool = False):
        if not isinstance(eta, (int, float)) or not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"eta must lie in [0, 1] (0: deterministic Euler, 1: the DDPM posterior), got {eta!r}")
        if fresh and eta:
            raise ValueError("fresh=True draws all of x_s's noise anew (c = sigma_s); leave eta at 0 with it")
        self.schedule, self.eta, self.fresh = schedule, float(eta), bool(fresh)

    def __call__(self, x_t, x0, t: float, t_next: float, generator=None, variance=None) -> torch.Tensor:
        if variance is not None:
            raise ValueError("a flow step takes no learned variance; use FlowMean as its x0-sampler")
        if t_next == CLEAN:
            return x0  # sigma = 0: x_0 = x̂_0
        c = t_next if self.fresh else flow_noise_std(t, t_next, self.eta)
        return flow_step(x_t, x0, t, t_next, c, randn(x_t, generator) if c > 0 else None)

    def __repr__(self) -> str:
        return "FlowDDIM(fresh)" if self.fresh else f"FlowDDIM(eta={self.eta:g})"


class FlowMean:
    """p(x_0 | x_sigma) ≈ delta(x̂_0) at the network's mean (`predict_x0_flow`): Euler's x0-sampler."""

    def __init__(self, network: Callable, schedule: "FlowSchedule"):
        self.network, self.schedule = network, schedule

    def nfe(self, t: float, index: int = 0) -> int:
        return 1

    def __call__(self, x: torch.Tensor, t: float, t_next: float, ctx: Context) -> Estimate:
        return Estimate(predict_x0_flow(x, self.network(x, t), t))


# --- Grids of sigmas. ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowSchedule:
    """A flow path's sigma grids, as FlowMatchEulerDiscreteScheduler builds them (float32 sigmas, then sigma = 0).

    An n-step grid takes n unshifted times u from 1 down (`base`) and shifts them: sigma = shift u / (1 + (shift - 1) u)
    (SD3's fixed shift), or with a resolution-dependent mu (Flux's `use_dynamic_shifting`) sigma = e^mu / (e^mu +
    1/u - 1) ("exponential") or mu / (mu + 1/u - 1) ("linear"). spacing="scheduler" is the scheduler's own
    `set_timesteps(n)` (u from 1 to the training grid's last sigma), "flux" is FluxPipeline's u = linspace(1, 1/n, n).
    A process started at sigma_start < 1 (an inner process) scales the same u by u_start, the unshifted time of
    sigma_start: it keeps the pipeline's spacing, and from sigma = 1 it is the pipeline's own grid.
    """

    shift: float = 1.0
    mu: float | None = None  # dynamic shifting (Flux): given per image size, `calculate_shift`
    time_shift_type: str = "exponential"
    spacing: str = "scheduler"
    num_train_timesteps: int = 1000

    start = 1.0  # x_T is pure noise: sigma = 1

    def __post_init__(self):
        if self.spacing not in SPACINGS:
            raise ValueError(f"unknown spacing {self.spacing!r}; choose one of {SPACINGS}")
        if self.time_shift_type not in SHIFT_TYPES:
            raise ValueError(f"unknown time_shift_type {self.time_shift_type!r}; choose one of {SHIFT_TYPES}")
        if not self.shift > 0:
            raise ValueError(f"shift must be positive, got {self.shift!r}")

    @classmethod
    def from_diffusers(cls, scheduler, mu: float | None = None, spacing: str = "scheduler") -> "FlowSchedule":
        """The schedule of a FlowMatchEulerDiscreteScheduler (mu: the pipeline's, where it shifts dynamically)."""
        config = scheduler.config
        unsupported = [k for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas",
                                   "shift_terminal") if config.get(k)]
        if unsupported:
            raise ValueError(f"{type(scheduler).__name__} with {', '.join(unsupported)} is not a grid nestedlib "
                             "builds; drive it with inner_from_scheduler(scheduler, ...) or switch the option off")
        if config.get("use_dynamic_shifting") and mu is None:
            raise ValueError("this scheduler shifts its sigmas by the image size (use_dynamic_shifting): pass mu "
                             "(e.g. the pipeline's calculate_shift of the latent sequence length)")
        dynamic = bool(config.get("use_dynamic_shifting"))
        return cls(shift=float(config.get("shift", 1.0)), mu=float(mu) if dynamic else None,
                   time_shift_type=config.get("time_shift_type", "exponential"), spacing=spacing,
                   num_train_timesteps=int(config.num_train_timesteps))

    def shifted(self, u: np.ndarray) -> np.ndarray:
        """sigma(u): shift u / (1 + (shift - 1) u), or Flux's time shift with mu (the scheduler's own arithmetic)."""
        if self.mu is None:
            return self.shift * u / (1 + (self.shift - 1) * u)
        if self.time_shift_type == "exponential":
            return math.exp(self.mu) / (math.exp(self.mu) + (1 / u - 1) ** 1.0)
        return self.mu / (self.mu + (1 / u - 1) ** 1.0)

    def unshifted(self, sigma: float) -> float:
        """u(sigma), the inverse of `shifted`."""
        if sigma >= self.start:
            return 1.0
        if self.mu is None:
            return sigma / (self.shift - (self.shift - 1) * sigma)
        m = math.exp(self.mu) if self.time_shift_type == "exponential" else self.mu
        return 1.0 / (1.0 + m * (1.0 / sigma - 1.0))

    def _train_sigma(self, t: float) -> float:
        """A sigma of the scheduler's training grid at timestep t (its float32 `sigmas` at __init__)."""
        s = torch.tensor([t], dtype=torch.float32) / self.num_train_timesteps
        if self.mu is None:  # the scheduler shifts its training grid only when the shift is fixed
            s = self.shift * s / (1 + (self.shift - 1) * s)
        return s.item()

    def base(self, steps: int) -> np.ndarray:
        """The unshifted times u of an n-step grid from x_T, float64 (`spacing`)."""
        steps = positive_int("the number of steps", steps)
        if self.spacing == "flux":
            return np.linspace(1.0, 1 / steps, steps)
        T = self.num_train_timesteps
        sigma_max, sigma_min = self._train_sigma(T), self._train_sigma(1)
        return np.linspace(sigma_max * T, sigma_min * T, steps) / T

    def grid(self, steps: int, sigma_start: float | None = None) -> list[float]:
        """The sigmas of an n-step process from sigma_start (default 1: the pipeline's grid), float32 values."""
        u = self.base(steps)
        if sigma_start is not None and sigma_start < self.start:
            if not sigma_start > 0:
                raise ValueError(f"a flow process starts at a sigma in (0, 1], got {sigma_start!r}")
            u = self.unshifted(float(sigma_start)) * u
        if self.spacing == "flux":  # FluxPipeline hands its sigmas over as float32, shifted in float32
            u = u.astype(np.float32)
        return torch.from_numpy(np.asarray(self.shifted(u))).to(torch.float32).tolist()

    def timesteps(self, sigmas: Sequence[float]) -> torch.Tensor:
        """The network's timesteps, sigma T in float32, as the scheduler hands them to the pipeline."""
        return torch.tensor(list(sigmas), dtype=torch.float32) * self.num_train_timesteps

    def add_noise(self, x0: torch.Tensor, sigma: float | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The forward path x_sigma = (1 - sigma) x_0 + sigma eps (sigma: one float, or one per sample)."""
        if torch.is_tensor(sigma):
            sigma = sigma.to(x0).view(-1, *(1,) * (x0.dim() - 1))
        return (1.0 - sigma) * x0 + sigma * noise

    def outer_process(self, inner, outer: int, eta: float = 0.0) -> "FlowProcess":
        """Algorithm 2 on the flow path (`sampling.nested` calls it): `outer` FlowDDIM(eta) steps on this grid."""
        return FlowProcess(inner, FlowDDIM(self, eta), outer)


class FlowProcess(Diffusion):
    """Algorithm 1 on a flow path: `Diffusion` whose grid is the schedule's sigmas (`FlowSchedule.grid`)."""

    def grid(self, t_start: float, index: int = 0) -> list[float]:
        return self.schedule.grid(step_count(self.steps, index), t_start)


def euler(network: Callable, schedule: FlowSchedule, steps: int | Sequence[int], *, eta: float = 0.0,
          fresh: bool = False) -> FlowProcess:
    """Algorithm 1 with the network's x̂_0 and FlowDDIM: Euler's method at eta = 0 (FlowMatchEulerDiscreteScheduler)."""
    return FlowProcess(FlowMean(network, schedule), FlowDDIM(schedule, eta, fresh), steps)


# --- The 2-D toy on a flow path. ----------------------------------------------------------------------------------


def toy_velocity(mixture, x_t: torch.Tensor, sigma: float) -> torch.Tensor:
    """The exact velocity E[eps - x_0 | x_sigma] = (x_sigma - E[x_0 | x_sigma]) / sigma of the toy mixture."""
    abar, k = flow_abar(sigma)
    return (x_t - mixture.posterior_mean(x_t / k, abar)) / sigma


def toy_network(mixture) -> Callable:
    """The toy's exact velocity network fn(x, sigma, cond) in the signature `sampling.Network` wraps."""

    def fn(x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        return toy_velocity(mixture, x, float(t[0]))

    return fn


class FlowExactPosterior:
    """x̂_0 ~ p(x_0 | x_sigma) of the toy mixture exactly: its DDPM posterior at x_sigma / k_sigma, abar (`flow_abar`)."""

    def __init__(self, mixture, schedule: FlowSchedule):
        self.mixture, self.schedule = mixture, schedule

    def nfe(self, t: float, index: int = 0) -> int:
        return 1

    def __call__(self, x: torch.Tensor, t: float, t_next: float, ctx: Context) -> Estimate:
        count_nfe()
        abar, k = flow_abar(t)
        return Estimate(self.mixture.posterior_sample(x / k, abar, ctx.generator))

    def sample_noisy(self, n: int, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """x_sigma ~ p(x_sigma), the exact marginal on the flow path."""
        x0 = self.mixture.sample(n, generator)
        return self.schedule.add_noise(x0, sigma, torch.randn(x0.shape, dtype=x0.dtype, generator=generator))

"""Noise schedules and timestep grids.

The forward process is q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (DDPM, Ho et al. 2020, eq. 4),
with abar_t = prod_{s<=t} (1 - beta_s) over the 1000 training timesteps t = 0 .. 999 (diffusers' convention).

A *grid* is the list of timesteps at which a sampler evaluates its x0-sampler, in decreasing order.
After the last grid point the sampler steps to the clean end, written t = -1, where abar = 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

CLEAN = -1  # the clean end of every grid: abar_{-1} = 1 (diffusers' `set_alpha_to_one`)


def positive_int(name: str, value, what: str = "a positive integer") -> int:
    """`value` as an int when it is a whole number >= 1 (a Python or numpy integer, not a bool); else a ValueError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def next_t(grid: Sequence[int], j: int) -> int:
    """t' of step j of a grid: the next grid point, or the clean end (t = -1) after the last one."""
    return grid[j + 1] if j + 1 < len(grid) else CLEAN


@dataclass(frozen=True)
class Schedule:
    """The betas of the forward process and abar_t = prod_{s<=t} (1 - beta_s) (DDPM eq. 4)."""

    betas: torch.Tensor  # beta_t, float32 as in diffusers
    alphas_cumprod: torch.Tensor  # abar_t

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> "Schedule":
        """abar_t = cumprod(1 - beta_t), computed in float32 exactly as diffusers does."""
        betas = betas.to(torch.float32)
        return cls(betas=betas, alphas_cumprod=torch.cumprod(1.0 - betas, dim=0))

    @classmethod
    def linear(cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "Schedule":
        """Linear betas of DDPM (and DiT): beta_t = linspace(beta_start, beta_end)."""
        return cls.from_betas(torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float32))

    @classmethod
    def scaled_linear(
        cls, num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
    ) -> "Schedule":
        """Stable Diffusion's betas: sqrt(beta_t) = linspace(sqrt(beta_start), sqrt(beta_end))."""
        return cls.from_betas(
            torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float32) ** 2
        )

    @classmethod
    def from_diffusers(cls, scheduler) -> "Schedule":
        """The schedule of any diffusers scheduler (reads its `betas`)."""
        return cls.from_betas(scheduler.betas.detach().clone())

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    def abar(self, t: int) -> float:
        """abar_t as a Python float, with abar_{-1} = 1 at the clean end."""
        if t == CLEAN:
            return 1.0
        if not 0 <= t < self.num_timesteps:
            raise ValueError(f"timestep {t} is outside [0, {self.num_timesteps - 1}] (or -1 for the clean end)")
        return float(self.alphas_cumprod[t])

    def add_noise(self, x0: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward process, DDPM eq. 4: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (t: one int, or one per sample)."""
        if torch.is_tensor(t):  # a timestep per sample (training): abar_t shaped (N, 1, ...) to broadcast over x_0
            a = self.alphas_cumprod.to(x0.device)[t].view(-1, *(1,) * (x0.dim() - 1))
        else:
            a = self.abar(t)
        return a**0.5 * x0 + (1 - a) ** 0.5 * noise


SPACINGS = ("linspace", "space_timesteps")  # the two grid conventions of the paper's two codebases


def _space_timesteps(t_start: int, t_end: int, points: int) -> list[int]:
    """improved-diffusion's `space_timesteps` (the authors' DiT code): a float stride added up from t_end, each
    running sum rounded with Python's round (ties to even); returned in decreasing order."""
    stride = (t_start - t_end) / (points - 1)
    taken, cur = [], 0.0
    for _ in range(points):
        taken.append(t_end + round(cur))
        cur += stride  # a running float sum, not i * stride: it can fall just below a tie (499.4999... -> 499)
    return taken[::-1]


def timesteps(t_start: int, steps: int, *, t_end: int = 0, drop_end: bool = False,
              spacing: str = "linspace") -> list[int]:
    """A grid of `steps` timesteps from t_start down to t_end, uniformly spaced and rounded.

    spacing="linspace": round(linspace(t_end, t_start, points)) (numpy rounding), as diffusers and the authors'
    Stable Diffusion script; spacing="space_timesteps": improved-diffusion's running-sum rounding, as DiT and the
    authors' DiT script. They differ by 1 at exact ties (t = 999, 21 steps: 500 against 499).
    - DiT's respacing (and the paper's inner process on ImageNet): t_end = 0, both ends included,
      e.g. timesteps(999, 5) == [999, 749, 500, 250, 0].
    - The authors' Stable Diffusion inner process: t_end = 1, e.g. timesteps(999, 4, t_end=1) == [999, 666, 334, 1].
    - The authors' outer processes: `steps + 1` points with the last dropped: over [1, 999] in their SD script,
      over [0, 999] with space_timesteps in their DiT script (`outer_timesteps`).
    """
    positive_int("the number of steps", steps)
    if not isinstance(t_start, (int, np.integer)) or t_start < t_end:
        raise ValueError(f"a grid must start at or above t_end={t_end}, got t_start={t_start!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {SPACINGS}")
    points = int(steps) + int(drop_end)
    available = t_start - t_end + 1
    if points > available:
        most = available - int(drop_end)
        raise ValueError(
            f"cannot take {steps} steps from t={t_start} down to t={t_end}: only {available} distinct timesteps "
            f"lie in [{t_end}, {t_start}]. Use at most {most} steps here (for Nested Diffusion: fewer inner steps, "
            f"or fewer outer steps so that every outer timestep stays high enough)."
        )
    if points == 1:
        grid = [int(t_start)]  # a one-step grid starts where it is (improved-diffusion, the authors' SD code: [t_end])
    elif spacing == "space_timesteps":
        grid = _space_timesteps(int(t_start), int(t_end), points)
    else:
        grid = np.round(np.linspace(t_end, t_start, points)).astype(int)[::-1].tolist()
    return grid[:-1] if drop_end else grid


def step_counts(steps) -> list[int]:
    """A process's step counts: one positive integer, or a non-empty list of them (one per enclosing step)."""
    counts = [steps] if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool) else steps
    if isinstance(counts, (str, bytes)) or not isinstance(counts, Sequence) or not counts:
        raise ValueError(f"steps must be a positive integer or a non-empty list of them, got {steps!r}")
    return [positive_int("steps", k, "a positive integer or a non-empty list of them") for k in counts]


def process_grid(steps: int | Sequence[int], t_start: int, index: int = 0, *, t_end: int = 0,
                 drop_end: bool = False, spacing: str = "linspace") -> list[int]:
    """The grid of a process of `steps` steps (or steps[index], one count per step of an enclosing process) that
    starts at t_start as step `index` of its enclosing process (`timesteps`)."""
    return timesteps(t_start, step_count(steps, index), t_end=t_end, drop_end=drop_end, spacing=spacing)


def step_count(steps: int | Sequence[int], index: int = 0) -> int:
    """The step count of a process run as step `index` of its enclosing process: `steps` itself, or steps[index]."""
    counts = step_counts(steps)
    if len(counts) == 1 and not isinstance(steps, Sequence):
        return counts[0]
    if index < len(counts):
        return counts[index]
    raise ValueError(f"{len(counts)} step counts were given, but the enclosing process has a step "
                     f"{index}; give one count per step of the enclosing process")


OUTER_T_END = {"linspace": 1, "space_timesteps": 0}  # where the authors' outer grids start: SD script 1, DiT script 0


def outer_timesteps(steps: int, num_timesteps: int = 1000, spacing: str = "linspace") -> list[int]:
    """The authors' outer grid: steps + 1 points from T - 1 down to OUTER_T_END[spacing], the last one dropped."""
    return timesteps(num_timesteps - 1, steps, t_end=OUTER_T_END[spacing], drop_end=True, spacing=spacing)


def split_budget(total_nfe: int, outer: int) -> int:
    """Inner steps per outer step when a total NFE budget is shared evenly: |inner| = NFE / |outer|."""
    total_nfe, outer = positive_int("total_nfe", total_nfe), positive_int("outer", outer)
    if total_nfe % outer:
        lo = total_nfe - total_nfe % outer
        raise ValueError(
            f"a budget of {total_nfe} NFEs does not divide into {outer} outer steps; use a multiple of {outer} "
            f"(e.g. {lo} or {lo + outer}), or pass a list of inner steps per outer step that sums to {total_nfe}."
        )
    return total_nfe // outer


ALLOCATIONS = ("uniform", "front", "back", "geometric")


def allocate(total_nfe: int, outer: int, shape: str = "uniform", ratio: float | None = None) -> list[int]:
    """Inner steps per outer step (a non-uniform R_ND split): counts = total_nfe w_j / sum(w) for weights w_j, rounded
    by largest remainders so that they sum to total_nfe exactly, each at least 1.

    "uniform": w_j = 1 (`split_budget`, when it divides); "front": linear from `ratio` (default 3) times the last
    count down to it, so the first outer step gets the most; "back": the same reversed; "geometric": w_j = ratio^j
    (default 2, the doubling schedule of anytime algorithms: each outer step costs twice the one before).
    """
    total_nfe, outer = positive_int("total_nfe", total_nfe), positive_int("outer", outer)
    if outer > total_nfe:
        raise ValueError(f"{outer} outer steps need at least {outer} NFEs (one inner step each), got {total_nfe}")
    if shape not in ALLOCATIONS:
        raise ValueError(f"unknown allocation {shape!r}; choose one of {ALLOCATIONS}")
    r = {"uniform": 1.0, "front": 3.0, "back": 3.0, "geometric": 2.0}[shape] if ratio is None else float(ratio)
    if not r > 0:
        raise ValueError(f"ratio must be positive, got {ratio!r}")
    if shape == "back":
        return allocate(total_nfe, outer, "front", r)[::-1]
    j = np.arange(outer, dtype=np.float64)
    ramp = j / (outer - 1) if outer > 1 else j
    w = {"uniform": np.ones(outer), "front": r + (1.0 - r) * ramp, "geometric": r**j}[shape]
    raw = total_nfe * w / w.sum()
    counts = np.maximum(np.floor(raw).astype(int), 1)
    while counts.sum() > total_nfe:  # steps raised to 1 are paid for by the largest count
        counts[np.argmax(counts)] -= 1
    order = np.argsort(-(raw - np.floor(raw)), kind="stable")  # largest remainders first, ties to the earlier step
    counts[order[: total_nfe - counts.sum()]] += 1
    if np.all(np.diff(w) > 0) or np.all(np.diff(w) < 0):  # rounding must not break the order of the weights
        counts[np.argsort(w, kind="stable")] = np.sort(counts)
    return counts.tolist()

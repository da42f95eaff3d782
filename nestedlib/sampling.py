"""Algorithm 1 (diffusion as repeated x̂_0 draws and transitions) and Algorithm 2 (Nested Diffusion) as anytime samplers.

Three pieces, as in the paper's Eq. 1, p(x_{t'} | x_t) = ∫ q(x_{t'} | x_0, x_t) p(x_0 | x_t) dx_0:
- a *network* eps_theta(x_t, t | c), with classifier-free guidance folded in (`Network`);
- an *x0-sampler* that answers p(x_0 | x_t): the network's mean (`NetworkMean`), a Gaussian with DiT's learned
  variance (`LearnedVariance`), an exact posterior (the 2-D toy), or a whole reverse diffusion (`Diffusion`,
  `SchedulerSampler`);
- a *transition* q(x_{t'} | x̂_0, x_t) (`nestedlib.transitions`).

`Diffusion` is Algorithm 1. It is also an x0-sampler: run from x_t down to the clean end, it returns a sample of
p(x_0 | x_t). Algorithm 2 is therefore `Diffusion(x0_sampler=Diffusion(...), ...)`: no second loop, and any
depth of nesting works the same way.

Every x0-sampler signs the same contract, `sampler(x, t, t_next, ctx) -> x̂_0` and `sampler.nfe(t, index) -> int`.
"""
from __future__ import annotations

import copy
import inspect
import math
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Sequence

import torch

from .schedules import CLEAN, Schedule, timesteps
from .transitions import DDIM, DDPM, ddpm_posterior_coefficients, learned_range_log_variance, randn

# --------------------------------------------------------------------------------------------------------------
# Counting network function evaluations (NFEs) where they happen: at the network.
# --------------------------------------------------------------------------------------------------------------


class BudgetExhausted(RuntimeError):
    """Raised by the meter when one more network evaluation would exceed the run's NFE budget."""


class StopSampling(Exception):
    """Raise it from a callback (e.g. a Stop button) to end a run the way Ctrl-C does: the last outer x̂_0 is kept."""


class Meter:
    """The NFE counter of one run: every network evaluation ticks it once."""

    def __init__(self, budget: int | None = None):
        self.nfe, self.budget = 0, budget

    def tick(self) -> None:
        if self.budget is not None and self.nfe + 1 > self.budget:
            raise BudgetExhausted(f"the NFE budget of {self.budget} is spent")
        self.nfe += 1


_METER: ContextVar[Meter | None] = ContextVar("nestedlib_meter", default=None)


def count_nfe() -> None:
    """Count one network function evaluation in the running sampler (a no-op outside `run`)."""
    meter = _METER.get()
    if meter is not None:
        meter.tick()


class Network:
    """eps_theta(x_t, t | c) with classifier-free guidance (Ho & Salimans 2022, eq. 6); one call is one NFE.

    `fn(x, t, cond)` returns epsilon, shaped like x, or DiT-style epsilon and variance channels (2C channels).
    With guidance, the conditional and unconditional branches run as one batch (one NFE, as DiT counts it);
    guidance applies to the epsilon channels and the variance channels come from the conditional branch.
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
        *,
        cond: Any = None,
        null_cond: Any = None,
        guidance_scale: float = 1.0,
    ):
        if guidance_scale != 1.0 and null_cond is None:
            raise ValueError(
                f"guidance_scale={guidance_scale} needs a null condition (null_cond) for the unconditional branch; "
                "pass one, or use guidance_scale=1.0"
            )
        if (cond is None) != (null_cond is None) and null_cond is not None:
            raise ValueError("null_cond was given without cond; pass the condition too")
        self.fn, self.cond, self.null_cond, self.guidance_scale = fn, cond, null_cond, float(guidance_scale)
        self.nfe = 0  # evaluations over this object's life; a run reads its own Meter

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0

    def _check_batch(self, x: torch.Tensor) -> None:
        for name, c in (("cond", self.cond), ("null_cond", self.null_cond)):
            if torch.is_tensor(c) and c.shape[0] != x.shape[0]:
                raise ValueError(
                    f"{name} has batch size {c.shape[0]} but x has {x.shape[0]}; give one condition per sample"
                )

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        self._check_batch(x)
        count_nfe()
        self.nfe += 1
        tt = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        if not self.guided:
            out = self.fn(x, tt, self.cond)
        else:
            both = self.fn(torch.cat([x, x]), torch.cat([tt, tt]), _cat(self.cond, self.null_cond))
            out_c, out_u = both.chunk(2)
            c = x.shape[1]
            eps = out_u[:, :c] + self.guidance_scale * (out_c[:, :c] - out_u[:, :c])  # eps_u + s (eps_c - eps_u)
            out = torch.cat([eps, out_c[:, c:]], dim=1)  # variance channels: the conditional branch's
        if out.shape[0] != x.shape[0] or out.shape[2:] != x.shape[2:] or out.shape[1] not in (x.shape[1], 2 * x.shape[1]):
            raise ValueError(
                f"the network returned shape {tuple(out.shape)} for input {tuple(x.shape)}; an epsilon network "
                "must return x's shape, or twice its channels when it also predicts a variance"
            )
        return out


def _cat(a: Any, b: Any) -> Any:
    """Concatenate two conditions along the batch (tensors, or dicts of tensors such as text embeddings)."""
    if torch.is_tensor(a):
        return torch.cat([a, b])
    if isinstance(a, dict):
        return {k: _cat(a[k], b[k]) for k in a}
    raise TypeError(f"cannot batch a condition of type {type(a).__name__}; use tensors or dicts of tensors")


# --------------------------------------------------------------------------------------------------------------
# Events: what an anytime sampler reports after every step, at every depth.
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One step of one process: x̂_0 drawn at t, the new state x_{t'}, and the NFEs spent so far in the run."""

    depth: int  # 0: the outermost process, 1: its inner process, ...
    path: tuple[int, ...]  # step index at every depth, e.g. (outer step, inner step)
    t: int
    t_next: int
    x0: torch.Tensor
    x: torch.Tensor
    nfe: int


@dataclass(frozen=True)
class Context:
    """What a step needs from the run: the generator, the event callback, and where in the nesting it is."""

    generator: torch.Generator | None = None
    callback: Callable[[Event], None] | None = None
    meter: Meter = field(default_factory=Meter)
    depth: int = 0
    path: tuple[int, ...] = ()

    def child(self, step: int) -> "Context":
        return replace(self, depth=self.depth + 1, path=self.path + (step,))

    def report(self, event: Event) -> None:
        if self.callback is not None:
            self.callback(event)


# --------------------------------------------------------------------------------------------------------------
# x0-samplers: answers to p(x_0 | x_t).
# --------------------------------------------------------------------------------------------------------------


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, abar_t: float) -> torch.Tensor:
    """DDPM eq. 15 (Tweedie): x̂_0 = (x_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t)."""
    return (x_t - (1.0 - abar_t) ** 0.5 * eps) / abar_t**0.5


class NetworkMean:
    """p(x_0 | x_t) ≈ delta(x̂_0) at the network's estimate of E[x_0 | x_t]: DDPM and DDIM's x0-sampler."""

    def __init__(self, network: Callable, schedule: Schedule, clip: float | None = None):
        self.network, self.schedule, self.clip = network, schedule, clip

    def nfe(self, t: int, index: int = 0) -> int:
        return 1

    def mean(self, x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.network(x, t)
        x0 = predict_x0(x, out[:, : x.shape[1]], self.schedule.abar(t))
        if self.clip is not None:
            x0 = x0.clamp(-self.clip, self.clip)
        return x0, out

    def __call__(self, x: torch.Tensor, t: int, t_next: int, ctx: Context) -> torch.Tensor:
        return self.mean(x, t)[0]


class LearnedVariance(NetworkMean):
    """x̂_0 ~ N(mean, s^2 I) with s^2 = (sigma_theta^2 - beta~) / c0^2, so that the DDPM transition reproduces DiT's
    learned-range step sigma_theta^2 = exp(v log beta + (1 - v) log beta~) (Nichol & Dhariwal 2021, eq. 15).

    Pair it with the DDPM transition: q adds c0 x̂_0 + beta~ noise, so x_{t'} has variance c0^2 s^2 + beta~ = sigma_theta^2.
    """

    def __call__(self, x: torch.Tensor, t: int, t_next: int, ctx: Context) -> torch.Tensor:
        x0, out = self.mean(x, t)
        if out.shape[1] != 2 * x.shape[1]:
            raise ValueError(
                "LearnedVariance needs a network that also predicts the variance (2C output channels, like DiT's "
                "learn_sigma=True); for an epsilon-only network use NetworkMean"
            )
        if t_next == CLEAN:
            return x0  # the last step adds no noise
        abar_t, abar_prev = self.schedule.abar(t), self.schedule.abar(t_next)
        c0, _, var_tilde = ddpm_posterior_coefficients(abar_t, abar_prev)  # q's weight on x̂_0 and beta~
        beta = 1.0 - abar_t / abar_prev  # the step's beta (respaced)
        var = torch.exp(learned_range_log_variance(out[:, x.shape[1] :], math.log(beta), math.log(var_tilde)))
        s = ((var - var_tilde).clamp(min=0.0) / c0**2).sqrt()  # sigma_theta^2 = c0^2 s^2 + beta~
        return x0 + s * randn(x, ctx.generator)


class Diffusion:
    """Algorithm 1: for t in the grid, draw x̂_0 ~ p(x_0 | x_t), then x_{t'} ~ q(x_{t'} | x̂_0, x_t).

    Called as an x0-sampler at time t, it runs from x_t down to the clean end and returns that sample of
    p(x_0 | x_t): this is Algorithm 2's inner process. `steps` is one count, or one count per step of the
    enclosing process (the paper's searched allocations).
    """

    def __init__(
        self,
        x0_sampler: Callable,
        transition: Callable,
        steps: int | Sequence[int],
        *,
        t_end: int = 0,
        drop_end: bool = False,
    ):
        counts = [steps] if isinstance(steps, int) else list(steps)
        if not counts or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in counts):
            raise ValueError(f"steps must be a positive integer or a non-empty list of them, got {steps!r}")
        self.x0_sampler, self.transition, self.steps = x0_sampler, transition, steps
        self.t_end, self.drop_end = t_end, drop_end

    def grid(self, t_start: int, index: int = 0) -> list[int]:
        """The timesteps of this process when it starts at t_start as step `index` of an enclosing process."""
        if isinstance(self.steps, int):
            k = self.steps
        elif index < len(self.steps):
            k = self.steps[index]
        else:
            raise ValueError(
                f"{len(self.steps)} step counts were given, but the enclosing process has a step {index}; give "
                "one count per step of the enclosing process"
            )
        return timesteps(t_start, k, t_end=self.t_end, drop_end=self.drop_end)

    def nfe(self, t_start: int, index: int = 0) -> int:
        """NFEs of one run from t_start: the sum over the grid of the x0-sampler's NFEs (|outer| x |inner|)."""
        return sum(self.x0_sampler.nfe(t, j) for j, t in enumerate(self.grid(t_start, index)))

    def iterate(self, x: torch.Tensor, t_start: int, ctx: Context, index: int = 0) -> Iterator[Event]:
        """The loop of Algorithm 1, one `Event` per step, each reported to ctx's callback."""
        grid = self.grid(t_start, index)
        for j, t in enumerate(grid):
            t_next = grid[j + 1] if j + 1 < len(grid) else CLEAN
            x0 = self.x0_sampler(x, t, t_next, ctx.child(j))  # Alg. 1: x̂_0 ~ p(x_0 | x_t)
            x = self.transition(x, x0, t, t_next, ctx.generator)  # Alg. 1: x_{t'} ~ q(x_{t'} | x̂_0, x_t)
            event = Event(ctx.depth, ctx.path + (j,), t, t_next, x0, x, ctx.meter.nfe)
            ctx.report(event)
            yield event

    def __call__(self, x: torch.Tensor, t: int, t_next: int, ctx: Context) -> torch.Tensor:
        """As an x0-sampler (Algorithm 2, inner process): a full reverse run from x_t at t; returns its x_0."""
        for event in self.iterate(x, t, ctx, index=ctx.path[-1] if ctx.path else 0):
            pass
        return event.x  # the clean end: the inner process's generated x_0

    def __repr__(self) -> str:
        return f"Diffusion(x0_sampler={self.x0_sampler!r}, transition={self.transition!r}, steps={self.steps!r})"


class SchedulerSampler:
    """p(x_0 | x_t) sampled by a diffusers scheduler run from x_t at t down to the clean end (e.g. DPM-Solver++).

    Works with every scheduler whose `set_timesteps` accepts custom `timesteps` (DDPMScheduler,
    DPMSolverMultistepScheduler, ...); see `inner_from_scheduler` for DDIMScheduler.
    """

    def __init__(
        self, scheduler, network: Callable, steps: int | Sequence[int], *, t_end: int = 0, drop_end: bool = False
    ):
        if "timesteps" not in inspect.signature(scheduler.set_timesteps).parameters:
            raise ValueError(
                f"{type(scheduler).__name__} cannot start at an arbitrary timestep (its set_timesteps takes no "
                "custom `timesteps`); use nestedlib.sampling.inner_from_scheduler, or a transition from nestedlib"
            )
        if scheduler.config.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError("nestedlib's networks predict epsilon; configure the scheduler with prediction_type='epsilon'")
        self.scheduler, self.network = scheduler, network
        self.schedule = Schedule.from_diffusers(scheduler)
        self._grid = Diffusion(None, None, steps, t_end=t_end, drop_end=drop_end)  # the same grid rules and errors

    def nfe(self, t: int, index: int = 0) -> int:
        return len(self._grid.grid(t, index))

    def __call__(self, x: torch.Tensor, t: int, t_next: int, ctx: Context) -> torch.Tensor:
        grid = self._grid.grid(t, ctx.path[-1] if ctx.path else 0)
        scheduler = copy.deepcopy(self.scheduler)  # a fresh state (multistep history) for every inner run
        scheduler.set_timesteps(timesteps=grid, device=x.device)
        for j, s in enumerate(grid):
            out = self.network(x, s)
            x0 = predict_x0(x, out[:, : x.shape[1]], self.schedule.abar(s))  # the preview of this step
            x = scheduler.step(out, s, x, generator=ctx.generator).prev_sample
            ctx.report(Event(ctx.depth, ctx.path + (j,), s, grid[j + 1] if j + 1 < len(grid) else CLEAN, x0, x, ctx.meter.nfe))
        return x

    def __repr__(self) -> str:
        return f"SchedulerSampler({type(self.scheduler).__name__})"


def inner_from_scheduler(
    scheduler, network: Callable, steps: int | Sequence[int], *, t_end: int = 0, drop_end: bool = False, eta: float = 0.0
):
    """Any diffusers scheduler as an inner process (an x0-sampler for Algorithm 2).

    diffusers' DDIMScheduler steps by a fixed stride from T, so it cannot start at an outer t; its update is
    written out in `nestedlib.transitions.DDIM` (tested step for step against DDIMScheduler) and used instead,
    with the scheduler's own betas.
    """
    from diffusers import DDIMScheduler

    if isinstance(scheduler, DDIMScheduler):
        schedule = Schedule.from_diffusers(scheduler)
        clip = scheduler.config.clip_sample_range if scheduler.config.clip_sample else None
        return Diffusion(NetworkMean(network, schedule, clip), DDIM(schedule, eta), steps, t_end=t_end, drop_end=drop_end)
    return SchedulerSampler(scheduler, network, steps, t_end=t_end, drop_end=drop_end)


# --------------------------------------------------------------------------------------------------------------
# Running a sampler: anytime results, budgets and interruption.
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Preview:
    """An x̂_0 of the outermost process: what a user sees if sampling stops after `nfe` evaluations."""

    step: int
    t: int
    nfe: int
    x0: torch.Tensor
    image: Any = None  # decode(x0), only when `run` was given a decoder


@dataclass
class Result:
    """An anytime run: the last finished x̂_0 of the outer process, every preview, and how the run ended."""

    x0: torch.Tensor
    previews: list[Preview]
    nfe: int  # network evaluations the run spent, counted at the network
    planned_nfe: int  # what the full run would have spent
    stopped: str | None = None  # None (finished), "budget" or "interrupt"
    inner: list[Event] = field(default_factory=list)  # inner events, when run(record_inner=True)

    def at(self, nfe: int) -> Preview:
        """The preview a user stopping at `nfe` evaluations holds: the last one with preview.nfe <= nfe."""
        done = [p for p in self.previews if p.nfe <= nfe]
        if not done:
            raise ValueError(f"no preview is finished within {nfe} NFEs; the first one costs {self.previews[0].nfe}")
        return done[-1]


def run(
    process: Diffusion,
    x_T: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    budget: int | None = None,
    callback: Callable[[Event], None] | None = None,
    decode: Callable[[torch.Tensor], Any] | None = None,
    record_inner: bool = False,
    t_start: int | None = None,
) -> Result:
    """Anytime sampling with Algorithm 1 or 2 from x_T: every outer x̂_0 is a preview with its exact NFE count.

    Stops after the last outer step that fits in `budget` NFEs, or at Ctrl-C (KeyboardInterrupt, or StopSampling
    raised by the callback), and returns the last finished outer x̂_0. Previews are decoded only when `decode` is given.
    """
    if not torch.is_tensor(x_T) or not x_T.is_floating_point():
        raise TypeError("x_T must be a floating-point tensor of noise, shaped (batch, channels, ...)")
    schedule = process.transition.schedule
    t_start = schedule.num_timesteps - 1 if t_start is None else t_start
    costs = [process.x0_sampler.nfe(t, j) for j, t in enumerate(process.grid(t_start))]
    cumulative = [sum(costs[: j + 1]) for j in range(len(costs))]
    n_steps = len(costs)
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ValueError(f"budget must be a positive number of NFEs, got {budget!r}")
        if budget < cumulative[0]:
            raise ValueError(
                f"a budget of {budget} NFEs ends before the first outer x̂_0, which costs {cumulative[0]} NFEs; "
                f"ask for at least {cumulative[0]} (the previews arrive at NFEs {cumulative})"
            )
        n_steps = sum(c <= budget for c in cumulative)
    inner: list[Event] = []

    def report(event: Event) -> None:
        if record_inner and event.depth > 0:
            inner.append(event)
        if callback is not None:
            callback(event)

    meter = Meter(budget)
    ctx = Context(generator=generator, callback=report, meter=meter)
    previews: list[Preview] = []
    stopped = None
    token = _METER.set(meter)
    try:
        for event in process.iterate(x_T, t_start, ctx):
            previews.append(Preview(event.path[0], event.t, event.nfe, event.x0, decode(event.x0) if decode else None))
            if len(previews) == n_steps:
                break
        if n_steps < len(costs):
            stopped = "budget"
    except (KeyboardInterrupt, StopSampling):
        if not previews:
            raise
        stopped = "interrupt"
    finally:
        _METER.reset(token)
    return Result(previews[-1].x0, previews, meter.nfe, cumulative[-1], stopped, inner)


# --------------------------------------------------------------------------------------------------------------
# Builders for the paper's samplers.
# --------------------------------------------------------------------------------------------------------------


def _transition(name: str, schedule: Schedule, eta: float):
    if name == "ddim":
        return DDIM(schedule, eta)
    if name == "ddpm":
        return DDPM(schedule)
    raise ValueError(f"unknown transition {name!r}; choose 'ddim' (with eta in [0, 1]) or 'ddpm'")


def _x0_sampler(network, schedule, transition: str, learned_variance: bool, clip):
    if learned_variance and transition != "ddpm":
        raise ValueError("the learned variance is DDPM's (DiT's ancestral sampler); use transition='ddpm' with it")
    return (LearnedVariance if learned_variance else NetworkMean)(network, schedule, clip)


def vanilla(
    network: Callable,
    schedule: Schedule,
    steps: int,
    *,
    transition: str = "ddim",
    eta: float = 0.0,
    learned_variance: bool = False,
    clip: float | None = None,
    t_end: int = 0,
    drop_end: bool = False,
) -> Diffusion:
    """Algorithm 1 with the network's x̂_0: DDPM (transition='ddpm', optionally DiT's learned variance) or DDIM(eta)."""
    return Diffusion(
        _x0_sampler(network, schedule, transition, learned_variance, clip),
        _transition(transition, schedule, eta),
        steps,
        t_end=t_end,
        drop_end=drop_end,
    )


def nested(
    network: Callable,
    schedule: Schedule,
    outer: int,
    inner: int | Sequence[int],
    *,
    outer_eta: float = 0.0,
    inner_transition: str = "ddpm",
    inner_eta: float = 0.0,
    learned_variance: bool = False,
    inner_scheduler=None,
    clip: float | None = None,
    inner_t_end: int = 0,
    inner_drop_end: bool = False,
) -> Diffusion:
    """Algorithm 2: an outer DDIM(outer_eta) process whose x0-sampler is a whole inner diffusion of `inner` steps.

    Outer grid: the authors' round(linspace(1, T-1, outer + 1)) without its last point; each inner process starts
    exactly at the outer t and runs to the clean end: over round(linspace(inner_t_end, t, inner)) (DiT: 0, the
    authors' SD script: 1), or, with inner_drop_end, over linspace(inner_t_end, t, inner + 1) without its last
    point (diffusers' "linspace" spacing, where the last step jumps to the clean end). The network (and so guidance and any learned variance) is
    used by the inner process only: the outer step needs nothing but x̂_0.
    """
    if not isinstance(inner, int) and len(inner) != outer:
        raise ValueError(f"give one inner step count per outer step: {outer} outer steps, {len(inner)} counts")
    if inner_scheduler is not None:
        inner_process = inner_from_scheduler(
            inner_scheduler, network, inner, t_end=inner_t_end, drop_end=inner_drop_end, eta=inner_eta
        )
    else:
        inner_process = vanilla(
            network, schedule, inner, transition=inner_transition, eta=inner_eta,
            learned_variance=learned_variance, clip=clip, t_end=inner_t_end, drop_end=inner_drop_end,
        )
    return Diffusion(inner_process, DDIM(schedule, outer_eta), outer, t_end=1, drop_end=True)

"""Algorithm 1 (diffusion as repeated x̂_0 draws and transitions) and Algorithm 2 (Nested Diffusion) as anytime samplers.

Three pieces, as in the paper's Eq. 1, p(x_{t'} | x_t) = ∫ q(x_{t'} | x_0, x_t) p(x_0 | x_t) dx_0:
- a *network* eps_theta(x_t, t | c), with classifier-free guidance folded in (`Network`);
- an *x0-sampler* (`X0Sampler`) that answers p(x_0 | x_t): the network's mean (`NetworkMean`), a Gaussian with DiT's
  learned variance (`LearnedVariance`), an exact posterior (the 2-D toy), or a whole reverse diffusion (`Diffusion`);
- a *transition* (`Transition`) q(x_{t'} | x̂_0, x_t) (`nestedlib.transitions`).

`Diffusion` is Algorithm 1. It is also an x0-sampler: run from x_t down to the clean end, it returns a sample of
p(x_0 | x_t). Algorithm 2 is therefore `Diffusion(Diffusion(...), DDIM(schedule), outer)`: no second loop, and any
depth of nesting works the same way. `run` drives a sampler and reports every x̂_0, at every depth, as an `Event`.
The loop body is public, `Diffusion.step(x, j, grid, ctx)`, and so is the NFE counter (`counting_nfe`): anything
that steps by hand (human-guided generation) resumes the same loop with the same count.
"""
from __future__ import annotations

import hashlib
import math
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, NamedTuple, Protocol, Sequence

import torch

from .schedules import CLEAN, OUTER_T_END, SPACINGS, Schedule, next_t, positive_int, process_grid, step_counts
from .transitions import DDIM, DDPM, ddpm_posterior_coefficients, learned_range_log_variance


class StopSampling(Exception):
    """Raise it from a callback (e.g. a Stop button) to end a run the way Ctrl-C does: the last outer x̂_0 is kept."""


# --- Counting network function evaluations (NFEs) where they happen: at the network. One counter per run. -------


class NFECounter:
    """The NFEs counted at the network while this counter is the running one (`counting_nfe`)."""

    def __init__(self, count: int = 0):
        self.count = count

    def __repr__(self) -> str:
        return f"NFECounter({self.count})"


_NFE: ContextVar[NFECounter | None] = ContextVar("nestedlib_nfe", default=None)  # the running counter


@contextmanager
def counting_nfe(counter: NFECounter | None = None) -> Iterator[NFECounter]:
    """Count every network evaluation inside the block in `counter` (a new one by default, or one to resume).

    `run` counts a run this way, `Guided` a whole session over many steps; blocks nest and the innermost counts, so
    a network made of several calls (micro-batches of one NFE) counts them in a counter of its own.
    """
    counter = NFECounter() if counter is None else counter
    token = _NFE.set(counter)
    try:
        yield counter
    finally:
        _NFE.reset(token)


def count_nfe() -> None:
    """Count one network function evaluation in the running counter (a no-op outside `counting_nfe`)."""
    counter = _NFE.get()
    if counter is not None:
        counter.count += 1


def nfe_so_far() -> int:
    """NFEs counted so far by the running counter (0 outside `counting_nfe`)."""
    counter = _NFE.get()
    return 0 if counter is None else counter.count


class Network:
    """eps_theta(x_t, t | c) with classifier-free guidance (Ho & Salimans 2022, eq. 6); one call is one NFE.

    `fn(x, t, cond)` returns epsilon, shaped like x, or DiT-style epsilon and variance channels (2C channels).
    With guidance, the conditional and unconditional branches run as one batch (one NFE, as DiT counts it), their
    conditions stacked once when the network is built (`cond` and `null_cond` are then views into that batch, so
    the embeddings are held once, as a pipeline holds them);
    guidance applies to the first `guided_channels` epsilon channels (all by default), the variance channels
    come from the conditional branch. `guidance_scale` may also be a tensor of one scale per sample: both branches
    then always run, even for rows whose scale is 1. `image_shape` (C, H, W), where the model knows it, lets `run`
    refuse a wrong x_T before the first step.
    """

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor], *, cond: Any = None,
                 null_cond: Any = None, guidance_scale: float = 1.0, guided_channels: int | None = None,
                 image_shape: Sequence[int] | None = None):
        per_row = torch.is_tensor(guidance_scale)  # one scale per sample (human-guided generation), always guided
        if (per_row or guidance_scale != 1.0) and null_cond is None:
            raise ValueError(f"guidance_scale={guidance_scale} needs a null condition (null_cond) for the "
                             "unconditional branch; pass one, or use guidance_scale=1.0")
        if null_cond is not None and cond is None:
            raise ValueError("null_cond was given without cond; pass the condition too")
        self.fn, self.cond, self.null_cond = fn, cond, null_cond
        self._both = None  # (cond, null_cond, both): the guided batch's conditions, stacked once
        if cond is not None and null_cond is not None and _batch_of(cond) is not None:
            both = cat_conditions([cond, null_cond])  # as a pipeline does: once, not at every NFE
            self.cond, self.null_cond = _split_conditions(both, _batch_of(cond))  # views into it: no second copy
            self._both = (self.cond, self.null_cond, both)
        self.guidance_scale = guidance_scale.reshape(-1) if per_row else float(guidance_scale)
        self.guided_channels = guided_channels
        self.image_shape = None if image_shape is None else tuple(int(n) for n in image_shape)

    @property
    def sample_shape(self) -> tuple[int | None, ...] | None:
        """The x_T shape this network takes, (batch, C, H, W), where it knows it (`image_shape`; batch from cond)."""
        if self.image_shape is None:
            return None
        batch = self.cond.shape[0] if torch.is_tensor(self.cond) else None
        return (batch, *self.image_shape)

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        for name, c in (("cond", self.cond), ("null_cond", self.null_cond)):
            if torch.is_tensor(c) and c.shape[0] != x.shape[0]:
                raise ValueError(f"{name} has batch size {c.shape[0]} but x has {x.shape[0]}; give one condition "
                                 "per sample")
        count_nfe()
        if isinstance(t, float):  # a continuous time (flow matching's sigma, `nestedlib.flow`), in float64
            tt = torch.full((x.shape[0],), t, dtype=torch.float64, device=x.device)
        else:  # a training timestep of a discrete schedule
            tt = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        s = self.guidance_scale
        if torch.is_tensor(s):
            if s.shape[0] != x.shape[0]:
                raise ValueError(f"{s.shape[0]} guidance scales for a batch of {x.shape[0]}; give one per sample")
            s = s.to(x.device, x.dtype).reshape(-1, *[1] * (x.dim() - 1))
        elif s == 1.0:
            out = self.fn(x, tt, self.cond)
        if torch.is_tensor(s) or s != 1.0:
            kept = self._both
            both = (kept[2] if kept is not None and kept[0] is self.cond and kept[1] is self.null_cond
                    else cat_conditions([self.cond, self.null_cond]))  # conditions set after construction
            out_c, out_u = self.fn(torch.cat([x, x]), torch.cat([tt, tt]), both).chunk(2)
            g = self.guided_channels or x.shape[1]
            eps = out_u[:, :g] + s * (out_c[:, :g] - out_u[:, :g])  # eps_u + s (eps_c - eps_u)
            out = torch.cat([eps, out_c[:, g:]], dim=1)  # unguided channels and variance: the conditional branch's
        if out.shape[0] != x.shape[0] or out.shape[2:] != x.shape[2:] or out.shape[1] not in (x.shape[1], 2 * x.shape[1]):
            raise ValueError(f"the network returned shape {tuple(out.shape)} for input {tuple(x.shape)}; an epsilon "
                             "network must return x's shape, or twice its channels when it also predicts a variance")
        return out


def cat_conditions(conds: Sequence[Any]) -> Any:
    """Condition rows stacked along the batch (tensors, or dicts of tensors such as text embeddings; None: none)."""
    first = conds[0]
    if first is None:
        return None
    if torch.is_tensor(first):
        return torch.cat(list(conds))
    if isinstance(first, dict):
        return {k: cat_conditions([c[k] for c in conds]) for k in first}
    raise TypeError(f"cannot batch a condition of type {type(first).__name__}; use tensors or dicts of tensors")


def _batch_of(cond: Any) -> int | None:
    """The batch size of a condition (a tensor, or the first tensor of a dict); None: not one we batch."""
    if torch.is_tensor(cond):
        return cond.shape[0]
    if isinstance(cond, dict):
        return next((n for n in map(_batch_of, cond.values()) if n is not None), None)
    return None


def _split_conditions(both: Any, n: int) -> tuple[Any, Any]:
    """`cat_conditions`' inverse: rows [:n] and [n:] of stacked conditions, as views (no copy)."""
    if both is None:
        return None, None
    if torch.is_tensor(both):
        return both[:n], both[n:]
    parts = {k: _split_conditions(v, n) for k, v in both.items()}
    return {k: a for k, (a, _) in parts.items()}, {k: b for k, (_, b) in parts.items()}


# --- The contracts: events, estimates, x0-samplers and transitions. ---------------------------------------------


@dataclass(frozen=True)
class Event:
    """One step of one process: the x̂_0 drawn at t, the new state x_{t'}, and the NFEs the run has spent so far.

    `x0` is what a preview of the step shows: the network's mean E[x_0 | x_t] for a one-step x0-sampler (what the
    paper plots for vanilla sampling), the inner run's final sample for Nested Diffusion (`Estimate.preview`, e.g.
    made consistent with a measurement, where the x0-sampler gives one).
    """

    depth: int  # 0: the outermost process, 1: its inner process, ...
    path: tuple[int, ...]  # step index at every depth, e.g. (outer step, inner step)
    t: int
    t_next: int
    x0: torch.Tensor
    x: torch.Tensor
    nfe: int
    image: Any = None  # decode(x0), on outer events when `run` was given a decoder


class Estimate(NamedTuple):
    """An x0-sampler's answer: its draw x̂_0 ~ p(x_0 | x_t), the one the transition takes; for DiT's learned range,
    the reverse step's own variance sigma_theta^2, which the DDPM transition then adds in place of beta~ (see
    `LearnedVariance`); and what a preview shows when it is not the draw itself (e.g. DDRM's projection onto y)."""

    draw: torch.Tensor
    variance: torch.Tensor | None = None
    preview: torch.Tensor | None = None  # None: the preview is the draw

    @property
    def shown(self) -> torch.Tensor:
        """What a preview of this estimate shows: `preview`, or the draw."""
        return self.draw if self.preview is None else self.preview


@dataclass(frozen=True)
class Context:
    """What a step needs from the run: the generator, the event callback, and where in the nesting it is."""

    generator: torch.Generator | None = None
    callback: Callable[[Event], None] | None = None
    depth: int = 0
    path: tuple[int, ...] = ()

    def child(self, step: int) -> "Context":
        return replace(self, depth=self.depth + 1, path=self.path + (step,))

    def report(self, event: Event) -> None:
        if self.callback is not None:
            self.callback(event)


class X0Sampler(Protocol):
    """p(x_0 | x_t), Eq. 1's inner integrand: a draw from x_t at t (for a step to t_next), and its cost in NFEs."""

    def __call__(self, x: torch.Tensor, t: int, t_next: int, ctx: Context) -> Estimate: ...

    def nfe(self, t: int, index: int = 0) -> int: ...


class Transition(Protocol):
    """q(x_{t'} | x̂_0, x_t), Eq. 1's closed-form step (`nestedlib.transitions`); `variance` replaces its own."""

    schedule: Schedule

    def __call__(self, x_t: torch.Tensor, x0: torch.Tensor, t: int, t_next: int,
                 generator: torch.Generator | None = None, variance: torch.Tensor | None = None) -> torch.Tensor: ...


# --- x0-samplers: answers to p(x_0 | x_t). ----------------------------------------------------------------------


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
        """E[x_0 | x_t] by DDPM eq. 15 from the network's epsilon channels, and the network's whole output."""
        out = self.network(x, t)
        x0 = predict_x0(x, out[:, : x.shape[1]], self.schedule.abar(t))
        return (x0 if self.clip is None else x0.clamp(-self.clip, self.clip)), out

    def __call__(self, x: torch.Tensor, t: int, t_next: int, ctx: Context) -> Estimate:
        return Estimate(self.mean(x, t)[0])


class LearnedVariance(NetworkMean):
    """DiT's ancestral step: x_{t'} ~ N(mu~(x̂_0, x_t), sigma_theta^2 I) with x̂_0 the network's mean and
    sigma_theta^2 = exp(frac log beta + (1 - frac) log beta~), frac = (v + 1) / 2 (Nichol & Dhariwal 2021, eq. 15).

    In Eq. 1's terms, where sigma_theta^2 >= beta~ this is a draw x̂_0 ~ N(mean, (sigma_theta^2 - beta~) / c0^2)
    followed by the DDPM posterior; DiT's network may also ask for less than beta~ (v < -1), which no x̂_0 draw can
    give, so the variance is handed to the DDPM transition itself (Estimate.variance), exactly as DiT steps. The
    draw is therefore the mean, and so is the preview, as for every one-step sampler.
    """

    def __call__(self, x: torch.Tensor, t: int, t_next: int, ctx: Context) -> Estimate:
        mean, out = self.mean(x, t)
        if out.shape[1] != 2 * x.shape[1]:
            raise ValueError("LearnedVariance needs a network that also predicts the variance (2C output channels, "
                             "like DiT's learn_sigma=True); for an epsilon-only network use NetworkMean")
        if t_next == CLEAN:
            return Estimate(mean)  # the last step adds no noise
        abar_t, abar_prev = self.schedule.abar(t), self.schedule.abar(t_next)
        beta = 1.0 - abar_t / abar_prev  # the step's beta (respaced)
        var_tilde = ddpm_posterior_coefficients(abar_t, abar_prev)[2]  # beta~ of the step
        var = torch.exp(learned_range_log_variance(out[:, x.shape[1] :], math.log(beta), math.log(var_tilde)))
        return Estimate(mean, var)  # sigma_theta^2, for the DDPM transition


class Diffusion:
    """Algorithm 1: for t in the grid, draw x̂_0 ~ p(x_0 | x_t), then x_{t'} ~ q(x_{t'} | x̂_0, x_t).

    Called as an x0-sampler at time t, it runs from x_t down to the clean end and returns that sample of
    p(x_0 | x_t): this is Algorithm 2's inner process. `steps` is one count, or one count per step of the
    enclosing process (non-uniform inner allocations).
    """

    def __init__(self, x0_sampler: X0Sampler, transition: Transition, steps: int | Sequence[int], *,
                 t_end: int = 0, drop_end: bool = False, spacing: str = "linspace"):
        step_counts(steps)  # one positive integer or a non-empty list of them, or a clear error now
        if spacing not in SPACINGS:
            raise ValueError(f"unknown spacing {spacing!r}; choose one of {SPACINGS}")
        self.x0_sampler, self.transition, self.steps = x0_sampler, transition, steps
        self.t_end, self.drop_end, self.spacing = t_end, drop_end, spacing

    @property
    def schedule(self) -> Schedule:
        return self.transition.schedule

    def grid(self, t_start: int, index: int = 0) -> list[int]:
        """The timesteps of this process when it starts at t_start as step `index` of an enclosing process."""
        return process_grid(self.steps, t_start, index, t_end=self.t_end, drop_end=self.drop_end,
                            spacing=self.spacing)

    def nfe(self, t_start: int, index: int = 0) -> int:
        """NFEs of one run from t_start: the sum over the grid of the x0-sampler's NFEs (|outer| x |inner|)."""
        return sum(self.x0_sampler.nfe(t, j) for j, t in enumerate(self.grid(t_start, index)))

    def step(self, x: torch.Tensor, j: int, grid: Sequence[int], ctx: Context) -> Event:
        """Step j of Algorithm 1's loop on `grid` (from `grid(...)`), reported to ctx's callback: the loop body that
        `iterate` repeats and that anything stepping by hand (human-guided generation) calls to resume a run."""
        t, t_next = grid[j], next_t(grid, j)
        estimate = self.x0_sampler(x, t, t_next, ctx.child(j))  # Alg. 1: x̂_0 ~ p(x_0 | x_t)
        x = self.transition(x, estimate.draw, t, t_next, ctx.generator, estimate.variance)  # x_{t'} ~ q(. | x̂_0, x_t)
        event = Event(ctx.depth, ctx.path + (j,), t, t_next, estimate.shown, x, nfe_so_far())
        ctx.report(event)
        return event

    def iterate(self, x: torch.Tensor, t_start: int, ctx: Context, index: int = 0) -> Iterator[Event]:
        """The loop of Algorithm 1, one `Event` per step (`step`), each reported to ctx's callback."""
        grid = self.grid(t_start, index)
        for j in range(len(grid)):
            event = self.step(x, j, grid, ctx)
            x = event.x
            yield event

    def __call__(self, x: torch.Tensor, t: int, t_next: int, ctx: Context) -> Estimate:
        """As an x0-sampler (Algorithm 2, line 3): a full reverse run from x_t at t; returns its x_0."""
        for event in self.iterate(x, t, ctx, index=ctx.path[-1] if ctx.path else 0):
            pass
        return Estimate(event.x)  # the clean end: the inner process's generated x_0

    def __repr__(self) -> str:
        return f"Diffusion(x0_sampler={self.x0_sampler!r}, transition={self.transition!r}, steps={self.steps!r})"


# --- Running a sampler: anytime results, budgets and interruption. ----------------------------------------------


@dataclass
class Result:
    """An anytime run: the last finished outer x̂_0, every outer event (the previews), and how the run ended."""

    x0: torch.Tensor
    previews: list[Event]  # the depth-0 events, one per finished outer step
    nfe: int  # network evaluations the run spent, counted at the network
    planned_nfe: int  # what the full run would have spent
    stopped: str | None = None  # None (finished), "budget" or "interrupt"
    inner: list[Event] = field(default_factory=list)  # inner events, when run(record_inner=True)

    def at(self, nfe: int) -> Event:
        """The preview a user stopping at `nfe` evaluations holds: the last one with preview.nfe <= nfe."""
        done = [p for p in self.previews if p.nfe <= nfe]
        if not done:
            raise ValueError(f"no preview is finished within {nfe} NFEs; the first one costs {self.previews[0].nfe}")
        return done[-1]


def run(process: Diffusion, x_T: torch.Tensor, *, generator: torch.Generator | None = None, budget: int | None = None,
        callback: Callable[[Event], None] | None = None, decode: Callable[[torch.Tensor], Any] | None = None,
        record_inner: bool = False, t_start: int | None = None, grad: bool = False) -> Result:
    """Anytime sampling with Algorithm 1 or 2 from x_T: every outer x̂_0 is a preview with its exact NFE count.

    Stops after the last outer step that fits in `budget` NFEs (it never starts one that cannot finish), or at
    Ctrl-C (KeyboardInterrupt, or StopSampling raised by the callback), and returns the last finished outer x̂_0.
    Previews are decoded only when `decode` is given. Sampling records no autograd graph unless `grad=True`
    (for methods that need gradients with respect to x_t).
    """
    if not torch.is_tensor(x_T) or not x_T.is_floating_point():
        raise TypeError("x_T must be a floating-point tensor of noise, shaped (batch, channels, ...)")
    check_noise(process, x_T)
    if t_start is None:  # x_T: the top of the schedule (t = T - 1; sigma = 1 on a flow path, `FlowSchedule.start`)
        t_start = getattr(process.schedule, "start", None)
        t_start = process.schedule.num_timesteps - 1 if t_start is None else t_start
    cumulative, total = [], 0
    for j, t in enumerate(process.grid(t_start)):
        total += process.x0_sampler.nfe(t, j)
        cumulative.append(total)  # the NFE count at which outer step j finishes
    n_steps = len(cumulative)
    if budget is not None:
        budget = positive_int("budget", budget, "a positive number of NFEs")
        if budget < cumulative[0]:
            raise ValueError(f"a budget of {budget} NFEs ends before the first outer x̂_0, which costs "
                             f"{cumulative[0]} NFEs; ask for at least {cumulative[0]} (the previews arrive at NFEs "
                             f"{cumulative})")
        n_steps = sum(c <= budget for c in cumulative)
    inner: list[Event] = []

    def report(event: Event) -> None:
        if record_inner and event.depth > 0:
            inner.append(event)
        if callback is not None:
            callback(event)

    previews: list[Event] = []
    stopped = None
    with counting_nfe() as counter:
        try:
            with torch.set_grad_enabled(grad):
                for event in process.iterate(x_T, t_start, Context(generator=generator, callback=report)):
                    previews.append(replace(event, image=decode(event.x0)) if decode else event)
                    if len(previews) == n_steps:
                        break
            stopped = "budget" if n_steps < len(cumulative) else None
        except (KeyboardInterrupt, StopSampling):
            if not previews:
                raise
            stopped = "interrupt"
    return Result(previews[-1].x0, previews, counter.count, cumulative[-1], stopped, inner)


def sample_shape(process: Any) -> tuple[int, ...] | None:
    """The x_T shape a sampler declares, if any part of it knows one: a `sample_shape` attribute on the process,
    its transition or network, or on an x0-sampler inside (batch first; a None entry matches any size)."""
    seen: list = [process]
    while seen:
        part = seen.pop()
        shape = getattr(part, "sample_shape", None)
        if shape is not None:
            return tuple(shape)
        seen += [getattr(part, a) for a in ("transition", "x0_sampler", "network") if getattr(part, a, None) is not None]
    return None


def check_noise(process: Any, x_T: torch.Tensor) -> None:
    """Refuse a starting noise x_T that cannot give images: NaN or infinite entries, or a shape the sampler does
    not take (where it declares one, `sample_shape`), with what to do instead."""
    shape = sample_shape(process)
    if shape is not None and (len(shape) != x_T.dim() or any(n is not None and n != m
                                                             for n, m in zip(shape, x_T.shape))):
        want = ", ".join("batch" if n is None else str(n) for n in shape)
        raise ValueError(f"x_T has shape {tuple(x_T.shape)}, but this sampler takes ({want}); draw it with "
                         "model.noise(generator), or torch.randn of that shape")
    if not bool(torch.isfinite(x_T).all()):
        raise ValueError(f"x_T has {int((~torch.isfinite(x_T)).sum())} NaN or infinite entries; start from finite "
                         "noise, e.g. model.noise(generator) or torch.randn")


def stream(key: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A random stream named by `key` (SHA-256 of "nestedlib:<key>" seeds it); `sample_generators` keys them by
    "seed:index", human-guided branches by "<parent key>.<branch>"."""
    digest = hashlib.sha256(f"nestedlib:{key}".encode()).digest()[:8]
    return torch.Generator(device).manual_seed(int.from_bytes(digest, "little") >> 1)


def sample_generators(seed: int, indices: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One random stream per sample, keyed by (seed, sample index): a sample's noise then does not depend on its
    batch, its process in a sharded sweep, or which other candidates were dropped. Pass the list as `generator`."""
    return [stream(f"{seed}:{i}", device) for i in indices]


# --- Builders: Algorithm 1 with the network, and Algorithm 2 around any inner process. --------------------------


def vanilla(network: Callable, schedule: Schedule, steps: int | Sequence[int], *, transition: str = "ddim",
            eta: float = 0.0, learned_variance: bool = False, clip: float | None = None, t_end: int = 0,
            drop_end: bool = False, spacing: str = "linspace", final_alpha_cumprod: float = 1.0) -> Diffusion:
    """Algorithm 1 with the network's x̂_0: DDPM (transition='ddpm', optionally DiT's learned variance) or DDIM(eta)
    ending at abar = final_alpha_cumprod (1: exactly x̂_0; schedule.abar(0): the authors' SD inner process)."""
    if transition not in ("ddim", "ddpm"):
        raise ValueError(f"unknown transition {transition!r}; choose 'ddim' (with eta in [0, 1]) or 'ddpm'")
    if learned_variance and transition != "ddpm":
        raise ValueError("the learned variance is DDPM's (DiT's ancestral sampler); use transition='ddpm' with it")
    if final_alpha_cumprod != 1.0 and transition != "ddim":
        raise ValueError("final_alpha_cumprod is the end of a DDIM process (diffusers' set_alpha_to_one=False); "
                         "use transition='ddim' with it, or leave it at 1")
    q = DDIM(schedule, eta, final_alpha_cumprod) if transition == "ddim" else DDPM(schedule)
    x0_sampler = (LearnedVariance if learned_variance else NetworkMean)(network, schedule, clip)
    return Diffusion(x0_sampler, q, steps, t_end=t_end, drop_end=drop_end, spacing=spacing)


def nested(inner: X0Sampler, outer: int, *, eta: float = 0.0, spacing: str = "linspace",
           schedule: Schedule | None = None) -> Diffusion:
    """Algorithm 2: an outer DDIM(eta) process of `outer` steps whose x0-sampler is a whole inner diffusion.

    Outer grid: the authors' `outer_timesteps` (outer + 1 points, the last dropped): round(linspace(1, T-1)) as in
    their SD script, or space_timesteps over [0, T-1] as in their DiT script. The inner process (e.g.
    `vanilla(network, schedule, 20, transition="ddpm")`) starts exactly at each outer t and runs to the clean end;
    it alone calls the network, so guidance and any learned variance live in it: the outer step needs only x̂_0.
    On a flow path (a `nestedlib.flow.FlowSchedule`) the schedule builds the outer process: FlowDDIM(eta) steps on
    its own sigma grid.
    """
    steps = getattr(inner, "steps", None)
    if isinstance(steps, (list, tuple)) and len(steps) != outer:
        raise ValueError(f"give one inner step count per outer step: {outer} outer steps, {len(steps)} counts")
    schedule = schedule or inner.schedule
    if hasattr(schedule, "outer_process"):  # a path with grids and a transition of its own (`nestedlib.flow`)
        return schedule.outer_process(inner, outer, eta)
    return Diffusion(inner, DDIM(schedule, eta), outer, t_end=OUTER_T_END[spacing], drop_end=True,
                     spacing=spacing)

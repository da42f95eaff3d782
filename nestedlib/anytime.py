"""Anytime quality: what a user holds when stopping a sampler at a random NFE, and how good it is on average.

The paper's full version scores the trade-off between how often an anytime sampler updates and how good its
updates are; its formula is not in the text this book works from, so the book defines its own (chapter "Measuring
anytime quality"):

    A_P(sampler) = E_{tau ~ P}[ Q(held(tau)) ] = sum_{tau=1}^{B} P(tau) Q(held(tau)),

where B is the budget in NFEs, P a stopping law on 1..B, held(tau) the last preview finished within tau NFEs and
Q its quality (log FID, lower is better; or class accuracy). Before the first preview the user holds the noise x_T
the run started from, so that stretch scores Q(x_T), the worst any preview gets. The point law at B gives the usual
final-sample metric; laws with mass early reward early and frequent previews.

`quality_curve` measures Q at every preview of a run with per-sample streams, for a script and a chapter alike.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from .sampling import Diffusion, run, sample_generators
from .schedules import positive_int

LAWS = ("early", "uniform", "late", "end")


def stopping_law(name: str, budget: int) -> np.ndarray:
    """P(tau) for tau = 1..budget: "early" ~ exp(-tau / (budget/5)) (a user who mostly glances at the first fifth),
    "uniform" (any NFE alike), "late" ~ tau (mostly near the end), "end" (always at the budget: final quality)."""
    budget = positive_int("budget", budget, "a positive number of NFEs")
    tau = np.arange(1, budget + 1, dtype=np.float64)
    if name == "early":
        w = np.exp(-tau / (budget / 5))
    elif name == "uniform":
        w = np.ones(budget)
    elif name == "late":
        w = tau
    elif name == "end":
        w = (tau == budget).astype(np.float64)
    else:
        raise ValueError(f"unknown stopping law {name!r}; choose one of {LAWS}")
    return w / w.sum()


def held(preview_nfe: Sequence[int], values: Sequence[float], budget: int, nothing: float) -> np.ndarray:
    """Q(held(tau)) for tau = 1..budget: the value of the last preview with nfe <= tau, `nothing` before the first."""
    nfe = np.asarray(preview_nfe)
    if len(nfe) != len(values) or np.any(np.diff(nfe) <= 0):
        raise ValueError("give one value per preview, with the previews' NFE counts increasing")
    tau = np.arange(1, budget + 1)
    last = np.searchsorted(nfe, tau, side="right") - 1  # index of the preview held at tau, -1 for none yet
    table = np.append(np.asarray(values, dtype=np.float64), nothing)  # index -1 reads `nothing`
    return table[last]


def anytime_score(preview_nfe: Sequence[int], values: Sequence[float], budget: int, law: str | np.ndarray,
                  nothing: float) -> float:
    """A_P = sum_tau P(tau) Q(held(tau)): the expected quality held when stopping at tau ~ P."""
    p = stopping_law(law, budget) if isinstance(law, str) else np.asarray(law, dtype=np.float64)
    if p.shape != (budget,):
        raise ValueError(f"a stopping law over a budget of {budget} NFEs has {budget} probabilities, got {p.shape}")
    return float(p @ held(preview_nfe, values, budget, nothing))


@torch.no_grad()
def quality_curve(model, process: Diffusion, seed: int, reference, labels: torch.Tensor | None = None,
                  decode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """Q at every preview of one run of `process` on `model`'s batch (sample i draws from stream (seed, i)), and Q
    of the starting noise x_T: {"nfe", "log_fid", "accuracy", "nothing": {"log_fid", "accuracy"}}.

    `reference` is a `metrics.Judge` (held-out digits); accuracy needs the requested `labels`."""
    decode = decode or model.decode
    n = model.shape[0]
    generators = sample_generators(seed, range(n))
    x_T = model.noise(generators)
    images = {}

    def keep(event):
        if event.depth == 0:  # an outer preview: decode it now, as a live preview would
            images[event.nfe] = decode(event.x0).float().cpu()

    run(process, x_T, generator=generators, callback=keep)

    def q(x: torch.Tensor) -> tuple[float, float | None]:
        acc = None if labels is None else reference.accuracy(x, labels)
        return math.log(reference.fid(x)), acc

    nfe = sorted(images)
    scores = [q(images[k]) for k in nfe]
    nothing = q(decode(x_T).float().cpu())
    return {"nfe": nfe, "log_fid": [s[0] for s in scores], "accuracy": [s[1] for s in scores],
            "nothing": {"log_fid": nothing[0], "accuracy": nothing[1]}}


def samplers(model, budget: int, specs: Sequence[str]) -> dict[str, Diffusion]:
    """The paper's samplers (`pipelines.paper_samplers`) by name: "vanilla"; "nested 5x20" (outer x inner, even);
    "front 5", "back 5", "geometric 5" (`schedules.allocate` over 5 outer steps, default ratio), "geometric 5 r0.5"
    (another ratio); or "counts 3,6,13,26,52" (one inner count per outer step, summing to the budget)."""
    from .pipelines import paper_samplers
    from .schedules import ALLOCATIONS, allocate

    out = {}
    for spec in specs:
        words = spec.split()
        if words == ["vanilla"]:
            out[spec] = paper_samplers(model, budget, outer=1)["vanilla"]
            continue
        try:  # read the inner step counts; building the sampler below checks them against the budget
            if words[0] == "nested" and len(words) == 2:
                o, i = (int(v) for v in words[1].split("x"))
                counts = [i] * o
            elif words[0] in ALLOCATIONS and len(words) in (2, 3):
                shape = (int(words[1]), words[0], float(words[2].removeprefix("r")) if len(words) == 3 else None)
                counts = None
            elif words[0] == "counts" and len(words) == 2:
                counts = [int(v) for v in words[1].split(",")]
            else:
                raise ValueError
        except (ValueError, IndexError):
            raise ValueError(f"cannot read the sampler {spec!r}; write 'vanilla', 'nested 5x20', 'front 5', "
                             "'geometric 5 r0.5' or 'counts 3,6,13,26,52'") from None
        counts = allocate(budget, *shape) if counts is None else counts
        out[spec] = paper_samplers(model, budget, inner_steps=counts)["nested"]
    return out

"""Human-guided generation (the full version of the paper): several candidates sampled at once; after any outer
step a person looks at the previews, keeps or drops candidates, changes a candidate's class or guidance scale, or
branches one into several continuations, and sampling goes on. Only what is kept costs NFEs.

The state between outer steps is, per candidate, (x_t, its random stream, its condition, its guidance scale); all
candidates sit at the same outer t. `Guided.step` is one pass of Algorithm 1's loop over the outer process
(`Diffusion.step`, the body of `Diffusion.iterate`), run on the kept candidates only:

    g = Guided(prepare("mnist-dit"), labels=[3] * 8, seed=0)       # paper_samplers(model, 100)["nested"]
    g.step(); g.step()                                               # two outer steps: previews in g.previews()
    g.keep([0, 2, 5, 7]); g.condition(2, label=8); g.branch(5, 3)    # decide from what the previews show
    g.run()                                                          # the remaining outer steps
    images = model.decode(g.x0()); g.nfe                             # {"calls", "image_nfe", "saved", ...}

Determinism a user can trust: each candidate owns its random stream (keyed by (seed, index), a branch by its
parent's key and branch number), and the network sees fixed-size micro-batches of `micro_batch` rows (the last one
padded), so a row's numbers never depend on how many other candidates are alive. A kept candidate therefore ends
bit for bit where it would have ended had nobody intervened (tests/test_guided.py). Measured on this CPU, the tiny
DiT returns other bits for batches below 4 rows than inside a batch of 16: without the padding, pruning to three
candidates would change the survivors. Padding costs compute, not NFEs: it is reported as `padded_rows`.

A step is atomic: a stop inside it (StopSampling from the callback, Ctrl-C) restores the streams and NFE counts it
had advanced, so continuing later gives the uninterrupted run's bits; the NFEs the cut step spent are reported as
`interrupted_calls`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch

from .pipelines import Model, paper_samplers
from .sampling import (Context, Diffusion, Event, Network, NFECounter, cat_conditions, count_nfe, counting_nfe,
                       stream)
from .schedules import positive_int
from .transitions import randn


@dataclass
class Candidate:
    """One image being generated: its state x_t at the session's outer t, its own stream and its condition."""

    id: int
    key: str  # names its stream: "seed:index" for a first candidate, "<parent key>.<branch>" for a branch
    generator: torch.Generator
    cond: Any  # its row of the network's condition (a class label for DiT)
    guidance: float
    x: torch.Tensor  # x_t, shaped (1, C, H, W)
    born: int = 0  # the outer step it started from (branches: the step at which they were branched)
    parent: int | None = None
    dropped: int | None = None  # the outer step before which it was dropped
    children: int = 0
    previews: list[torch.Tensor] = field(default_factory=list)  # outer x̂_0 after each outer step (its parent's first)


class RowNetwork:
    """eps_theta(x_t, t | c_i) with guidance scale w_i per row (`Network`, eq. 6 of Ho & Salimans), evaluated in
    micro-batches of exactly `size` rows; one call is one NFE whatever the number of micro-batches."""

    def __init__(self, base: Network, size: int):
        self.base, self.size, self.rows = base, size, []  # rows: the candidates of the batch, set by `Guided`
        self.image_nfe = self.padded_rows = 0

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        count_nfe()  # one NFE: every kept candidate evaluated once
        self.image_nfe += x.shape[0]
        guided = self.base.null_cond is not None
        outs = []
        with counting_nfe():  # a counter of their own: the micro-batches below are parts of this one NFE
            for i in range(0, x.shape[0], self.size):
                rows, xs = self.rows[i:i + self.size], x[i:i + self.size]
                pad = self.size - len(rows)
                rows, xs = rows + rows[-1:] * pad, torch.cat([xs, xs[-1:].expand(pad, *xs.shape[1:])])
                null = cat_conditions([self.base.null_cond[:1]] * len(rows)) if guided else None
                scale = torch.tensor([c.guidance for c in rows]) if guided else 1.0
                net = Network(self.base.fn, cond=cat_conditions([c.cond for c in rows]), null_cond=null,
                              guidance_scale=scale, guided_channels=self.base.guided_channels)
                outs.append(net(xs, t)[: self.size - pad])
                self.padded_rows += self.size
        return torch.cat(outs)


def guidance_scale(value) -> float:
    """A guidance scale w of eq. 6 (Ho & Salimans): a finite number >= 0 (1: no guidance), as a float."""
    try:
        w = float(value)
    except (TypeError, ValueError):
        w = math.nan
    if isinstance(value, bool) or not (math.isfinite(w) and w >= 0.0):
        raise ValueError(f"guidance scale must be a finite number >= 0 (1: no guidance), got {value!r}")
    return w


class Guided:
    """Candidates advanced one outer step at a time (Algorithm 1/2's outer loop) with a person deciding in between."""

    def __init__(self, model: Model, labels=None, *, seed: int = 0, total_nfe: int = 100, outer: int = 5,
                 sampler: str = "nested", guidance: float | None = None, micro_batch: int = 4,
                 indices=None, build: Callable[[Model], Diffusion] | None = None):
        micro_batch = positive_int("micro_batch", micro_batch, "a positive number of rows")
        base = model.network
        self.model, self.net = model, RowNetwork(base, micro_batch)
        self.null = None if base.null_cond is None else base.null_cond[:1]
        self.num_classes = model.classes if model.kind == "dit" else None  # DiT: its trained labels (registry)
        conds = [None] * model.shape[0] if base.cond is None else [base.cond[i:i + 1] for i in range(model.shape[0])]
        if labels is not None:
            conds = [self._label(label) for label in labels]
        indices = list(range(len(conds))) if indices is None else list(indices)
        if len(indices) != len(conds) or not conds or len(set(indices)) != len(indices):
            raise ValueError(f"give one distinct index per candidate: {indices} for {len(conds)} candidates")
        w = guidance_scale(base.guidance_scale if guidance is None else guidance)
        if build is None and sampler not in ("nested", "vanilla"):
            raise ValueError(f"unknown sampler {sampler!r}; use 'nested' or 'vanilla' (paper_samplers), or build=")
        built = replace(model, network=self.net)
        self.process = build(built) if build else paper_samplers(built, total_nfe, outer)[sampler]
        self.grid = self.process.grid(model.schedule.num_timesteps - 1)
        self.step_nfe = [self.process.x0_sampler.nfe(t, j) for j, t in enumerate(self.grid)]  # NFEs of each step
        self.candidates: dict[int, Candidate] = {}
        self.step_index, self.log, self._counter, self._interrupted = 0, [], NFECounter(), 0
        for cond, i in zip(conds, indices):
            g = stream(f"{seed}:{i}")
            x = randn(torch.empty((1, *model.shape[1:]), dtype=model.dtype, device=model.device), [g])  # x_T
            self.candidates[i] = Candidate(i, f"{seed}:{i}", g, cond, w, x)
        self.candidates = dict(sorted(self.candidates.items()))

    # --- what a person can do between outer steps ---------------------------------------------------------------

    def drop(self, ids) -> None:
        """Stop candidates: from now on they cost nothing."""
        self._open("drop")
        for i in self._ids(ids):
            if self.candidates[i].dropped is None:
                self.candidates[i].dropped = self.step_index
                self.log.append({"step": self.step_index, "action": "drop", "id": i})

    def keep(self, ids) -> None:
        """Keep these candidates and drop every other one."""
        self._open("keep")
        kept = set(self._alive_ids(ids, "keep"))
        self.drop([i for i in self.alive if i not in kept])

    def condition(self, id: int, label: int | None = None, guidance: float | None = None, cond: Any = None) -> None:
        """Change a candidate's class (or condition row, e.g. a text embedding) and/or guidance scale from now on."""
        self._open("condition")
        c = self.candidates[self._alive_ids([id], "condition")[0]]
        if guidance is not None and self.null is None:
            raise ValueError(f"{self.model.name} has no null condition, so no guidance; leave guidance out")
        w = None if guidance is None else guidance_scale(guidance)
        row = None if label is None else self._label(label)  # checked before anything changes
        if w is not None:
            c.guidance = w
        if label is not None or cond is not None:
            c.cond = row if label is not None else cond
        self.log.append({"step": self.step_index, "action": "condition", "id": id, "label": label,
                         "guidance": guidance})

    def branch(self, id: int, n: int) -> list[int]:
        """Continue a candidate as n candidates: itself (its own stream) and n - 1 branches with new streams."""
        self._open("branch")
        c = self.candidates[self._alive_ids([id], "branch")[0]]
        n = positive_int("n", n, "a number of continuations n >= 1 (1 keeps the candidate as it is)")
        new = []
        for _ in range(n - 1):
            c.children += 1
            key, j = f"{c.key}.{c.children}", max(self.candidates) + 1
            self.candidates[j] = Candidate(j, key, stream(key), c.cond, c.guidance, c.x.clone(), self.step_index,
                                           c.id, previews=list(c.previews))
            new.append(j)
        self.log.append({"step": self.step_index, "action": "branch", "id": id, "new": new})
        return [c.id] + new

    # --- sampling -----------------------------------------------------------------------------------------------

    @property
    def alive(self) -> list[int]:
        return [i for i, c in self.candidates.items() if c.dropped is None]

    @property
    def done(self) -> bool:
        return self.step_index == len(self.grid)

    def step(self, callback: Callable[[Event], None] | None = None) -> dict[int, torch.Tensor]:
        """One outer step of every kept candidate (`Diffusion.step`: x̂_0 ~ p(x_0 | x_t), Alg. 2 line 3, then the
        outer transition), atomic: a stop raised inside it undoes it, streams and NFE counts included."""
        if self.done:
            raise ValueError(f"all {len(self.grid)} outer steps are done; read the images with x0()")
        cands = [self.candidates[i] for i in self.alive]
        if not cands:
            raise ValueError("every candidate was dropped; branch or keep one before dropping the rest, or start a "
                             "new session")
        x, gens = torch.cat([c.x for c in cands]), [c.generator for c in cands]
        before = ([g.get_state() for g in gens], self._counter.count, self.net.image_nfe, self.net.padded_rows)
        self.net.rows = cands
        try:
            with torch.no_grad(), counting_nfe(self._counter):
                event = self.process.step(x, self.step_index, self.grid, Context(gens, callback))
        except BaseException:  # StopSampling, KeyboardInterrupt, an error: the state is as before the step
            states, calls, self.net.image_nfe, self.net.padded_rows = before
            for g, state in zip(gens, states):
                g.set_state(state)
            self._interrupted += self._counter.count - calls
            self._counter.count = calls
            raise
        for c, row, row0 in zip(cands, event.x.split(1), event.x0.split(1)):
            c.x, c.previews = row, c.previews + [row0]
        self.step_index += 1
        return {c.id: c.previews[-1] for c in cands}

    def run(self, steps: int | None = None, callback: Callable[[Event], None] | None = None) -> None:
        """Continue: the remaining outer steps (or `steps` of them) for the kept candidates."""
        left = len(self.grid) - self.step_index
        if steps is not None:
            steps = positive_int("steps", steps, f"a positive number of outer steps (None: all {left} left)")
            if steps > left:
                raise ValueError(f"{steps} outer steps asked, but only {left} of {len(self.grid)} are left; ask for "
                                 f"at most {left}, or run() for all of them")
        for _ in range(left if steps is None else steps):
            self.step(callback)

    def previews(self, ids=None) -> torch.Tensor:
        """The latest outer x̂_0 of each candidate (the kept ones by default): what the person looks at."""
        return torch.cat([self.candidates[i].previews[-1] for i in self._ids(self.alive if ids is None else ids)])

    x0 = previews  # after the last step, the previews are the final images

    @property
    def nfe(self) -> dict[str, int]:
        """NFEs as nestedlib counts them (`calls`), image-NFEs (calls x rows), padding, and what dropping saved."""
        planned = sum(sum(self.step_nfe[c.born:]) for c in self.candidates.values())
        return {"calls": self._counter.count, "image_nfe": self.net.image_nfe, "padded_rows": self.net.padded_rows,
                "planned_image_nfe": planned, "saved": planned - sum(
                    sum(self.step_nfe[c.born:len(self.grid) if c.dropped is None else c.dropped])
                    for c in self.candidates.values()),
                "interrupted_calls": self._interrupted}  # spent by steps cut short and undone

    def _open(self, action: str) -> None:
        """Refuse a decision once every outer step is done: nothing is left that it could change."""
        if self.done:
            raise ValueError(f"cannot {action} after the end: all {len(self.grid)} outer steps are done; read the "
                             "images with x0(), or start a new session")

    def _ids(self, ids) -> list[int]:
        ids = [ids] if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool) else list(ids)
        unknown = [i for i in ids if i not in self.candidates]
        if unknown:
            raise ValueError(f"unknown candidate id(s) {unknown}; the candidates are {list(self.candidates)}")
        return [int(i) for i in ids]

    def _alive_ids(self, ids, action: str) -> list[int]:
        """Candidate ids that are still sampled; a dropped one is refused (its x_t stopped at its drop)."""
        ids = self._ids(ids)
        gone = [i for i in ids if self.candidates[i].dropped is not None]
        if gone:
            when = ", ".join(f"#{i} before step {self.candidates[i].dropped + 1}" for i in gone)
            raise ValueError(f"cannot {action} dropped candidate(s) ({when}): their x_t stopped there while the "
                             f"session went on; choose among the kept ones {self.alive}")
        return ids

    def _label(self, label) -> torch.Tensor:
        """A class label as the network's condition row: a whole number (int, numpy integer, integral float or a
        one-element tensor) in 0 .. num_classes - 1."""
        if self.num_classes is None:
            raise ValueError(f"{self.model.name} takes no class labels; pass its condition row as cond= instead "
                             "(e.g. a text embedding for Stable Diffusion)")
        value = label
        if torch.is_tensor(value) and value.numel() == 1:
            value = value.item()
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"a class label is a whole number in 0 to {self.num_classes - 1}, got {label!r}")
        if not 0 <= value < self.num_classes:
            raise ValueError(f"class {label!r} is out of range: {self.model.name} knows classes 0 to "
                             f"{self.num_classes - 1}")
        return torch.tensor([value], dtype=self.null.dtype, device=self.null.device)

"""Human-guided generation (the full version of the paper): several candidates sampled at once; after any outer
step a person looks at the previews, keeps or drops candidates, changes a candidate's class or guidance scale, or
branches one into several continuations, and sampling goes on. Only what is kept costs NFEs.

The state between outer steps is, per candidate, (x_t, its random stream, its condition, its guidance scale); all
candidates sit at the same outer t. `Guided.step` is one pass of Algorithm 1's loop over the outer process
(`Diffusion.iterate`), run on the kept candidates only:

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
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from .pipelines import Model, paper_samplers
from .sampling import _NFE, Context, Diffusion, Event, Network, count_nfe
from .schedules import CLEAN
from .transitions import randn


def stream(key: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A random stream named by `key`; key "seed:i" is `sampling.sample_generators(seed, [i])`'s stream."""
    digest = hashlib.sha256(f"nestedlib:{key}".encode()).digest()[:8]
    return torch.Generator(device).manual_seed(int.from_bytes(digest, "little") >> 1)


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
        outs, token = [], _NFE.set(None)  # the micro-batches below are parts of this one NFE
        try:
            for i in range(0, x.shape[0], self.size):
                rows, xs = self.rows[i:i + self.size], x[i:i + self.size]
                pad = self.size - len(rows)
                rows, xs = rows + rows[-1:] * pad, torch.cat([xs, xs[-1:].expand(pad, *xs.shape[1:])])
                null = _rows([self.base.null_cond[:1]] * len(rows)) if guided else None
                scale = torch.tensor([c.guidance for c in rows]) if guided else 1.0
                net = Network(self.base.fn, cond=_rows([c.cond for c in rows]), null_cond=null,
                              guidance_scale=scale, guided_channels=self.base.guided_channels)
                outs.append(net(xs, t)[: self.size - pad])
                self.padded_rows += self.size
        finally:
            _NFE.reset(token)
        return torch.cat(outs)


def _rows(conds: list) -> Any:
    """Condition rows stacked along the batch (tensors, or dicts of tensors such as text embeddings)."""
    if conds[0] is None:
        return None
    if isinstance(conds[0], dict):
        return {k: torch.cat([c[k] for c in conds]) for k in conds[0]}
    return torch.cat(conds)


class Guided:
    """Candidates advanced one outer step at a time (Algorithm 1/2's outer loop) with a person deciding in between."""

    def __init__(self, model: Model, labels=None, *, seed: int = 0, total_nfe: int = 100, outer: int = 5,
                 sampler: str = "nested", guidance: float | None = None, micro_batch: int = 4,
                 indices=None, build: Callable[[Model], Diffusion] | None = None):
        if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
            raise ValueError(f"micro_batch must be a positive number of rows, got {micro_batch!r}")
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
        w = float(base.guidance_scale) if guidance is None else float(guidance)
        if not w >= 0.0:
            raise ValueError(f"guidance scale must be a number >= 0 (1: no guidance), got {guidance!r}")
        if build is None and sampler not in ("nested", "vanilla"):
            raise ValueError(f"unknown sampler {sampler!r}; use 'nested' or 'vanilla' (paper_samplers), or build=")
        built = replace(model, network=self.net)
        self.process = build(built) if build else paper_samplers(built, total_nfe, outer)[sampler]
        self.grid = self.process.grid(model.schedule.num_timesteps - 1)
        self.step_nfe = [self.process.x0_sampler.nfe(t, j) for j, t in enumerate(self.grid)]  # NFEs of each step
        self.candidates: dict[int, Candidate] = {}
        self.step_index, self.log, self._calls = 0, [], [0]
        for cond, i in zip(conds, indices):
            g = stream(f"{seed}:{i}")
            x = randn(torch.empty((1, *model.shape[1:]), dtype=model.dtype, device=model.device), [g])  # x_T
            self.candidates[i] = Candidate(i, f"{seed}:{i}", g, cond, w, x)
        self.candidates = dict(sorted(self.candidates.items()))

    # --- what a person can do between outer steps ---------------------------------------------------------------

    def drop(self, ids) -> None:
        """Stop candidates: from now on they cost nothing."""
        for i in self._ids(ids):
            if self.candidates[i].dropped is None:
                self.candidates[i].dropped = self.step_index
                self.log.append({"step": self.step_index, "action": "drop", "id": i})

    def keep(self, ids) -> None:
        """Keep these candidates and drop every other one."""
        kept = set(self._ids(ids))
        self.drop([i for i in self.alive if i not in kept])

    def condition(self, id: int, label: int | None = None, guidance: float | None = None, cond: Any = None) -> None:
        """Change a candidate's class (or condition row, e.g. a text embedding) and/or guidance scale from now on."""
        c = self.candidates[self._ids([id])[0]]
        if guidance is not None:
            if self.null is None:
                raise ValueError(f"{self.model.name} has no null condition, so no guidance; leave guidance out")
            if not float(guidance) >= 0.0:
                raise ValueError(f"guidance scale must be a number >= 0 (1: no guidance), got {guidance!r}")
            c.guidance = float(guidance)
        if label is not None or cond is not None:
            c.cond = self._label(label) if label is not None else cond
        self.log.append({"step": self.step_index, "action": "condition", "id": id, "label": label,
                         "guidance": guidance})

    def branch(self, id: int, n: int) -> list[int]:
        """Continue a candidate as n candidates: itself (its own stream) and n - 1 branches with new streams."""
        c = self.candidates[self._ids([id])[0]]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"branch into n >= 1 continuations (1 keeps the candidate as it is), got {n!r}")
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
        """One outer step of every kept candidate: x̂_0 ~ p(x_0 | x_t) (Alg. 2 line 3), then the outer transition."""
        if self.done:
            raise ValueError(f"all {len(self.grid)} outer steps are done; read the images with x0()")
        cands = [self.candidates[i] for i in self.alive]
        if not cands:
            raise ValueError("every candidate was dropped; branch or keep one before dropping the rest, or start a "
                             "new session")
        j, t = self.step_index, self.grid[self.step_index]
        t_next = self.grid[j + 1] if j + 1 < len(self.grid) else CLEAN
        x, gens = torch.cat([c.x for c in cands]), [c.generator for c in cands]
        self.net.rows, token = cands, _NFE.set(self._calls)
        try:
            with torch.no_grad():
                x0, variance = self.process.x0_sampler(x, t, t_next, Context(gens, callback).child(j))
                x = self.process.transition(x, x0, t, t_next, gens, variance)  # as in `Diffusion.iterate`
        finally:
            _NFE.reset(token)
        for c, row, row0 in zip(cands, x.split(1), x0.split(1)):
            c.x, c.previews = row, c.previews + [row0]
        self.step_index += 1
        if callback is not None:
            callback(Event(0, (j,), t, t_next, x0, x, self._calls[0]))
        return {c.id: c.previews[-1] for c in cands}

    def run(self, steps: int | None = None, callback: Callable[[Event], None] | None = None) -> None:
        """Continue: the remaining outer steps (or `steps` of them) for the kept candidates."""
        for _ in range(len(self.grid) - self.step_index if steps is None else steps):
            self.step(callback)

    def previews(self, ids=None) -> torch.Tensor:
        """The latest outer x̂_0 of each candidate (the kept ones by default): what the person looks at."""
        return torch.cat([self.candidates[i].previews[-1] for i in self._ids(self.alive if ids is None else ids)])

    x0 = previews  # after the last step, the previews are the final images

    @property
    def nfe(self) -> dict[str, int]:
        """NFEs as nestedlib counts them (`calls`), image-NFEs (calls x rows), padding, and what dropping saved."""
        planned = sum(sum(self.step_nfe[c.born:]) for c in self.candidates.values())
        return {"calls": self._calls[0], "image_nfe": self.net.image_nfe, "padded_rows": self.net.padded_rows,
                "planned_image_nfe": planned, "saved": planned - sum(
                    sum(self.step_nfe[c.born:len(self.grid) if c.dropped is None else c.dropped])
                    for c in self.candidates.values())}

    def _ids(self, ids) -> list[int]:
        ids = [ids] if isinstance(ids, int) else list(ids)
        unknown = [i for i in ids if i not in self.candidates]
        if unknown:
            raise ValueError(f"unknown candidate id(s) {unknown}; the candidates are {list(self.candidates)}")
        return ids

    def _label(self, label) -> torch.Tensor:
        if self.num_classes is None:
            raise ValueError(f"{self.model.name} takes no class labels; pass its condition row as cond= instead "
                             "(e.g. a text embedding for Stable Diffusion)")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < self.num_classes:
            raise ValueError(f"class {label!r} is out of range: {self.model.name} knows classes 0 to "
                             f"{self.num_classes - 1}")
        return torch.tensor([label], dtype=self.null.dtype, device=self.null.device)

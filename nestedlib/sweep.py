"""Table 1's sampling rules, shared by `scripts/sweep.py` (the committed sweeps) and the Table 1 chapter.

A cell of Table 1 is n samples of one (budget, seed). Sample i asks for class i % classes (the bundled DiT: digit
i % 10, so 100 samples hold 10 of each digit) and draws its noise from its own stream (`sample_generators(seed, [i])`).
The samples are cut into fixed micro-batches of consecutive indices, so that every network and decoder call sees the
same batch whatever the number of processes; each micro-batch runs both of the paper's samplers
(`pipelines.paper_samplers`: vanilla with `budget` steps, nested with `outer` outer steps of budget / outer inner steps)
from the same streams.
"""
from __future__ import annotations

from .sampling import Result, run, sample_generators


def chunks(n: int, batch: int) -> list[range]:
    """The fixed micro-batches of a cell: consecutive sample indices, the same for any number of processes."""
    return [range(lo, min(lo + batch, n)) for lo in range(0, n, batch)]


def labels_of(indices, classes: int) -> list[int]:
    """Sample i asks for class i % classes: it depends on the index only, balanced over the classes."""
    return [i % classes for i in indices]


def sample_batch(model, budget: int, seed: int, indices: range, outer: int = 5, record_inner: bool = False,
                 bar=None) -> dict[str, Result]:
    """Both samplers of Table 1 (Algorithm 1 vanilla, Algorithm 2 nested) on one micro-batch: {"vanilla", "nested"}.

    `model` is the micro-batch's model (its labels); each sampler starts from x_T of the streams (seed, i) of its
    samples i and draws its own noise from them. record_inner keeps nested's inner previews; `bar` (e.g. tqdm) is
    advanced by image-NFEs (NFEs x samples)."""
    from .pipelines import paper_samplers

    out = {}
    for name, process in paper_samplers(model, budget, outer=outer).items():
        generators = sample_generators(seed, indices)  # (seed, index): CPU streams, the same noise on any device
        spent = [0]

        def progress(event, spent=spent):
            bar.update((event.nfe - spent[0]) * len(indices))
            spent[0] = event.nfe

        out[name] = run(process, model.noise(generators), generator=generators, callback=progress if bar else None,
                        record_inner=record_inner and name == "nested")
    return out

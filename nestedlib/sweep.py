"""Table 1's sampling rules, shared by `scripts/sweep.py` (the committed sweeps) and the Table 1 chapter.

A cell of Table 1 is n samples of one (budget, seed). Sample i asks for class i % classes (the bundled DiT: digit
i % 10, so 100 samples hold 10 of each digit), or, for a judge whose held-out part is not class-balanced (emoji), a
class in that part's proportions (`data.label_plan`), and draws its noise from its own stream (`sample_generators(seed, [i])`).
The samples are cut into fixed micro-batches of consecutive indices, so that every network and decoder call sees the
same batch whatever the number of processes; each micro-batch runs both of the paper's samplers
(`pipelines.paper_samplers`: vanilla with `budget` steps, nested with `outer` outer steps of budget / outer inner steps)
from the same streams.
"""
from __future__ import annotations

import math
import queue
import threading

import torch

from . import data
from .sampling import Result, run, sample_generators


def chunks(n: int, batch: int) -> list[range]:
    """The fixed micro-batches of a cell: consecutive sample indices, the same for any number of processes."""
    return [range(lo, min(lo + batch, n)) for lo in range(0, n, batch)]


def labels_of(indices, classes: int, dataset: str | None = None) -> list[int]:
    """Sample i asks for class i % classes, or, given the judge's dataset, the class `data.label_plan` gives it (the
    held-out part's proportions; i % classes again for MNIST's balanced one): it depends on the index only."""
    indices = list(indices)
    if dataset is None or not indices:
        return [i % classes for i in indices]
    plan = data.label_plan(dataset, max(indices) + 1)
    if int(plan.max()) >= classes:
        raise ValueError(f"the held-out part of {dataset} holds class {int(plan.max())}, beyond the model's {classes}")
    return [int(plan[i]) for i in indices]


class PrefetchedStreams(list):
    """The per-sample streams of `sample_generators`, drawn ahead: a background thread draws `block` rows of each
    sample's stream at once (on the CPU, from copies of the generators), stacks them and copies them to `device`, while
    the network runs; `draw(x)` (what `transitions.randn` calls) serves them in order. The numbers are exactly those of
    drawing row by row (torch's CPU normal sampler fills 16 values at a time, so a block of k draws of a per-sample
    size that is a multiple of 16 equals k single draws): a sample's noise still depends on its stream only, not on
    its batch or process, and one process keeps a GPU fed instead of drawing one small tensor per sample per step.
    The caller's generators are left untouched. Use it as a context manager (or call `close`) to stop the thread."""

    def __init__(self, generators, shape, device="cpu", dtype=torch.float32, block: int = 16, depth: int = 2):
        super().__init__(generators)
        self.shape, self.device, self.dtype, self.block = tuple(shape), torch.device(device), dtype, block
        numel = math.prod(self.shape)
        if numel < 16 or numel % 16:
            raise ValueError(f"a sample of shape {self.shape} ({numel} values) is not a whole number of torch's 16-value "
                             f"normal blocks, so drawing ahead would change its numbers; pass the generators themselves")
        self._copies = []
        for g in generators:
            if g.device.type != "cpu":
                raise ValueError("PrefetchedStreams draws CPU streams (sample_generators(seed, indices)); got a "
                                 f"generator on {g.device}")
            c = torch.Generator()
            c.set_state(g.get_state())
            self._copies.append(c)
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._rows, self._next = None, block
        self._thread = threading.Thread(target=self._fill, daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        """Background: blocks of (block, N, *shape) rows, copied to the device on a side CUDA stream when there is one."""
        side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        try:
            while not self._stop.is_set():
                rows = torch.stack([torch.randn((self.block, *self.shape), generator=g, dtype=self.dtype)
                                    for g in self._copies], dim=1)
                ready = None
                if side is not None:
                    with torch.cuda.stream(side):
                        rows = rows.pin_memory().to(self.device, non_blocking=True)
                        ready = torch.cuda.Event()
                        ready.record(side)
                elif self.device.type != "cpu":
                    rows = rows.to(self.device)
                while not self._stop.is_set():
                    try:
                        self._queue.put((rows, ready), timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as err:  # noqa: BLE001 (handed to the consumer, which raises it)
            self._queue.put((err, None))

    def draw(self, x: torch.Tensor) -> torch.Tensor:
        """The next row of every sample's stream, shaped like x (N, *shape), on x's device: z ~ N(0, I) per sample."""
        if tuple(x.shape) != (len(self), *self.shape) or x.dtype != self.dtype:
            raise ValueError(f"these streams draw {(len(self), *self.shape)} {self.dtype}; asked for "
                             f"{tuple(x.shape)} {x.dtype}")
        if self._next == self.block:
            rows, ready = self._queue.get()
            if isinstance(rows, BaseException):
                raise rows
            if ready is not None:  # the copy made on the side stream is done before the network reads the rows
                main = torch.cuda.current_stream(self.device)
                main.wait_event(ready)
                rows.record_stream(main)  # and its memory is not reused while the main stream may still read it
            self._rows, self._next = rows, 0
        self._next += 1
        return self._rows[self._next - 1].to(x.device)

    def close(self) -> None:
        """Stop the background thread (rows drawn ahead are dropped; the caller's generators were never advanced)."""
        self._stop.set()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def sample_batch(model, budget: int, seed: int, indices: range, outer: int = 5, record_inner: bool = False,
                 bar=None, prefetch: bool | None = None) -> dict[str, Result]:
    """Both samplers of Table 1 (Algorithm 1 vanilla, Algorithm 2 nested) on one micro-batch: {"vanilla", "nested"}.

    `model` is the micro-batch's model (its labels); each sampler starts from x_T of the streams (seed, i) of its
    samples i and draws its own noise from them. record_inner keeps nested's inner previews; `bar` (e.g. tqdm) is
    advanced by image-NFEs (NFEs x samples). prefetch (default: on a GPU) draws the same streams ahead in a
    background thread (`PrefetchedStreams`): the same numbers, and the GPU is not kept waiting for them."""
    from .pipelines import paper_samplers

    prefetch = torch.device(model.device).type == "cuda" if prefetch is None else prefetch
    out = {}
    for name, process in paper_samplers(model, budget, outer=outer).items():
        generators = sample_generators(seed, indices)  # (seed, index): CPU streams, the same noise on any device
        if prefetch:
            generators = PrefetchedStreams(generators, model.shape[1:], model.device, model.dtype)
        spent = [0]

        def progress(event, spent=spent):
            bar.update((event.nfe - spent[0]) * len(indices))
            spent[0] = event.nfe

        try:
            out[name] = run(process, model.noise(generators), generator=generators,
                            callback=progress if bar else None, record_inner=record_inner and name == "nested")
        finally:
            if prefetch:
                generators.close()
    return out

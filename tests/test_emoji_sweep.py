"""The sweep's noise drawn ahead (nestedlib.sweep.PrefetchedStreams), so that one process can keep a GPU busy: the
same numbers as drawing each sample's stream row by row, whatever the batch, and the same Table 1 samples."""

from __future__ import annotations

import pytest
import torch

from nestedlib import Schedule, run, sample_generators, vanilla
from nestedlib.pipelines import prepare
from nestedlib.sweep import PrefetchedStreams, chunks, sample_batch
from nestedlib.transitions import randn


@pytest.mark.parametrize("shape", [(4, 8, 8), (1, 32, 32), (3, 32, 32)])
def test_rows_drawn_ahead_are_the_rows_drawn_one_by_one(shape):
    x = torch.empty(5, *shape)
    gens = sample_generators(7, range(5))
    direct = [randn(x, gens) for _ in range(40)]  # 40 steps: more than two blocks of 16
    mine = sample_generators(7, range(5))
    before = [g.get_state() for g in mine]
    with PrefetchedStreams(mine, shape, block=16) as ahead:
        served = [randn(x, ahead) for _ in range(40)]
    assert all(torch.equal(a, b) for a, b in zip(direct, served))
    assert all(torch.equal(g.get_state(), s) for g, s in zip(mine, before))  # the caller's streams are untouched


def test_sizes_that_would_change_the_numbers_are_refused():
    with pytest.raises(ValueError, match="16-value"):
        PrefetchedStreams(sample_generators(0, range(2)), (3, 5, 5))
    with PrefetchedStreams(sample_generators(0, range(2)), (4, 8, 8)) as ahead:
        with pytest.raises(ValueError, match="draw"):
            randn(torch.empty(3, 4, 8, 8), ahead)


def test_a_sample_does_not_depend_on_its_batch():
    """Algorithm 1 on a network that treats samples one by one: batches of 2 and of 6, drawn ahead or not, give the
    same six samples bit for bit (the noise is keyed by the sample, not by its batch)."""
    schedule = Schedule.linear()
    net = lambda x, t: 0.1 * x + 1e-3 * t  # noqa: E731 (elementwise: no batch rounding)
    process = vanilla(net, schedule, 10, transition="ddpm")

    def samples(batch: int, ahead: bool) -> torch.Tensor:
        out = []
        for idx in chunks(6, batch):
            g = sample_generators(3, idx)
            if ahead:
                g = PrefetchedStreams(g, (4, 8, 8))
            out.append(run(process, randn(torch.empty(len(idx), 4, 8, 8), g), generator=g).x0)
            if ahead:
                g.close()
        return torch.cat(out)

    ref = samples(6, False)
    for batch, ahead in [(2, False), (2, True), (6, True)]:
        assert torch.equal(samples(batch, ahead), ref)


def test_table1_samples_are_the_same_drawn_ahead():
    model = prepare("mnist-dit", cond=[3, 7, 1], preset="paper")
    plain = sample_batch(model, 10, 0, range(3), prefetch=False)
    ahead = sample_batch(model, 10, 0, range(3), prefetch=True)
    for name in ("vanilla", "nested"):
        assert torch.equal(plain[name].x0, ahead[name].x0)
        assert [p.nfe for p in plain[name].previews] == [p.nfe for p in ahead[name].previews]
        assert all(torch.equal(a.x0, b.x0) for a, b in zip(plain[name].previews, ahead[name].previews))

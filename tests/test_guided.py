"""Human-guided generation: what is kept is bit-identical to its uninterrupted run, and only what is kept costs NFEs."""
import math

import numpy as np
import pytest
import torch

from nestedlib import Network
from nestedlib.guided import Guided
from nestedlib.pipelines import paper_samplers, prepare
from nestedlib.sampling import StopSampling, run, sample_generators

NFE, OUTER = 20, 5  # 5 outer steps of 4 inner DDPM steps each


@pytest.fixture(scope="module")
def model():
    return prepare("mnist-dit", cond=[3] * 8, guidance_scale=1.5)


@pytest.fixture(scope="module")
def uninterrupted(model):
    g = Guided(model, [3, 1, 4, 1, 5, 9, 2, 6], seed=0, total_nfe=NFE, outer=OUTER)
    g.run()
    return g


def session(model, **kw):
    return Guided(model, [3, 1, 4, 1, 5, 9, 2, 6], seed=0, total_nfe=NFE, outer=OUTER, **kw)


def test_pruned_candidates_end_bit_identical_and_cost_only_what_is_kept(model, uninterrupted):
    g = session(model)
    g.run(2)
    g.keep([0, 3, 5, 6])  # prune half of 8 after outer step 2
    g.run()
    assert torch.equal(g.x0(), uninterrupted.x0([0, 3, 5, 6]))
    for i in (0, 3, 5, 6):  # every preview on the way, too
        assert all(torch.equal(a, b) for a, b in zip(g.candidates[i].previews, uninterrupted.candidates[i].previews))
    assert g.nfe["calls"] == uninterrupted.nfe["calls"] == NFE  # the same network calls (NFEs, as nestedlib counts)
    assert uninterrupted.nfe["image_nfe"] == 8 * NFE and uninterrupted.nfe["saved"] == 0
    assert g.nfe["image_nfe"] == 8 * 8 + 4 * 12  # 8 rows for 2 steps of 4 NFEs, then 4 rows for 3 steps
    assert g.nfe["saved"] == 4 * 12 and g.nfe["planned_image_nfe"] == 8 * NFE
    assert g.nfe["padded_rows"] == g.nfe["image_nfe"]  # micro-batches of 4: no padding needed here


def test_uninterrupted_session_is_nestedlibs_run(model, uninterrupted):
    """With nothing dropped, a session is `run` on the paper's nested sampler with per-sample streams."""
    labelled = prepare("mnist-dit", cond=[3, 1, 4, 1, 5, 9, 2, 6], guidance_scale=1.5)
    gens = sample_generators(0, range(8))
    ref = run(paper_samplers(labelled, NFE, OUTER)["nested"], labelled.noise(gens), generator=gens)
    assert torch.allclose(ref.x0, uninterrupted.x0(), atol=1e-5)  # per-row guidance vs one scale: same formula
    assert ref.nfe == uninterrupted.nfe["calls"]


def test_survivors_do_not_depend_on_how_many_are_left(model, uninterrupted):
    """Pruned to one candidate (a batch of 1, padded to the micro-batch) and branched around: still the same bits."""
    g = session(model)
    g.run(1)
    g.keep([2, 7])
    g.branch(7, 3)  # two new streams beside candidate 7, which goes on with its own
    g.run(1)
    g.drop([2])
    g.run()
    assert torch.equal(g.x0([7]), uninterrupted.x0([7]))
    assert g.nfe["padded_rows"] > g.nfe["image_nfe"]  # the cost of bit-identity: 3 rows padded to 4


def test_reconditioned_candidate_equals_a_fresh_run_with_the_new_class(model, uninterrupted):
    g = session(model)
    g.run(2)
    g.condition(4, label=8, guidance=3.0)  # candidate 4 was a 5
    g.run()
    before, after = g.candidates[4].previews, uninterrupted.candidates[4].previews
    assert all(torch.equal(a, b) for a, b in zip(before[:2], after[:2]))  # the same up to the change
    assert all(not torch.allclose(a, b, atol=1e-3) for a, b in zip(before[2:], after[2:]))  # different from then on
    fresh = Guided(model, [5], indices=[4], seed=0, total_nfe=NFE, outer=OUTER)  # candidate 4 alone
    fresh.run(2)
    fresh.condition(4, label=8, guidance=3.0)
    fresh.run()
    assert torch.equal(fresh.x0(), g.x0([4]))
    assert torch.equal(g.x0([0, 1, 2, 3, 5, 6, 7]), uninterrupted.x0([0, 1, 2, 3, 5, 6, 7]))  # the others unmoved


def test_branches_are_deterministic_and_differ(model, uninterrupted):
    def branched():
        g = session(model)
        g.run(3)
        ids = g.branch(1, 3)
        g.keep(ids)
        g.run()
        return g, ids

    (a, ids), (b, _) = branched(), branched()
    assert ids == [1, 8, 9] and [a.candidates[i].key for i in ids] == ["0:1", "0:1.1", "0:1.2"]
    assert torch.equal(a.x0(), b.x0())  # the same choices give the same images
    assert torch.equal(a.x0([1]), uninterrupted.x0([1]))  # the parent continues its own stream
    x = a.x0()
    assert not torch.allclose(x[0], x[1], atol=1e-3) and not torch.allclose(x[1], x[2], atol=1e-3)
    assert a.nfe["planned_image_nfe"] == 8 * NFE + 2 * 8 and a.nfe["image_nfe"] == 8 * 12 + 3 * 8


def test_per_row_guidance_is_the_same_formula():
    fn = lambda x, t, c: x * (1 + c.reshape(-1, 1).to(x.dtype))  # noqa: E731
    x, c, null = torch.randn(3, 2), torch.tensor([1, 2, 3]), torch.zeros(3, dtype=torch.long)
    one = Network(fn, cond=c, null_cond=null, guidance_scale=2.5)(x, 10)
    rows = Network(fn, cond=c, null_cond=null, guidance_scale=torch.tensor([2.5, 2.5, 2.5]))(x, 10)
    assert torch.equal(one, rows)
    with pytest.raises(ValueError, match="one per sample"):
        Network(fn, cond=c, null_cond=null, guidance_scale=torch.tensor([2.5, 2.5]))(x, 10)


def test_bad_input_says_what_to_do(model):
    g = Guided(model, [3, 4], seed=0, total_nfe=NFE, outer=OUTER)
    with pytest.raises(ValueError, match="unknown candidate id"):
        g.drop([5])
    with pytest.raises(ValueError, match="out of range"):
        g.condition(0, label=10)
    with pytest.raises(ValueError, match="out of range"):
        Guided(model, [3, -1], total_nfe=NFE, outer=OUTER)
    with pytest.raises(ValueError, match="n >= 1"):
        g.branch(0, 0)
    with pytest.raises(ValueError, match=">= 0"):
        g.condition(0, guidance=-1)
    with pytest.raises(ValueError, match="micro_batch"):
        Guided(model, [3], micro_batch=0)
    with pytest.raises(ValueError, match="distinct index"):
        Guided(model, [3, 4], indices=[1, 1])
    with pytest.raises(ValueError, match="unknown sampler"):
        Guided(model, [3], sampler="nestd")
    g.drop([0, 1])
    with pytest.raises(ValueError, match="every candidate was dropped"):
        g.step()
    assert g.nfe["calls"] == 0 and g.nfe["saved"] == 2 * NFE


def test_widget_driven_from_python(model, uninterrupted):
    """Untick, re-class, branch and Continue as a person would; the thread leaves the kernel free."""
    from nestedlib.guided_widget import GuidedWidget

    w = GuidedWidget(session(model), render=lambda x0: b"\x89PNG\r\n\x1a\n" + bytes(16))
    assert len(w.grid.children) == 8 and not w.continue_button.disabled
    w.continue_button.click()
    w.join(60)
    assert w.session.step_index == 1 and w.progress.value == 4 and "4 network calls" in w.counter.value
    for i in (1, 2, 3, 4):
        w.panels[i]["keep"].value = False
    w.panels[5]["class"].value, w.panels[6]["guidance"].value = 7, 4.0
    w.panels[0]["branch"].click()  # candidate 8 appears
    assert len(w.grid.children) == 9 and w.session.candidates[8].parent == 0
    w.continue_button.click()
    w.join(60)
    s = w.session
    assert s.alive == [0, 5, 6, 7, 8] and int(s.candidates[5].cond) == 7 and s.candidates[6].guidance == 4.0
    assert w.panels[1]["keep"].disabled and "dropped before step 2" in w.panels[1]["label"].value
    assert "saved" in w.counter.value and s.nfe["saved"] == 4 * 16 and f"{s.nfe['saved']} saved" in w.counter.value
    while not s.done:
        w.continue_button.click()
        w.join(60)
    assert w.continue_button.disabled and torch.equal(s.x0([0, 7]), uninterrupted.x0([0, 7]))


def test_widget_stop_cuts_a_step_short(model):
    from nestedlib.guided_widget import GuidedWidget

    w = GuidedWidget(Guided(model, [3, 4], seed=0, total_nfe=NFE, outer=OUTER), render=lambda x0: b"")
    w.stop()  # pressed before Continue: the session ends with nothing sampled
    w.continue_button.click()
    assert w.thread is None and w.continue_button.disabled and w.session.nfe["calls"] == 0
    w2 = GuidedWidget(Guided(model, [3, 4], seed=0, total_nfe=NFE, outer=OUTER), render=lambda x0: b"")
    w2._stop.set()  # Stop pressed while the step runs: it ends at the first inner event, and the step is undone
    w2.continue_button.click()
    w2.join(60)
    n = w2.session.nfe
    assert w2.stopped and w2.session.step_index == 0 and w2.error is None
    assert n["calls"] == 0 and n["interrupted_calls"] == 1  # the one NFE spent before the stop, reported apart


def test_widget_applies_only_what_the_user_changed():
    """Class 1000 (unconditional) and w = 12 lie outside the widget's boxes (classes 0-9, w <= 10): shown clamped,
    they must stay 1000 and 12 when Continue is pressed with nothing touched."""
    from nestedlib.guided_widget import GuidedWidget

    free = prepare("mnist-dit", cond=[1000, 3], guidance_scale=1.0)  # an unconditional and a labelled candidate
    by_hand = Guided(free, seed=0, total_nfe=NFE, outer=OUTER, guidance=12.0)
    by_hand.step()
    w = GuidedWidget(Guided(free, seed=0, total_nfe=NFE, outer=OUTER, guidance=12.0), render=lambda x0: b"")
    w.continue_button.click()
    w.join(60)
    s = w.session
    assert w.error is None and s.step_index == 1
    assert [int(s.candidates[i].cond) for i in (0, 1)] == [1000, 3]
    assert [s.candidates[i].guidance for i in (0, 1)] == [12.0, 12.0]
    assert torch.equal(s.previews(), by_hand.previews())
    w.panels[1]["guidance"].value = 4.0  # a real change still applies, to that candidate only
    w.continue_button.click()
    w.join(60)
    assert s.candidates[1].guidance == 4.0 and s.candidates[0].guidance == 12.0 and int(s.candidates[0].cond) == 1000


def test_a_dropped_candidate_cannot_be_branched_or_reconditioned(model):
    g = session(model)
    g.run(1)
    g.drop([2])
    g.run(1)
    with pytest.raises(ValueError, match="dropped candidate"):
        g.branch(2, 2)  # its x_t stopped at step 1, the session is at step 2
    with pytest.raises(ValueError, match="dropped candidate"):
        g.condition(2, label=5)
    with pytest.raises(ValueError, match="dropped candidate"):
        g.keep([2])  # would drop every kept candidate and leave the session empty
    assert len(g.candidates) == 8 and len(g.alive) == 7


@pytest.mark.parametrize("stop, at", [(StopSampling, 1), (KeyboardInterrupt, 3), (StopSampling, 5)])
def test_a_stop_inside_a_step_undoes_it(model, uninterrupted, stop, at):
    """A stop inside an outer step (the callback raising, or Ctrl-C at the n-th inner event) leaves the session as
    before that step: continuing gives the uninterrupted run bit for bit, at the same NFE count."""
    events = []

    def callback(event):
        events.append(event)
        if len(events) == at:
            raise stop

    g = session(model)
    g.run(1)
    with pytest.raises(stop):
        g.step(callback)
    assert g.step_index == 1 and g.nfe["calls"] == NFE // OUTER and g.nfe["interrupted_calls"] == min(at, 4)
    g.run()
    assert torch.equal(g.x0(), uninterrupted.x0())
    assert all(torch.equal(a, b) for i in g.alive
               for a, b in zip(g.candidates[i].previews, uninterrupted.candidates[i].previews))
    assert g.nfe["calls"] == uninterrupted.nfe["calls"] and g.nfe["image_nfe"] == uninterrupted.nfe["image_nfe"]


def test_silent_bad_input_is_refused(model):
    g = session(model)
    for bad in (math.inf, -math.inf, math.nan):
        with pytest.raises(ValueError, match="finite number >= 0"):
            g.condition(0, guidance=bad)
        with pytest.raises(ValueError, match="finite number >= 0"):
            Guided(model, [3], total_nfe=NFE, outer=OUTER, guidance=bad)
    for steps in (-1, 0, 2.0, True):
        with pytest.raises(ValueError, match="positive number of outer steps"):
            g.run(steps)
    with pytest.raises(ValueError, match="only 5 of 5 are left"):
        g.run(6)
    assert g.step_index == 0 and g.nfe["calls"] == 0
    with pytest.raises(ValueError, match="whole number"):
        g.condition(0, label=3.5)
    with pytest.raises(ValueError, match="whole number"):
        Guided(model, [3, "3"], total_nfe=NFE, outer=OUTER)
    g.run()
    for action in (lambda: g.keep([0]), lambda: g.condition(0, label=4), lambda: g.branch(0, 2), lambda: g.drop([0])):
        with pytest.raises(ValueError, match="after the end"):
            action()
    assert g.alive == list(range(8)) and len(g.candidates) == 8


@pytest.mark.parametrize("label", [np.int64(3), np.int32(3), 3.0, np.float64(3.0), torch.tensor(3), torch.tensor([3])])
def test_integral_labels_of_any_type_are_accepted(model, label):
    g = Guided(model, [label, 4], seed=0, total_nfe=NFE, outer=OUTER)
    assert int(g.candidates[0].cond) == 3 and g.candidates[0].cond.dtype == torch.long
    g.condition(1, label=label)
    assert int(g.candidates[1].cond) == 3


def test_guided_chapter_claims(tmp_path):
    """The chapter's claims, for 3 seeds (tests/test_notebooks.py's SMALL parameters)."""
    from test_notebooks import execute

    r = execute("guided", tmp_path)
    p, r = r["parameters"], r["results"]
    early, rest = r["early_nfe"], p["total_nfe"] - r["early_nfe"]
    m, s = r["match_rate"], r["saving"]
    names = ["vanilla DDPM", "nested, DDPM inner (paper)", "vanilla DDIM", "nested, DDIM inner"]
    for seed in map(str, p["seeds"]):
        at = {n: m[n][seed][str(early)] for n in names}
        assert all(m[n][seed][str(p["total_nfe"])] == 1.0 for n in names)
        # the paper's stochastic inner process: the first preview does not show the final digit (nor does DDPM's mean)
        assert at["nested, DDPM inner (paper)"] < 0.4 and at["vanilla DDPM"] < 0.4
        # a deterministic inner process: it mostly does, far more often than any other sampler's preview at 20 %
        assert at["nested, DDIM inner"] >= 0.5 and all(at["nested, DDIM inner"] > at[n] + 0.15 for n in names[:3])
        ok = s["nested, DDIM inner"][seed]
        assert ok["per_good_pruned"] < 0.6 * ok["per_good_full"] and ok["recall"] >= 0.5  # pruning pays
        for n in names[:2]:  # with the paper's DDPM samplers it costs more per good image than not pruning at all
            bad = s[n][seed]
            assert bad["per_good_pruned"] is None or bad["per_good_pruned"] > bad["per_good_full"]
        for n in names[:3]:  # and with any other preview it keeps fewer good images, each at a higher price
            bad = s[n][seed]
            assert bad["recall"] < ok["recall"] - 0.15
            assert bad["per_good_pruned"] is None or bad["per_good_pruned"] > 1.3 * ok["per_good_pruned"]
    session, n = r["session"], r["session"]["nfe"]
    dropped = p["n_candidates"] - len(session["final_classes"])
    assert n["saved"] == dropped * rest and n["image_nfe"] + n["saved"] == n["planned_image_nfe"]
    assert n["calls"] == p["total_nfe"]
    # the session drops enough candidates to empty a micro-batch: the network evaluates fewer rows, not only fewer
    # image-NFEs (the page's counter and cost table)
    assert n["padded_rows"] < session["everyone_nfe"]["padded_rows"] == session["everyone_nfe"]["planned_image_nfe"]

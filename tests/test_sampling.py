"""Algorithms 1 and 2 as anytime samplers: reverting to vanilla, NFE accounting, budgets, errors, guidance."""
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from nestedlib import DDPM, LearnedVariance, Network, nested, run, sample_generators, vanilla
from nestedlib.pipelines import SchedulerSampler, inner_from_scheduler
from nestedlib.sampling import Context
from nestedlib.transitions import randn
from nestedlib.toy import energy_distance


def _noise(seed, n=256):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, dtype=torch.float64, generator=g), g


# ---- "reverts to vanilla" ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("inner_transition, eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.85)])
def test_one_outer_step_is_vanilla_sampling_bit_for_bit(toy_net, schedule, inner_transition, eta):
    x_T, g1 = _noise(1)
    _, g2 = _noise(1)
    nest = run(nested(vanilla(toy_net, schedule, 20, transition=inner_transition, eta=eta), 1), x_T, generator=g1)
    van = run(vanilla(toy_net, schedule, 20, transition=inner_transition, eta=eta), x_T, generator=g2)
    assert torch.equal(nest.x0, van.x0)
    assert nest.nfe == van.nfe == 20


def test_one_inner_step_is_vanilla_ddim_on_the_outer_grid_bit_for_bit(toy_net, schedule):
    x_T, g = _noise(2)
    nest = run(nested(vanilla(toy_net, schedule, 1, transition="ddpm"), 10), x_T, generator=g)
    van = run(vanilla(toy_net, schedule, 10, transition="ddim", t_end=1, drop_end=True), x_T, generator=g)
    assert torch.equal(nest.x0, van.x0)
    assert [p.nfe for p in nest.previews] == [p.nfe for p in van.previews] == list(range(1, 11))
    assert all(torch.equal(a.x0, b.x0) for a, b in zip(nest.previews, van.previews))


def test_nested_and_vanilla_final_samples_are_both_good(toy_net, schedule, mixture):
    ref = mixture.sample(3000, torch.Generator().manual_seed(5))
    x_T, g = _noise(3, 3000)
    nest = run(nested(vanilla(toy_net, schedule, 20, transition="ddpm"), 5), x_T, generator=g)
    van = run(vanilla(toy_net, schedule, 100), x_T, generator=g)
    assert energy_distance(nest.x0, ref) < 0.005 and energy_distance(van.x0, ref) < 0.005
    # anytime: nested's first preview (20 % of the NFEs) is already a sample; vanilla's is the blurry mean
    early_nested, early_vanilla = nest.at(20).x0, van.at(20).x0
    assert energy_distance(early_nested, ref) < 0.1 < energy_distance(early_vanilla, ref)


# ---- NFE accounting and anytime stopping -----------------------------------------------------------------------

def test_nfe_is_counted_at_the_network_and_equals_the_sum_of_inner_steps(toy_net, schedule):
    inner = [3, 5, 2, 7, 1]
    events = []
    x_T, g = _noise(4)
    result = run(nested(vanilla(toy_net, schedule, inner, transition="ddpm"), 5), x_T, generator=g, callback=events.append)
    assert result.nfe == sum(inner) == result.planned_nfe
    assert [p.nfe for p in result.previews] == [3, 8, 10, 17, 18]
    inner_events = [e for e in events if e.depth == 1]
    assert [e.nfe for e in inner_events] == list(range(1, 19))  # every inner x̂_0, one NFE apart
    assert [e.path for e in inner_events][:4] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert [e.t for e in events if e.depth == 0] == [999, 799, 600, 400, 201]
    assert all(e.t_next == -1 for e in inner_events if e.path[1] == inner[e.path[0]] - 1)  # inner runs end clean


def test_stopping_at_a_budget_returns_the_right_preview(toy_net, schedule):
    proc = nested(vanilla(toy_net, schedule, [3, 5, 2, 7, 1], transition="ddpm"), 5)
    x_T, _ = _noise(5)
    full = run(proc, x_T, generator=torch.Generator().manual_seed(0))
    for budget, last in [(3, 3), (9, 8), (10, 10), (16, 10), (17, 17), (100, 18)]:
        part = run(proc, x_T, generator=torch.Generator().manual_seed(0), budget=budget)
        assert part.previews[-1].nfe == last == part.nfe  # no NFE is spent on an outer step that cannot finish
        assert torch.equal(part.x0, full.at(budget).x0)
        assert part.stopped == (None if last == 18 else "budget")


def test_a_budget_below_the_first_preview_is_refused(toy_net, schedule):
    x_T, g = _noise(6)
    with pytest.raises(ValueError, match="costs 20 NFEs; ask for at least 20"):
        run(nested(vanilla(toy_net, schedule, 20), 5), x_T, generator=g, budget=19)
    with pytest.raises(ValueError, match="positive number of NFEs"):
        run(nested(vanilla(toy_net, schedule, 20), 5), x_T, generator=g, budget=0)


def test_keyboard_interrupt_returns_the_last_finished_outer_x0(toy_net, schedule):
    def stop_at_nfe_13(event):
        if event.nfe == 13:
            raise KeyboardInterrupt

    x_T, _ = _noise(7)
    proc = nested(vanilla(toy_net, schedule, 4, transition="ddpm"), 5)
    full = run(proc, x_T, generator=torch.Generator().manual_seed(1))
    part = run(proc, x_T, generator=torch.Generator().manual_seed(1), callback=stop_at_nfe_13)
    assert part.stopped == "interrupt" and part.nfe == 13 and part.previews[-1].nfe == 12
    assert torch.equal(part.x0, full.at(12).x0)
    with pytest.raises(KeyboardInterrupt):  # nothing finished yet: the interrupt goes through
        run(proc, x_T, generator=torch.Generator().manual_seed(1), callback=lambda e: (_ for _ in ()).throw(KeyboardInterrupt))


def test_previews_are_decoded_only_when_asked(toy_net, schedule):
    x_T, g = _noise(8)
    calls = []
    plain = run(nested(vanilla(toy_net, schedule, 2), 3), x_T, generator=g)
    assert all(p.image is None for p in plain.previews)
    decoded = run(nested(vanilla(toy_net, schedule, 2), 3), x_T, generator=g, decode=lambda x0: calls.append(1) or x0.norm())
    assert len(calls) == 3 and all(torch.equal(p.image, p.x0.norm()) for p in decoded.previews)  # its own x̂_0


def test_record_inner_keeps_every_inner_estimate(toy_net, schedule):
    x_T, g = _noise(9)
    result = run(nested(vanilla(toy_net, schedule, 5), 4), x_T, generator=g, record_inner=True)
    assert [e.nfe for e in result.inner] == list(range(1, 21))


# ---- determinism -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda n, s: nested(vanilla(n, s, 4, transition="ddpm"), 5),
    lambda n, s: nested(vanilla(n, s, 4, transition="ddim", eta=0.85), 5, eta=0.3),
    lambda n, s: vanilla(n, s, 20, transition="ddpm"),
])
def test_same_seed_same_numbers(toy_net, schedule, make):
    x_T, _ = _noise(10)
    a = run(make(toy_net, schedule), x_T, generator=torch.Generator().manual_seed(3)).x0
    b = run(make(toy_net, schedule), x_T, generator=torch.Generator().manual_seed(3)).x0
    c = run(make(toy_net, schedule), x_T, generator=torch.Generator().manual_seed(4)).x0
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_per_sample_streams_make_a_sample_independent_of_its_batch(toy_net, schedule):
    """With one stream per sample (keyed by seed and index), a sample comes out the same, bit for bit, whatever batch
    it runs in: what a sharded sweep and pruning candidates rely on."""
    def sample(indices):
        x_T = randn(torch.empty(len(indices), 2, dtype=torch.float64), sample_generators(7, indices))
        proc = nested(vanilla(toy_net, schedule, 4, transition="ddim", eta=0.85), 5)
        return run(proc, x_T, generator=sample_generators(7, indices)).x0

    everything, some = sample(list(range(8))), sample([5, 2])
    assert torch.equal(some, everything[[5, 2]]) and not torch.equal(everything[0], everything[1])
    with pytest.raises(ValueError, match="one per sample"):
        randn(torch.empty(3, 2), sample_generators(0, [0, 1]))


def test_the_global_rng_is_never_touched(toy_net, schedule):
    state = torch.get_rng_state()
    x_T, g = _noise(11)
    run(nested(vanilla(toy_net, schedule, 4, transition="ddpm"), 5), x_T, generator=g)
    assert torch.equal(torch.get_rng_state(), state)


def test_golden_full_loop_numbers(toy_net, schedule):
    """Golden sums in the manner of diffusers' scheduler tests: a refactor that changes numbers fails loudly.

    The toy runs in float64; a different CPU or thread count may reorder additions (about 1e-16 relative each) and
    20 steps through a softmax over modes can amplify that by a few orders of magnitude, never to 1e-9.
    """
    x_T, _ = _noise(12)
    nest = run(nested(vanilla(toy_net, schedule, 4, transition="ddpm"), 5), x_T, generator=torch.Generator().manual_seed(0))
    van = run(vanilla(toy_net, schedule, 20, transition="ddim", eta=0.5), x_T, generator=torch.Generator().manual_seed(0))
    assert nest.x0.sum().item() == pytest.approx(GOLDEN["nested_sum"], rel=1e-9)
    assert nest.x0.abs().mean().item() == pytest.approx(GOLDEN["nested_abs_mean"], rel=1e-9)
    assert van.x0.sum().item() == pytest.approx(GOLDEN["vanilla_sum"], rel=1e-9)


GOLDEN = {"nested_sum": -332.6729254153551, "nested_abs_mean": 1.4609392672120574, "vanilla_sum": -270.6466977926566}


# ---- bad input ---------------------------------------------------------------------------------------------------

def test_bad_inputs_raise_errors_that_say_what_to_do(toy_net, schedule):
    x_T, g = _noise(13)
    with pytest.raises(ValueError, match="positive integer"):
        nested(vanilla(toy_net, schedule, 5), 0)
    with pytest.raises(ValueError, match="positive integer"):
        vanilla(toy_net, schedule, -2)
    with pytest.raises(ValueError, match="at most 202 steps"):  # the last outer t is 201
        run(nested(vanilla(toy_net, schedule, 250), 5), x_T, generator=g)
    with pytest.raises(ValueError, match="eta must lie in"):
        vanilla(toy_net, schedule, 4, transition="ddim", eta=1.2)
    with pytest.raises(ValueError, match="one inner step count per outer step"):
        nested(vanilla(toy_net, schedule, [4, 4]), 5)
    with pytest.raises(ValueError, match="unknown transition"):
        vanilla(toy_net, schedule, 5, transition="euler")
    with pytest.raises(ValueError, match="learned variance is DDPM's"):
        vanilla(toy_net, schedule, 5, transition="ddim", learned_variance=True)
    with pytest.raises(TypeError, match="floating-point tensor"):
        run(vanilla(toy_net, schedule, 5), [[0.0, 1.0]])


def test_mismatched_shapes_are_refused(schedule):
    x_T, g = _noise(14, n=8)
    labels = Network(lambda x, t, c: torch.zeros_like(x), cond=torch.zeros(5), null_cond=torch.zeros(5), guidance_scale=2.0)
    with pytest.raises(ValueError, match="cond has batch size 5 but x has 8"):
        run(vanilla(labels, schedule, 3), x_T, generator=g)
    wrong = Network(lambda x, t, c: torch.zeros(x.shape[0], 3, dtype=x.dtype))
    with pytest.raises(ValueError, match="must return x's shape"):
        run(vanilla(wrong, schedule, 3), x_T, generator=g)
    with pytest.raises(ValueError, match="needs a null condition"):
        Network(lambda x, t, c: x, cond=torch.zeros(8), guidance_scale=1.5)


def test_bad_starting_noise_is_refused_before_the_first_step(toy_net, schedule):
    """A NaN x_T used to give NaN images silently, a wrong shape a raw broadcasting error from inside the step."""
    from nestedlib.inverse import ddrm, super_resolution

    x_T, g = _noise(15, n=4)
    for bad in (float("nan"), float("inf")):
        x = x_T.clone()
        x[1, 0] = bad
        with pytest.raises(ValueError, match="NaN or infinite entries; start from finite noise"):
            run(vanilla(toy_net, schedule, 3), x, generator=g)
    op = super_resolution(4)  # DDRM knows its images: one (1, 32, 32) image per measurement
    sampler = ddrm(Network(lambda x, t, c: torch.zeros_like(x)), schedule, op, torch.zeros(2, 64), 3)
    for shape in [(2, 1, 16, 16), (3, 1, 32, 32), (2, 32, 32)]:
        with pytest.raises(ValueError, match=r"takes \(2, 1, 32, 32\); draw it with model.noise"):
            run(sampler, torch.zeros(shape))
    sized = Network(lambda x, t, c: torch.zeros_like(x), image_shape=(4, 8, 8))  # a model that knows its latents
    with pytest.raises(ValueError, match=r"takes \(batch, 4, 8, 8\)"):
        run(vanilla(sized, schedule, 3), torch.zeros(2, 4, 16, 16))
    assert run(vanilla(sized, schedule, 3), torch.zeros(5, 4, 8, 8)).nfe == 3  # any batch: no condition fixes it


# ---- the public pieces of the loop: one step, one NFE counter, one grid function, one integer check -------------

def test_iterate_is_step_repeated_and_a_run_can_be_resumed_by_hand(toy_net, schedule):
    """`Diffusion.step` is the loop body: stepping by hand under `counting_nfe` is `run`, bit for bit."""
    from nestedlib.sampling import counting_nfe

    proc = nested(vanilla(toy_net, schedule, 4, transition="ddpm"), 5)
    x_T, g = _noise(16)
    ref = run(proc, x_T, generator=g)
    x, g, grid = x_T, _noise(16)[1], proc.grid(999)
    with counting_nfe() as counter:
        for j in range(len(grid)):
            with counting_nfe(counter):  # resumed: the same counter across separate blocks, as a session does
                event = proc.step(x, j, grid, Context(generator=g))
            assert torch.equal(event.x0, ref.previews[j].x0) and event.nfe == ref.previews[j].nfe
            x = event.x
    assert torch.equal(x, ref.previews[-1].x) and counter.count == ref.nfe == 20


def test_nested_counting_counts_in_the_innermost_counter(toy_net):
    from nestedlib.sampling import count_nfe, counting_nfe, nfe_so_far

    with counting_nfe() as outer:
        count_nfe()
        with counting_nfe() as inner:
            count_nfe(), count_nfe()
        assert nfe_so_far() == 1
    assert (outer.count, inner.count, nfe_so_far()) == (1, 2, 0)


def test_one_grid_function_for_every_process(toy_net, schedule):
    from nestedlib.schedules import process_grid

    solver = DPMSolverMultistepScheduler()
    for steps, index in [(5, 0), ([3, 4, 5], 2), (np.int64(6), 0)]:
        d = vanilla(toy_net, schedule, steps, t_end=1, drop_end=True)
        s = SchedulerSampler(solver, toy_net, steps, t_end=1, drop_end=True)
        want = process_grid(steps, 700, index, t_end=1, drop_end=True)
        assert d.grid(700, index) == s.grid(700, index) == want and s.nfe(700, index) == len(want)
    with pytest.raises(ValueError, match="one count per step of the enclosing process"):
        process_grid([3, 4], 700, 2)


def test_positive_integers_may_be_numpy_integers_never_bools(toy_net, schedule):
    from nestedlib.schedules import allocate, positive_int, split_budget

    assert positive_int("n", np.int64(3)) == 3 and type(positive_int("n", np.int32(3))) is int
    for bad in (True, np.bool_(True), 0, -1, 2.0, "3", None):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            positive_int("n", bad)
    x_T, g = _noise(17)
    assert run(vanilla(toy_net, schedule, np.int64(5)), x_T, generator=g, budget=np.int64(3)).nfe == 3
    assert run(nested(vanilla(toy_net, schedule, 2), np.int64(3)), x_T, generator=g).nfe == 6
    assert split_budget(np.int64(20), np.int32(5)) == 4 and sum(allocate(np.int64(20), np.int64(4))) == 20
    with pytest.raises(ValueError, match="positive integer"):
        vanilla(toy_net, schedule, [4, True])


# ---- guidance and learned variance: part of the network, used by the inner process only --------------------------

class Recorder:
    """A fake conditional network: eps = cond-dependent constant; variance channels = cond-dependent too."""

    def __init__(self, learned_variance=False):
        self.batches, self.learned_variance = [], learned_variance

    def __call__(self, x, t, cond):
        self.batches.append(x.shape[0])
        eps = 0.1 * cond[:, None].to(x.dtype).expand(x.shape)
        if not self.learned_variance:
            return eps
        return torch.cat([eps, (cond[:, None].to(x.dtype) / 10 - 0.5).expand(x.shape)], 1)


def test_guidance_is_applied_inside_the_inner_process_only(schedule):
    fn = Recorder()
    x = torch.zeros(4, 2, dtype=torch.float64)
    net = Network(fn, cond=torch.full((4,), 3), null_cond=torch.full((4,), 10), guidance_scale=1.5)
    eps = net(x, 500)
    assert torch.allclose(eps, torch.full_like(x, 1.0 + 1.5 * (0.3 - 1.0)))  # eps_u + s (eps_c - eps_u)
    fn.batches.clear()
    run(nested(vanilla(net, schedule, 3), 4), torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator()))
    assert fn.batches == [8] * 12  # every call is a guided inner call: the outer process never calls the network


def test_the_guided_batch_stacks_its_conditions_once_not_at_every_nfe():
    """As a pipeline does: cond and null_cond are stacked once (cond, null_cond are views of that batch, no second
    copy in memory), every NFE passes the same stacked object; conditions set later are still stacked per call."""
    seen = []
    fn = lambda x, t, c: (seen.append(c), torch.zeros_like(x))[1]  # noqa: E731
    embeds = {"embeds": torch.arange(6.0).reshape(2, 3), "pooled": torch.ones(2, 1)}
    null = {"embeds": -torch.arange(6.0).reshape(2, 3), "pooled": torch.zeros(2, 1)}
    net = Network(fn, cond=embeds, null_cond=null, guidance_scale=3.0)
    x = torch.zeros(2, 4)
    net(x, 10), net(x, 20)
    assert seen[0] is seen[1] and torch.equal(seen[0]["embeds"], torch.cat([embeds["embeds"], null["embeds"]]))
    assert net.cond["embeds"].untyped_storage().data_ptr() == seen[0]["embeds"].untyped_storage().data_ptr()
    assert torch.equal(net.cond["embeds"], embeds["embeds"]) and torch.equal(net.null_cond["pooled"], null["pooled"])
    net.cond = {"embeds": torch.ones(2, 3), "pooled": torch.ones(2, 1)}
    net(x, 30)
    assert torch.equal(seen[-1]["embeds"], torch.cat([torch.ones(2, 3), null["embeds"]]))


def test_guided_channels_leaves_the_others_to_the_conditional_branch():
    """DiT's official sampler guides only the first 3 of its 4 latent channels (`guided_channels=3`)."""
    fn = lambda x, t, c: c[:, None].to(x.dtype).expand(x.shape[0], 2 * x.shape[1])  # eps = v = cond
    net = Network(fn, cond=torch.full((2,), 1.0), null_cond=torch.zeros(2), guidance_scale=4.0, guided_channels=3)
    out = net(torch.zeros(2, 4), 10)
    assert out[:, :3].eq(4.0).all() and out[:, 3:].eq(1.0).all()  # 0 + 4 (1 - 0) on 3 channels; cond's elsewhere


def test_variance_channels_come_from_the_conditional_branch():
    fn = Recorder(learned_variance=True)
    net = Network(fn, cond=torch.full((4,), 3), null_cond=torch.full((4,), 10), guidance_scale=4.0)
    out = net(torch.zeros(4, 2), 100)
    assert torch.allclose(out[:, 2:], torch.full((4, 2), 0.3 - 0.5))


@pytest.mark.parametrize("v", [-1.7, -1.0, -0.3, 0.6, 1.0, 1.4])
def test_learned_variance_step_is_dits_ancestral_step_for_every_v(schedule, v):
    """LearnedVariance + DDPM = diffusers' DDPMScheduler step with variance_type="learned_range" (DiT's step), for
    any network output v, also outside [-1, 1] where sigma_theta^2 < beta~ and no x̂_0 draw could give it.
    Same formula and same noise, both in float64 (diffusers' float32 abar cast to float64): equal to 1e-12."""
    t, t_next = 500, 250
    x_t = torch.randn(3, 4, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fn = lambda x, tt, c: torch.cat([0.3 * x, torch.full_like(x, v)], 1)  # noqa: E731
    est = LearnedVariance(Network(fn), schedule)(x_t, t, t_next, Context())
    ours = DDPM(schedule)(x_t, est.draw, t, t_next, torch.Generator().manual_seed(1), est.variance)
    sched = DDPMScheduler(variance_type="learned_range", clip_sample=False)
    sched.alphas_cumprod, sched.one = sched.alphas_cumprod.double(), sched.one.double()
    sched.set_timesteps(timesteps=[t, t_next])
    theirs = sched.step(fn(x_t, None, None), t, x_t, generator=torch.Generator().manual_seed(1)).prev_sample
    assert (ours - theirs).abs().max().item() < 1e-12
    beta_tilde = (1 - schedule.abar(t_next)) / (1 - schedule.abar(t)) * (1 - schedule.abar(t) / schedule.abar(t_next))
    assert (est.variance.max().item() < beta_tilde) == (v < -1)  # below beta~ exactly when v < -1


def test_a_vanilla_preview_is_the_network_mean(schedule):
    """The paper's (and every preview tool's) vanilla intermediate prediction is E[x_0 | x_t] (DDPM eq. 15)."""
    fn = lambda x, tt, c: torch.cat([0.1 * x, torch.zeros_like(x)], 1)  # noqa: E731  eps = 0.1 x_t, v = 0
    x_T, g = _noise(18, n=64)
    result = run(vanilla(Network(fn), schedule, 5, transition="ddpm", learned_variance=True), x_T, generator=g)
    x = x_T
    for event in result.previews:
        a = schedule.abar(event.t)
        assert torch.allclose(event.x0, (x - (1 - a) ** 0.5 * 0.1 * x) / a**0.5, rtol=1e-12, atol=0)
        x = event.x
    assert not torch.allclose(result.previews[1].x, result.previews[1].x0, atol=0.1)  # the state itself is noisy


def test_the_outer_step_is_deterministic_ddim_on_the_inner_x0(schedule):
    """The outer process adds no noise and calls no network: x_{t'} = sqrt(abar_t') x̂_0 + sqrt(1 - abar_t') epŝ."""
    net = Network(Recorder(learned_variance=True), cond=torch.full((4,), 3), null_cond=torch.full((4,), 10),
                  guidance_scale=1.5)
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    runs = [run(nested(vanilla(net, schedule, 4, transition="ddpm", learned_variance=True), 3), x,
                generator=torch.Generator().manual_seed(seed)) for seed in (1, 2)]
    assert not torch.equal(runs[0].x0, runs[1].x0)  # the inner DDPM steps draw noise ...
    for event in runs[0].previews:
        a, a_next = schedule.abar(event.t), schedule.abar(event.t_next)
        eps = (x - a**0.5 * event.x0) / (1 - a) ** 0.5
        assert torch.allclose(event.x, a_next**0.5 * event.x0 + (1 - a_next) ** 0.5 * eps, rtol=1e-12, atol=1e-12)
        x = event.x  # ... the outer step none


def test_paper_grids_are_the_authors_space_timesteps(schedule):
    """The authors' DiT code builds grids with improved-diffusion's running-sum rounding (golden lists)."""
    proc = nested(vanilla(Network(Recorder()), schedule, 21, transition="ddpm", spacing="space_timesteps"), 5,
                  spacing="space_timesteps")
    assert proc.grid(999) == [999, 799, 599, 400, 200]
    assert proc.x0_sampler.grid(999)[9:12] == [549, 499, 450]  # a rounded linspace gives 500 at the tie
    assert vanilla(Network(Recorder()), schedule, 21).grid(999)[9:12] == [549, 500, 450]
    assert proc.x0_sampler.grid(200)[:3] == [200, 190, 180] and proc.x0_sampler.grid(200)[-1] == 0
    assert nested(vanilla(Network(Recorder()), schedule, 4), 5).grid(999) == [999, 799, 600, 400, 201]


# ---- diffusers schedulers as the inner process ------------------------------------------------------------------

def test_diffusers_ddpm_inner_equals_ours(toy_net, schedule):
    """Same formula, so compared in float64: diffusers' float32 alphas_cumprod are cast to float64 (exactly the values
    ours reads), which leaves only the order of float64 operations between the two (measured: at most 6e-14).
    In float32, its x̂_0 at t = 999 carries ~6e-6 error per unit, amplified by samples between modes (up to 3e-4)."""
    x_T, _ = _noise(15)
    ddpm = DDPMScheduler(clip_sample=False)
    ddpm.alphas_cumprod, ddpm.one = ddpm.alphas_cumprod.double(), ddpm.one.double()
    ours = run(nested(vanilla(toy_net, schedule, 5, transition="ddpm"), 4), x_T, generator=torch.Generator().manual_seed(2))
    theirs = run(nested(inner_from_scheduler(ddpm, toy_net, 5), 4), x_T, generator=torch.Generator().manual_seed(2))
    assert (ours.x0 - theirs.x0).abs().max().item() < 1e-10
    assert theirs.nfe == 20


def test_diffusers_ddim_inner_uses_our_matching_ddim(toy_net, schedule):
    x_T, _ = _noise(16)
    ours = run(nested(vanilla(toy_net, schedule, 5, transition="ddim", eta=0.85), 4), x_T,
               generator=torch.Generator().manual_seed(2))
    theirs = run(nested(inner_from_scheduler(DDIMScheduler(clip_sample=False), toy_net, 5, eta=0.85), 4), x_T,
                 generator=torch.Generator().manual_seed(2))
    assert torch.equal(ours.x0, theirs.x0)


def test_diffusers_ddim_inner_keeps_its_set_alpha_to_one(toy_net, schedule):
    """Stable Diffusion's DDIMScheduler config (set_alpha_to_one=False) ends at abar_0, as the authors' inner DDIM."""
    x_T, _ = _noise(16)
    sched = DDIMScheduler(clip_sample=False, set_alpha_to_one=False)
    ours = run(nested(vanilla(toy_net, schedule, 5, eta=0.85, t_end=1, final_alpha_cumprod=schedule.abar(0)), 4),
               x_T, generator=torch.Generator().manual_seed(2))
    theirs = run(nested(inner_from_scheduler(sched, toy_net, 5, t_end=1, eta=0.85), 4), x_T,
                 generator=torch.Generator().manual_seed(2))
    assert torch.equal(ours.x0, theirs.x0)
    with pytest.raises(ValueError, match="use transition='ddim' with it"):
        vanilla(toy_net, schedule, 5, transition="ddpm", final_alpha_cumprod=schedule.abar(0))


def test_scheduler_sampler_equals_the_schedulers_own_loop(toy_net, schedule):
    """With diffusers' own "linspace" grid, SchedulerSampler from T is exactly DPMSolverMultistepScheduler's loop."""
    x_T, g = _noise(17)
    solver = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)
    ours = SchedulerSampler(solver, toy_net, 8, drop_end=True)(x_T, 999, -1, Context(generator=g)).draw
    solver.set_timesteps(8)
    x = x_T
    for t in solver.timesteps:
        x = solver.step(toy_net(x, int(t)), t, x).prev_sample
    assert torch.equal(ours, x)


def test_dpm_solver_pp_as_the_inner_process(toy_net, schedule, mixture):
    ref = mixture.sample(2000, torch.Generator().manual_seed(5))
    x_T, g = _noise(17, 2000)
    solver = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)
    events = []
    proc = nested(inner_from_scheduler(solver, toy_net, 4, drop_end=True), 5)
    result = run(proc, x_T, generator=g, callback=events.append)
    assert result.nfe == 20 and [e.nfe for e in events if e.depth == 1] == list(range(1, 21))
    # A deterministic inner process does not draw p(x_0 | x_t) (see the eq1 chapter), but 5 x 4 steps still land
    # on the data: two data samples of 2,000 points differ by < 0.004; the Dirac with 2 steps scores 1.6.
    assert energy_distance(result.x0, ref) < 0.05


def test_schedulers_without_custom_timesteps_are_refused(toy_net):
    with pytest.raises(ValueError, match="cannot start at an arbitrary timestep"):
        SchedulerSampler(DDIMScheduler(), toy_net, 4)

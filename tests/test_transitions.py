"""Our transitions q(x_{t'} | x̂_0, x_t) against diffusers' schedulers, given the same x̂_0 (prediction_type="sample")."""
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from nestedlib import CLEAN, DDIM, DDPM, Schedule, outer_timesteps, split_budget, timesteps

BETAS = {"linear": Schedule.linear(), "scaled_linear": Schedule.scaled_linear()}
RANGES = {"linear": dict(beta_start=1e-4, beta_end=0.02), "scaled_linear": dict(beta_start=0.00085, beta_end=0.012)}


def _pair(seed, shape=(4, 3, 5, 5), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)


def _float64(sched):
    """The claim is "our formula equals diffusers'", so both run in float64 on the same abar values: diffusers'
    float32 alphas_cumprod cast to float64 are exactly the numbers ours reads. What is left is the order of float64
    operations, ~1e-16 relative each, far below the 1e-12 asserted. (In float32, diffusers' 1 - abar_t / abar_t'
    near t = 0 keeps only 3-4 digits: up to 1.6e-4 apart from the exact value at 1000 DDIM steps.)"""
    sched.alphas_cumprod = sched.alphas_cumprod.double()
    for name in ("final_alpha_cumprod", "one"):  # abar at the clean end (DDIMScheduler, DDPMScheduler)
        if name in vars(sched):
            setattr(sched, name, getattr(sched, name).double())
    return sched


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear"])
@pytest.mark.parametrize("grid", [None, [999, 749, 500, 250, 0], [999, 666, 334, 1], [600, 413, 77, 3]])
def test_ddpm_matches_diffusers(beta_schedule, grid):
    sched = DDPMScheduler(beta_schedule=beta_schedule, **RANGES[beta_schedule], prediction_type="sample", clip_sample=False)
    if grid is None:
        sched.set_timesteps(50)
    else:
        sched.set_timesteps(timesteps=grid)
    _float64(sched)
    ours = DDPM(BETAS[beta_schedule])
    worst = 0.0
    for i, t in enumerate(sched.timesteps.tolist()):
        x_t, x0 = _pair(i)
        prev = sched.previous_timestep(t)
        prev = int(prev) if int(prev) >= 0 else CLEAN
        theirs = sched.step(x0, t, x_t, generator=torch.Generator().manual_seed(i)).prev_sample
        mine = ours(x_t, x0, t, prev, torch.Generator().manual_seed(i))
        worst = max(worst, (theirs - mine).abs().max().item())
    # diffusers clamps beta~ at 1e-20, so its step to the clean end (t' = -1, beta~ = 0) still adds 1e-10 z (|z| < 6
    # here); ours returns x̂_0 there. Any formula difference would show at 1e-3 or more.
    assert worst <= 1e-12 + 6e-10


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear"])
@pytest.mark.parametrize("eta", [0.0, 0.25, 0.5, 0.85, 1.0])
@pytest.mark.parametrize("n", [4, 10, 50, 250, 1000])
def test_ddim_matches_diffusers(beta_schedule, eta, n):
    sched = DDIMScheduler(beta_schedule=beta_schedule, **RANGES[beta_schedule], prediction_type="sample", clip_sample=False)
    sched.set_timesteps(n)
    _float64(sched)
    ours = DDIM(BETAS[beta_schedule], eta)
    worst = 0.0
    for i, t in enumerate(sched.timesteps.tolist()):
        x_t, x0 = _pair(100 + i)
        prev = t - 1000 // n  # DDIMScheduler's own stride
        theirs = sched.step(x0, t, x_t, eta=eta, generator=torch.Generator().manual_seed(i)).prev_sample
        mine = ours(x_t, x0, t, prev if prev >= 0 else CLEAN, torch.Generator().manual_seed(i))
        worst = max(worst, (theirs - mine).abs().max().item())
    assert worst <= 1e-12


@pytest.mark.parametrize("eta", [0.0, 0.85, 1.0])
@pytest.mark.parametrize("n", [4, 10, 50, 250])
def test_ddim_ending_at_abar_0_matches_diffusers_set_alpha_to_one_false(eta, n):
    """Stable Diffusion's scheduler config (set_alpha_to_one=False, steps_offset=1): its grid ends at t = 1 and the
    last step goes to final_alpha_cumprod = abar_0, as the authors' inner DDIM does; float64 as in `_float64`."""
    sched = DDIMScheduler(beta_schedule="scaled_linear", **RANGES["scaled_linear"], prediction_type="sample",
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    sched.set_timesteps(n)
    assert int(sched.timesteps[-1]) == 1
    _float64(sched)
    s = BETAS["scaled_linear"]
    ours = DDIM(s, eta, final_alpha_cumprod=s.abar(0))
    worst = 0.0
    for i, t in enumerate(sched.timesteps.tolist()):
        x_t, x0 = _pair(200 + i)
        prev = t - 1000 // n
        theirs = sched.step(x0, t, x_t, eta=eta, generator=torch.Generator().manual_seed(i)).prev_sample
        mine = ours(x_t, x0, t, prev if prev >= 0 else CLEAN, torch.Generator().manual_seed(i))
        worst = max(worst, (theirs - mine).abs().max().item())
    assert worst <= 1e-12


def test_the_authors_sd_ending_draws_once_more_and_keeps_epsilon():
    """The step from t = 1 to abar_0 = 0.99915: 0.99957 x̂_0 + 0.0292 epŝ at eta = 0 (no draw); one draw at eta > 0."""
    s = BETAS["scaled_linear"]
    x_t, x0 = _pair(10)
    eps = (x_t - s.abar(1) ** 0.5 * x0) / (1 - s.abar(1)) ** 0.5
    assert s.abar(0) == pytest.approx(0.99915, abs=1e-7)  # 1 - beta_0 in float32
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    out = DDIM(s, 0.0, s.abar(0))(x_t, x0, 1, CLEAN, g)
    assert torch.equal(g.get_state(), state)
    assert (out - (0.999575 * x0 + 0.029155 * eps)).abs().max().item() < 1e-5 * (x0.abs() + eps.abs()).max().item()
    g, ref = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    out = DDIM(s, 0.85, s.abar(0))(x_t, x0, 1, CLEAN, g)
    z = torch.randn(x_t.shape, generator=ref, dtype=x_t.dtype)
    assert torch.equal(g.get_state(), ref.get_state())  # exactly one draw of x's shape
    sigma = 0.85 * ((1 - s.abar(0)) / (1 - s.abar(1)) * (1 - s.abar(1) / s.abar(0))) ** 0.5  # DDIM eq. 16
    mean = s.abar(0) ** 0.5 * x0 + (1 - s.abar(0) - sigma**2) ** 0.5 * eps
    assert (out - (mean + sigma * z)).abs().max().item() <= 1e-12


def test_a_bad_final_alpha_cumprod_is_refused():
    s = BETAS["scaled_linear"]
    for bad in (0.0, 1.5, "1"):
        with pytest.raises(ValueError, match="final_alpha_cumprod must lie in"):
            DDIM(s, 0.5, bad)
    x_t, x0 = _pair(11)
    with pytest.raises(ValueError, match="end the grid higher"):  # a grid ending at t = 0 cannot step up to abar_1
        DDIM(s, 0.5, s.abar(1))(x_t, x0, 0, CLEAN)


@pytest.mark.parametrize("t, t_next", [(999, 749), (500, 250), (250, 0), (40, 39)])
def test_ddim_eta_one_is_the_ddpm_posterior(t, t_next):
    """Two formulas of one law (DDIM eq. 16 with eta = 1 is DDPM's beta~), compared in float64."""
    s = BETAS["linear"]
    x_t, x0 = _pair(7)
    a = DDIM(s, 1.0)(x_t, x0, t, t_next, torch.Generator().manual_seed(3))
    b = DDPM(s)(x_t, x0, t, t_next, torch.Generator().manual_seed(3))
    assert (a - b).abs().max().item() <= 1e-12


def test_last_step_returns_x0_exactly():
    s = BETAS["linear"]
    x_t, x0 = _pair(8)
    assert torch.equal(DDPM(s)(x_t, x0, 0, CLEAN), x0)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert torch.equal(DDIM(s, 0.85)(x_t, x0, 334, CLEAN, g), x0)  # final_alpha_cumprod = 1: exact, and no draw
    assert torch.equal(g.get_state(), state)


def test_ddim_eta_zero_is_deterministic_and_draws_nothing():
    s = BETAS["linear"]
    x_t, x0 = _pair(9)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    DDIM(s, 0.0)(x_t, x0, 999, 500, g)
    assert torch.equal(g.get_state(), state)


@pytest.mark.parametrize("eta", [-0.1, 1.5, "1"])
def test_eta_outside_unit_interval_is_refused(eta):
    with pytest.raises(ValueError, match="eta must lie in"):
        DDIM(BETAS["linear"], eta)


def test_schedules_equal_diffusers():
    for name, ours in BETAS.items():
        theirs = DDPMScheduler(beta_schedule=name, **RANGES[name])
        assert torch.equal(ours.alphas_cumprod, theirs.alphas_cumprod)


def test_grids_follow_the_paper_settings():
    assert timesteps(999, 5) == [999, 749, 500, 250, 0]  # DiT inner process, both ends
    assert timesteps(999, 4, t_end=1) == [999, 666, 334, 1]  # authors' SD inner process
    assert outer_timesteps(5) == [999, 799, 600, 400, 201]
    sd = outer_timesteps(25)
    assert len(sd) == 25 and sd[0] == 999 and 1 not in sd
    assert timesteps(17, 1) == [17]
    assert timesteps(10, 11) == list(range(10, -1, -1))


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_invalid_step_counts_are_refused(steps):
    with pytest.raises(ValueError, match="positive integer"):
        timesteps(999, steps)


def test_too_many_steps_say_how_many_fit():
    with pytest.raises(ValueError, match="at most 202 steps"):
        timesteps(201, 250)


def test_budgets_that_do_not_divide_are_refused():
    assert split_budget(250, 5) == 50
    with pytest.raises(ValueError, match="does not divide into 3 outer steps"):
        split_budget(100, 3)
    with pytest.raises(ValueError, match="positive integer"):
        split_budget(0, 5)


def test_abar_of_unknown_timestep_is_refused():
    with pytest.raises(ValueError, match="outside"):
        BETAS["linear"].abar(1000)


@pytest.mark.parametrize("eta", [0.0, 0.85])
def test_clipping_x0_is_diffusers_ddim_with_the_clipped_models_epsilon_and_nothing_else(eta):
    """One rule for x̂_0 clipping: `vanilla(..., clip=r)` (NetworkMean's clipped x̂_0, then the DDIM transition,
    which takes the epsilon that x̂_0 implies) is DDIMScheduler(clip_sample=True).step(...,
    use_clipped_model_output=True), step for step in float64; its default step keeps the network's epsilon, differs,
    and is refused wherever nestedlib would stand in for it (`refuse_clipping`)."""
    from nestedlib import NetworkMean, vanilla
    from nestedlib.pipelines import inner_from_scheduler

    s, n, r = BETAS["linear"], 10, 1.0
    sched = _float64(DDIMScheduler(clip_sample=True, clip_sample_range=r))
    sched.set_timesteps(n)
    worst, default_gap = 0.0, 0.0
    for i, t in enumerate(sched.timesteps.tolist()):
        x_t, eps = _pair(300 + i)
        x_t = 2 * x_t  # wide enough that x̂_0 leaves [-1, 1] at every t
        mean = NetworkMean(lambda x, tt, e=eps: e, s, clip=r)
        x0 = mean.mean(x_t, t)[0]
        assert bool((x0.abs() == r).any())  # clipping happened
        prev = t - 1000 // n
        mine = DDIM(s, eta)(x_t, x0, t, prev if prev >= 0 else CLEAN, torch.Generator().manual_seed(i))
        theirs = sched.step(eps, t, x_t, eta=eta, use_clipped_model_output=True,
                            generator=torch.Generator().manual_seed(i)).prev_sample
        default = sched.step(eps, t, x_t, eta=eta, generator=torch.Generator().manual_seed(i)).prev_sample
        worst = max(worst, (theirs - mine).abs().max().item())
        default_gap = max(default_gap, (default - mine).abs().max().item())
    assert worst <= 1e-12 and default_gap > 1e-2
    assert vanilla(lambda x, tt: x, s, n, clip=r).x0_sampler.clip == r
    for config, what in ((dict(), "clips"), (dict(clip_sample=False, thresholding=True), "thresholds")):
        with pytest.raises(ValueError, match=f"DDIMScheduler {what} x̂_0 .*clip_sample=False, thresholding=False"):
            inner_from_scheduler(DDIMScheduler(**config), lambda x, tt: x, 4)  # DDIMScheduler's default clips

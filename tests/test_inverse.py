"""Inverse problems: the operators' SVDs, DDRM's step (Kawar et al. 2022, eq. 8), and the chapter's claims."""
import pytest
import torch

from nestedlib import DDIM, Network, Schedule, run, vanilla
from nestedlib.inverse import DDRM, Operator, centre_mask, ddrm, inpainting, nested_ddrm, super_resolution
from nestedlib.sampling import Context, NetworkMean
from nestedlib.schedules import CLEAN, outer_timesteps, timesteps
from nestedlib.transitions import ddim_sigma, ddim_step

SCHEDULE = Schedule.linear()
OPERATORS = {
    "inpaint_centre": lambda: inpainting(centre_mask(32, 14)),
    "inpaint_lower_half": lambda: inpainting(torch.arange(32)[:, None].expand(32, 32) < 16),
    "sr4": lambda: super_resolution(4),
    "sr2_noisy": lambda: super_resolution(2, sigma_y=0.1),
}


@pytest.fixture(scope="module", params=list(OPERATORS))
def op(request):
    return OPERATORS[request.param]()


def test_svd_reconstructs_the_operator(op):
    A = op.matrix
    assert torch.allclose(op.U @ op.U.T, torch.eye(op.m, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(op.V @ op.V.T, torch.eye(op.n, dtype=torch.float64), atol=1e-10)
    x = torch.randn(5, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(op(x), x.reshape(5, -1).double() @ A.T, atol=1e-10)  # A x through U Σ V^T == the matrix


def test_operators_are_what_they_say():
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sr = super_resolution(4)
    blocks = x.reshape(3, 8, 4, 8, 4).mean((2, 4)).reshape(3, 64)
    assert torch.allclose(sr(x), blocks, atol=1e-12) and torch.allclose(sr.s, torch.full((64,), 0.25, dtype=torch.float64))
    mask = centre_mask(32, 14)
    ip = inpainting(mask)
    assert ip.m == 32 * 32 - 14 * 14 and torch.allclose(ip.s, torch.ones(ip.m, dtype=torch.float64))
    assert torch.allclose(ip(x), x.reshape(3, -1)[:, mask.flatten()], atol=1e-12)


def test_pseudo_inverse(op):
    """Moore-Penrose: A A^+ y = y, and A^+ y is orthogonal to A's null space (equals pinv(A) y)."""
    y = torch.randn(4, op.m, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = op.pinv(y).double()
    assert torch.allclose(op(x), y, atol=1e-5)  # float32 images: error ~1e-6 relative
    expected = y @ torch.linalg.pinv(op.matrix).T
    assert torch.allclose(x.reshape(4, -1), expected, atol=1e-5)


def test_bad_input_says_what_to_do():
    with pytest.raises(ValueError, match="one entry per pixel"):
        inpainting(torch.ones(28, 28, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        inpainting(torch.ones(32, 32))
    with pytest.raises(ValueError, match="divides the image size 32"):
        super_resolution(3)
    with pytest.raises(ValueError, match=">= 0"):
        super_resolution(4, sigma_y=-0.1)
    with pytest.raises(ValueError, match="one y per image"):
        op = super_resolution(4)
        DDRM(SCHEDULE, op, torch.zeros(2, 64))(torch.zeros(3, 1, 32, 32), torch.zeros(3, 1, 32, 32), 999, 500)
    with pytest.raises(ValueError, match=r"\(batch, 64\)"):
        DDRM(SCHEDULE, super_resolution(4), torch.zeros(2, 63))
    with pytest.raises(ValueError, match="eta"):
        DDRM(SCHEDULE, super_resolution(4), torch.zeros(2, 64), eta=1.5)


def nothing_measured(V: torch.Tensor) -> Operator:
    """An operator with all singular values 0: y says nothing about x."""
    return Operator(torch.eye(8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64), V, (1, 32, 32))


@pytest.mark.parametrize("t,t_next", [(999, 799), (500, 250), (120, 0), (50, CLEAN)])
def test_ddrm_with_nothing_measured_is_ddim_eta0(t, t_next):
    V = torch.linalg.qr(torch.randn(1024, 1024, generator=torch.Generator().manual_seed(3), dtype=torch.float64))[0]
    g = torch.Generator().manual_seed(4)
    x_t, x0 = torch.randn(2, 1, 32, 32, generator=g), torch.randn(2, 1, 32, 32, generator=g)
    got = DDRM(SCHEDULE, nothing_measured(V), torch.zeros(2, 8), eta=0.0)(x_t, x0, t, t_next)
    assert torch.allclose(got, DDIM(SCHEDULE, 0.0)(x_t, x0, t, t_next), atol=1e-5)


@pytest.mark.parametrize("eta", [0.3, 0.85])
def test_ddrm_with_nothing_measured_is_ddim_with_its_sigma(eta):
    """DDRM's eta gives DDIM's sigma = eta sqrt(1 - abar_{t'}), i.e. DDIM eq. 16 with eta' below (same noise)."""
    t, t_next = 999, 0
    abar_t, abar_n = SCHEDULE.abar(t), SCHEDULE.abar(t_next)
    eta_ddim = eta * (1 - abar_n) ** 0.5 / ddim_sigma(abar_t, abar_n, 1.0)
    assert eta_ddim <= 1
    g = torch.Generator().manual_seed(5)
    x_t, x0 = torch.randn(2, 1, 32, 32, generator=g), torch.randn(2, 1, 32, 32, generator=g)
    got = DDRM(SCHEDULE, nothing_measured(torch.eye(1024, dtype=torch.float64)), torch.zeros(2, 8), eta=eta)(
        x_t, x0, t, t_next, torch.Generator().manual_seed(6))
    noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(6))
    assert torch.allclose(got, ddim_step(x_t, x0, abar_t, abar_n, eta_ddim, noise), atol=1e-5)


@pytest.mark.parametrize("name", ["inpaint_centre", "sr4"])
def test_noiseless_ddrm_keeps_the_measurement(name):
    """sigma_y = 0, eta_b = 1: the measured components of x_{t'} are sqrt(abar') ȳ + sqrt(1 - abar') z; at the clean
    end they are ȳ, so A x = y exactly, whatever x̂_0 was."""
    op = OPERATORS[name]()
    g = torch.Generator().manual_seed(7)
    truth = torch.randn(3, 1, 32, 32, generator=g)
    y = op.measure(truth)
    q = DDRM(SCHEDULE, op, y.float())
    x_t, x0 = torch.randn(3, 1, 32, 32, generator=g), torch.randn(3, 1, 32, 32, generator=g)
    assert torch.allclose(op(q(x_t, x0, 10, CLEAN)), y, atol=1e-5)
    assert torch.allclose(op(q.project(x0)), y, atol=1e-5)
    # an intermediate step: measured components carry ȳ, scaled, plus fresh noise of the step's variance
    abar = SCHEDULE.abar(200)
    xs = [q(x_t, x0, 400, 200, torch.Generator().manual_seed(s)) for s in range(200)]
    measured = torch.stack([op.to_spectral(x)[:, : op.m] for x in xs])
    assert torch.allclose(measured.mean(0), abar**0.5 * q.ybar, atol=4 * (1 - abar) ** 0.5 / 200**0.5)
    assert abs(float(measured.std(0).mean()) - (1 - abar) ** 0.5) < 0.02


def test_pinv_keeps_the_dtype_of_y(op):
    y = torch.randn(2, op.m, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    x64, x32 = op.pinv(y), op.pinv(y.float())
    assert x64.dtype == torch.float64 and x32.dtype == torch.float32
    assert torch.allclose(op(x64), y, atol=1e-10)  # float64 all the way: rounding of 1e-13 at most, not float32's 1e-6


def stand_in_network() -> Network:
    """A stand-in for a trained network whose x̂_0 = 0.8 tanh(x_t) (DDPM eq. 15 solved for epsilon): images of order 1,
    not consistent with y, which is all this test needs."""
    abar = SCHEDULE.alphas_cumprod

    def eps(x, t, c):
        a = abar[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * 0.8 * torch.tanh(x)) / (1 - a).sqrt()

    return Network(eps)


@pytest.mark.parametrize("eta_b", [0.3, 0.7, 1.0])
@pytest.mark.parametrize("name", ["inpaint_centre", "sr4"])
def test_ddrm_steps_from_the_networks_x0_and_projects_only_the_previews(name, eta_b):
    """Kawar et al.'s reference loop (`efficient_generalized_steps`): x0_t = the network's estimate, then eq. 8 from
    x0_t. Our ddrm / nested_ddrm must be that chain for every eta_b; the projection onto y is what previews show.
    The same operations in the same order as ours without the projection, so the chains agree to float32 rounding
    (values of order 1, a few dozen operations of relative error 6e-8 each: 1e-5 is a wide margin; measured: equal
    bits); the old chain, fed the projected x̂_0, ended 0.07 to 0.39 away from this one at eta_b < 1."""
    op, net = OPERATORS[name](), stand_in_network()
    g = torch.Generator().manual_seed(12)
    y = op.measure(torch.randn(2, 1, 32, 32, generator=g).clamp(-1, 1)).float()
    x_T = torch.randn(2, 1, 32, 32, generator=g)
    q, mean = DDRM(SCHEDULE, op, y, 0.85, eta_b), NetworkMean(net, SCHEDULE)
    for process, grid, x0_of in [
        (ddrm(net, SCHEDULE, op, y, 8, eta_b=eta_b), timesteps(999, 8), lambda x, t: mean.mean(x, t)[0]),
        (nested_ddrm(vanilla(net, SCHEDULE, 3), op, y, 3, eta_b=eta_b), outer_timesteps(3),
         lambda x, t: run(vanilla(net, SCHEDULE, 3), x, t_start=t).previews[-1].x),
    ]:
        ours = run(process, x_T, generator=torch.Generator().manual_seed(13)).previews
        x, gen = x_T, torch.Generator().manual_seed(13)
        for j, t in enumerate(grid):
            x0 = x0_of(x, t)  # x0_t: the x0-sampler's own estimate, never projected
            x = q(x, x0, t, grid[j + 1] if j + 1 < len(grid) else CLEAN, gen)  # eq. 8 from x0_t
            assert (ours[j].x - x).abs().max() < 1e-5, (j, float((ours[j].x - x).abs().max()))
            assert (ours[j].x0 - q.project(x0)).abs().max() < 1e-5  # the preview: x0_t made consistent with y
    if eta_b == 1.0:  # noiseless, eta_b = 1: the projection is exact, the last image explains y (float32 images)
        assert torch.allclose(op(ours[-1].x0), y.double(), atol=1e-5)


# --- The chapter's claims, on three seeds at a small size (one papermill run). -------------------------------------

CI = dict(seeds=[0, 1, 2], n_images=8, total_nfe=50, tasks=["inpaint", "sr4_noisy"],
          methods=["ddrm", "nested", "nested_plain"], n_reference=200)


@pytest.fixture(scope="module")
def chapter(tmp_path_factory):
    from test_notebooks import execute

    return execute("inverse", tmp_path_factory.mktemp("inverse"), **CI)["results"]


def _value(rec: dict, name: str, k: int, key: str) -> float:
    if key in ("fid", "kid"):
        return rec[name]["quality"][str(k)][key]
    return [row[key] for row in rec[name]["curve"] if row["nfe"] <= k][-1]


@pytest.mark.slow  # its fixture executes the chapter
def test_inverse_chapter_claims(chapter):
    first, last = chapter["checkpoints"][0], chapter["checkpoints"][-1]
    seeds = chapter["per_seed"]
    assert len(seeds) == 3
    for seed, rec in seeds.items():
        tasks = rec["tasks"]
        inpaint, noisy = tasks["inpaint"], tasks["sr4_noisy"]
        # every preview of every sampler explains a noiseless measurement (the projection)
        for name in CI["methods"]:
            assert max(row["consistency"] for row in inpaint[name]["curve"]) < 1e-3
        # noisy: DDRM's first previews miss y by several noise norms, nested's first is within a small multiple
        noise = noisy["noise_norm"]
        assert _value(noisy, "ddrm", first, "consistency") > 4 * noise
        assert _value(noisy, "nested", first, "consistency") < 2.5 * noise
        # early quality: at the first nested preview, lower KID than DDRM's preview at that NFE, on every task
        for task in tasks.values():
            assert _value(task, "nested", first, "kid") + 0.05 < _value(task, "ddrm", first, "kid"), seed
        # super-resolution: much closer in SSIM and closer in PSNR early on
        assert _value(noisy, "nested", first, "ssim") > _value(noisy, "ddrm", first, "ssim") + 0.3
        assert _value(noisy, "nested", first, "psnr") > _value(noisy, "ddrm", first, "psnr") + 1.0
        # final quality: close, either way
        for task in tasks.values():
            assert abs(_value(task, "nested", last, "psnr") - _value(task, "ddrm", last, "psnr")) < 2.0
            assert abs(_value(task, "nested", last, "ssim") - _value(task, "ddrm", last, "ssim")) < 0.06
        # a plain inner process: further from the truth than both, and worse at explaining a noisy y than DDRM
        for task in tasks.values():
            for k in chapter["checkpoints"]:
                plain = _value(task, "nested_plain", k, "psnr")
                assert plain < min(_value(task, "nested", k, "psnr"), _value(task, "ddrm", k, "psnr")), (seed, k)
        assert _value(noisy, "nested_plain", last, "consistency") > 2 * _value(noisy, "ddrm", last, "consistency")
    # where nested does not win: inpainting PSNR, DDRM ahead on average over seeds at every budget
    mean = chapter["mean"]["inpaint"]
    for k in chapter["checkpoints"]:
        assert mean["ddrm"][str(k)]["psnr"] > mean["nested"][str(k)]["psnr"] + 0.3, k

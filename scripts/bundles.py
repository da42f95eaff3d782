"""What each bundled model in data/ is: its architecture, its chain, its tokenizer, and how its folder is written.

`nestedlib.models` loads these folders (registry, sha256 check, clear errors); this module builds and writes them,
for `train.py` and `evaluate.py`. Each builder returns a freshly initialised model with the shipped
hyper-parameters; `tiny=True` gives a smaller one for tests. The 8x8 UNet's builder stays in nestedlib
(`nestedlib.architectures.build_digits8_unet`), because the chapter "Train your own" builds it too.

Conventions shared by the bundled latent models (so they behave like DiT-XL/2 and SD 1.5):

* The autoencoder's latents are *normalised per channel* with the training split's mean and std.
  The normalisation is folded into the autoencoder's 1x1 ``quant_conv``/``post_quant_conv``, so
  ``vae.encode`` already returns normalised latents and ``scaling_factor`` is 1; the statistics
  are kept in ``data/mnist-vae/latent_stats.json`` for the record (diffusers warns about unknown
  keys in config.json, hence a file of their own).
* The DiT has ``num_embeds_ada_norm=1000`` so that its null class is 1000, the value diffusers'
  ``DiTPipeline`` hard-codes for classifier-free guidance; only labels 0..9 and 1000 are trained.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch

from nestedlib import architectures, data, models, prompts, weights

DIT_NULL_CLASS = 1000  # null label of DiTPipeline's guidance (hard-coded there)
SD_NULL_PROMPT = ""  # empty prompt = unconditional branch of guidance

# The bundled models by their short command-line key (`python scripts/train.py dit`): the registry is the only list.
BUNDLED: dict[str, models.ModelInfo] = {m.key: m for m in models.REGISTRY.values() if m.kind == "bundled"}


def bundled(key_or_name: str) -> models.ModelInfo:
    """The bundled model named on a command line, by its key (`dit`) or its registry name (`mnist-dit`)."""
    for m in BUNDLED.values():
        if key_or_name in (m.key, m.name):
            return m
    known = ", ".join(f"{k} ({m.name})" for k, m in BUNDLED.items())
    raise argparse.ArgumentTypeError(f"unknown bundled model {key_or_name!r}; choose one of: {known}")


# ----------------------------------------------------------------------------------------------
# The chains, as diffusers scheduler configs (saved with each pipeline; nestedlib reads them back)
# ----------------------------------------------------------------------------------------------


def ddpm_scheduler_config() -> dict[str, Any]:
    """The chain of DDPM/DiT: 1000 steps, linear betas 1e-4..0.02 (Ho et al. 2020, sec. 4) = `Schedule.linear()`."""
    return {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
            "clip_sample": False}


def sd_scheduler_config() -> dict[str, Any]:
    """The chain of Stable Diffusion 1.5: scaled-linear betas 0.00085..0.012 = `Schedule.scaled_linear()`."""
    return {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
            "beta_end": 0.012, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}


# ----------------------------------------------------------------------------------------------
# Architectures
# ----------------------------------------------------------------------------------------------


def build_classifier(tiny: bool = False) -> architectures.DigitClassifier:
    """The evaluation classifier (shipped: width 32, 128 features)."""
    return architectures.DigitClassifier(width=8 if tiny else 32, num_features=16 if tiny else 128)


def build_vae(tiny: bool = False):
    """diffusers AutoencoderKL 1x32x32 -> 4x8x8, the encoder E and decoder D of LDM (shipped: (16, 32, 32))."""
    from diffusers import AutoencoderKL

    ch = (8, 8, 8) if tiny else (16, 32, 32)
    return AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=4, sample_size=32,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=ch, layers_per_block=1, norm_num_groups=8, scaling_factor=1.0,
    )


def build_dit(tiny: bool = False, out_channels: int = 8):
    """diffusers DiTTransformer2DModel on 4x8x8 latents predicting [eps_theta, v] (DiT's learn_sigma), or with
    out_channels=4 the velocity of a rectified flow (mnist-flow)."""
    from diffusers import DiTTransformer2DModel

    model = DiTTransformer2DModel(
        num_attention_heads=2 if tiny else 4, attention_head_dim=8 if tiny else 32,
        in_channels=4, out_channels=out_channels,  # 8 = 4 noise channels + 4 variance-interpolation channels (v)
        num_layers=1 if tiny else 6, sample_size=8, patch_size=2,
        num_embeds_ada_norm=DIT_NULL_CLASS,  # labels 0..999 (we use 0..9); row 1000 = null class for CFG
    )
    return architectures.disable_label_dropout(model)


def build_emoji_classifier(tiny: bool = False) -> architectures.DigitClassifier:
    """The emoji judge: the digit classifier's CNN on 3x32x32, 9 categories (shipped: width 48, 128 features)."""
    return architectures.DigitClassifier(width=8 if tiny else 48, num_features=16 if tiny else 128,
                                         num_classes=models.EMOJI_CLASSES, in_channels=3)


def build_emoji_vae(tiny: bool = False):
    """diffusers AutoencoderKL 3x32x32 -> 4x8x8 for the colour emoji (shipped: (32, 64, 64), 1 layer per block).

    4x8x8 = 256 numbers for 3,072 pixel values (12x, a quarter of SD's 48x); wider than mnist-vae because colour
    and the diversity of emoji need more than strokes of one grey. Sized for the CPU it was trained on: 0.95M
    parameters, 0.63 s per step of 64 on one thread, where (32, 64, 128) with 2 layers per block (3.5M) costs 1.3 s."""
    from diffusers import AutoencoderKL

    ch = (8, 8, 8) if tiny else (32, 64, 64)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=ch, layers_per_block=1, norm_num_groups=8, scaling_factor=1.0,
    )


def build_emoji_dit(tiny: bool = False):
    """diffusers DiTTransformer2DModel on emoji-vae's 4x8x8 latents predicting [eps_theta, v] (shipped: 4 heads x 48,
    6 layers, patch 2: 16 tokens of width 192, 5.8M parameters, 11.5 MB in float16; mnist-dit has 128 x 6, DiT-S/2
    384 x 12)."""
    from diffusers import DiTTransformer2DModel

    model = DiTTransformer2DModel(
        num_attention_heads=2 if tiny else 4, attention_head_dim=8 if tiny else 48,
        in_channels=4, out_channels=8,  # 4 noise channels + 4 variance-interpolation channels (v)
        num_layers=1 if tiny else 6, sample_size=8, patch_size=2,
        num_embeds_ada_norm=DIT_NULL_CLASS,  # labels 0..999 (we use 0..8); row 1000 = null class for CFG
    )
    return architectures.disable_label_dropout(model)


def build_pixel_unet(tiny: bool = False):
    """diffusers UNet2DModel predicting epsilon on 1x32x32 MNIST pixels (shipped: (16, 32, 64), attention at 8x8).

    Sized for the CPU: about 0.7M parameters and 3-5 ms per image-NFE on one thread, where (32, 64, 64) costs about
    10 ms (measured at batch 64); pixel space, so that a measurement y = A x is taken of the image itself."""
    from diffusers import UNet2DModel

    ch = (8, 8, 16) if tiny else (16, 32, 64)
    return UNet2DModel(
        sample_size=32, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=ch,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=8,
        dropout=0.1,  # 4,000 training digits: dropout and random shifts against memorising them
    )


def build_tokenizer(max_length: int = 16):
    """CLIPTokenizer over the vocabulary of the label prompts (`prompts.prompts_for`), one token per word."""
    from transformers import CLIPTokenizer

    words = sorted({w for c in range(10) for p in prompts.prompts_for(c) for w in p.split()})
    chars = sorted({ch for w in words for ch in w})
    vocab: dict[str, int] = {}
    for tok in chars + [c + "</w>" for c in chars]:  # single characters: BPE fallback
        vocab.setdefault(tok, len(vocab))
    merges: list[tuple[str, str]] = []
    for w in words:  # merge chain building each word left to right: s e -> se, se v -> sev, ...
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        left = parts[0]
        for right in parts[1:]:
            if (left, right) not in merges:
                merges.append((left, right))
            left = left + right
            vocab.setdefault(left, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length, pad_token="<|endoftext|>")


def build_text_encoder(vocab_size: int, tiny: bool = False, max_length: int = 16):
    """LDM's text encoder tau_theta: a small transformers CLIPTextModel trained from scratch (hidden 64, 2 layers)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=16 if tiny else 64, intermediate_size=32 if tiny else 128,
        num_hidden_layers=1 if tiny else 2, num_attention_heads=2 if tiny else 4,
        max_position_embeddings=max_length, projection_dim=16 if tiny else 64,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )
    return CLIPTextModel(cfg)


def build_sd_unet(tiny: bool = False, cross_attention_dim: int = 64):
    """diffusers UNet2DConditionModel eps_theta(z_t, t, tau_theta(y)) on 4x8x8 latents, cross-attending to the text."""
    from diffusers import UNet2DConditionModel

    ch = (16, 32) if tiny else (32, 64)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=ch,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8,
    )


# ----------------------------------------------------------------------------------------------
# The autoencoder's latent normalisation
# ----------------------------------------------------------------------------------------------

LATENT_STATS_FILE = "latent_stats.json"


def load_latent_stats(root: str | os.PathLike | None = None, name: str = "mnist-vae") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean m and std s of the raw training latents, already folded into the VAE `name`: (4,), (4,)."""
    stats = json.loads((models.model_dir(name, root) / LATENT_STATS_FILE).read_text())
    return torch.tensor(stats["latent_mean"]), torch.tensor(stats["latent_std"])


@torch.no_grad()
def fold_latent_normalisation(vae, mean: torch.Tensor, std: torch.Tensor):
    """Fold z_n = (z - m) / s into quant_conv and z = s z_n + m into post_quant_conv (exact, affine)."""
    qc, pqc = vae.quant_conv, vae.post_quant_conv  # 1x1 convs: moments (2C) and z (C)
    c = mean.numel()
    # quant_conv outputs [mu (C), logvar (C)]: mu_n = (mu - m)/s, logvar_n = logvar - 2 log s
    qc.weight[:c] /= std.view(c, 1, 1, 1)
    qc.bias[:c] = (qc.bias[:c] - mean) / std
    qc.bias[c:] -= 2 * torch.log(std)
    # post_quant_conv(z) = W z + b with z = s z_n + m  ->  W' = W diag(s), b' = b + W m
    w = pqc.weight[:, :, 0, 0]  # (C_out, C)
    pqc.bias += w @ mean
    pqc.weight *= std.view(1, c, 1, 1)
    vae.register_to_config(scaling_factor=1.0)
    return vae


# ----------------------------------------------------------------------------------------------
# Writing a bundled folder
# ----------------------------------------------------------------------------------------------


def save_classifier(model: architectures.DigitClassifier, folder: Path) -> None:
    """Save the classifier as model.safetensors + config.json (what `nestedlib.models.load` rebuilds it from)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(model.config, indent=2) + "\n")


def write_checksums(folder: Path) -> Path:
    """Write SHA256SUMS (sha256sum format, checked by `nestedlib.models.load`) for every weight and config file."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json", ".txt"))
    lines = [f"{weights.file_sha256(p)}  {p.relative_to(folder).as_posix()}" for p in files]
    (folder / weights.SUMS_FILE).write_text("\n".join(lines) + "\n")
    return folder / weights.SUMS_FILE


# ----------------------------------------------------------------------------------------------
# The preview decoders' data: latents as the samplers see them, and the VAE decoder's images of them
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def preview_latents(dit_pipe, z0: torch.Tensor, labels: torch.Tensor, g: torch.Generator, chunk: int = 50,
                    guidance: float | None = None) -> torch.Tensor:
    """Vanilla previews x̂_0 = E[z_0 | z_t] (DDPM eq. 15) of clean latents z0: z_t = sqrt(abar) z0 + sqrt(1-abar) eps
    with one t ~ U{0..999} per chunk, through the DiT (paper preset, its book guidance scale)."""
    from nestedlib import Schedule
    from nestedlib.pipelines import dit_model
    from nestedlib.sampling import predict_x0

    schedule = Schedule.linear()  # mnist-dit's chain
    scale = models.info("mnist-dit").guidance if guidance is None else guidance
    out = []
    for i in range(0, len(z0), chunk):
        z, y = z0[i : i + chunk], labels[i : i + chunk]
        t = int(torch.randint(0, schedule.num_timesteps, (1,), generator=g))
        zt = schedule.add_noise(z, t, torch.randn(z.shape, generator=g))
        net = dit_model(dit_pipe, y, scale, preset="paper").network
        out.append(predict_x0(zt, net(zt, t)[:, : z.shape[1]], schedule.abar(t)))
    return torch.cat(out)


@torch.no_grad()
def vae_images(vae, z: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """D(z) clamped to [-1, 1]: the full decoder's images (scaling_factor 1), the preview decoders' targets."""
    return torch.cat([vae.decode(z[i : i + batch]).sample.clamp(-1, 1) for i in range(0, len(z), batch)])


@torch.no_grad()
def encode_split(vae, x: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of the (normalised) latents of images x: (N,4,8,8) each."""
    mus, stds = [], []
    for i in range(0, len(x), batch):
        d = vae.encode(x[i : i + batch]).latent_dist
        mus.append(d.mean)
        stds.append(d.std)
    return torch.cat(mus), torch.cat(stds)


def decoder_training_set(vae, dit_pipe, g: torch.Generator, split: str = "train") -> dict[str, torch.Tensor]:
    """Latents of one MNIST split as the samplers see them (normalised, as the DiT's x̂_0 before `model.decode`) and
    the full VAE decoder's images of them: "clean" (posterior means and one posterior draw per digit, what the DiT
    was trained on) and "preview" (two vanilla previews E[z_0 | z_t] per digit, t ~ U{0..999}, through the DiT)."""
    x, y = data.mnist(split)
    mu, std = encode_split(vae, x)
    clean = torch.cat([mu, mu + std * torch.randn(mu.shape, generator=g)])
    perm = torch.randperm(2 * len(mu), generator=g)  # mixed classes within each chunk of one t
    z0, labels = torch.cat([clean[len(mu):]] * 2)[perm], torch.cat([y, y])[perm]
    preview = preview_latents(dit_pipe, z0, labels, g)
    return {"clean": clean, "clean_images": vae_images(vae, clean), "clean_labels": torch.cat([y, y]),
            "preview": preview, "preview_images": vae_images(vae, preview), "preview_labels": labels}


def save_preview_decoders(decoders, folder: Path) -> None:
    """Save nestedlib.decoders.PreviewDecoders as model.safetensors + config.json (what `models.load` rebuilds)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in decoders.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(decoders.config, indent=2) + "\n")

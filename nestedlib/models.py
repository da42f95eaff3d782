"""Model registry: the bundled small models in ``data/`` and the real hub models they stand in for.

One name picks a model; ``load(name)`` returns a diffusers object (or, for the classifier, a torch
module) so that a chapter runs the same code on the bundled stand-in and on the real model:

=========================================  ===============================  ============================
name                                       returns                          stands in for / role
=========================================  ===============================  ============================
``mnist-dit``                              ``DiTPipeline``                  ``facebook/DiT-XL-2-256``
``mnist-sd``                               ``StableDiffusionPipeline``      Stable Diffusion 1.5
``digits8``                                ``DDPMPipeline``                 8x8 pixel teaching model
``mnist-vae``                              ``AutoencoderKL``                the shared latent autoencoder
``mnist-classifier``                       ``DigitClassifier``              evaluation network (accuracy, FID features)
``facebook/DiT-XL-2-256``                  ``DiTPipeline`` (hub, online)    the paper's ImageNet model
``stable-diffusion-v1-5/stable-diffusion-v1-5``  ``StableDiffusionPipeline`` (hub)  the paper's text model
=========================================  ===============================  ============================

Each bundled folder ``data/<name>/`` holds diffusers-style weights (safetensors + config.json),
``SHA256SUMS`` (checked on every load), ``MODEL_CARD.md`` and ``samples.png``.

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

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

DATA_ROOT = Path(__file__).resolve().parents[1] / "data"
SUMS_FILE = "SHA256SUMS"
DIT_NULL_CLASS = 1000  # null label of DiTPipeline's guidance (hard-coded there)
SD_NULL_PROMPT = ""  # empty prompt = unconditional branch of guidance


class ModelError(RuntimeError):
    """A model cannot be loaded; the message says what to do."""


class UnknownModelError(ModelError, KeyError):
    """The model name is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class CorruptWeightsError(ModelError):
    """A bundled weight file is missing or its sha256 does not match SHA256SUMS."""


class HubOfflineError(ModelError):
    """A hub model was requested but the hub cannot be reached."""


@dataclass(frozen=True)
class ModelInfo:
    """One registry entry: a bundled model in data/ or a real model on the Hugging Face hub."""

    name: str
    kind: str  # "bundled" or "hub"
    description: str
    train_command: str | None = None  # bundled: command that retrains it from scratch
    stand_in: str | None = None  # hub: the bundled model that replaces it offline


REGISTRY: dict[str, ModelInfo] = {
    m.name: m
    for m in [
        ModelInfo("mnist-dit", "bundled", "class-conditional latent DiT on MNIST (DiT-XL/2 stand-in)",
                  "python scripts/train.py dit"),
        ModelInfo("mnist-sd", "bundled", "text-conditioned latent UNet on MNIST (Stable Diffusion 1.5 stand-in)",
                  "python scripts/train.py sd"),
        ModelInfo("digits8", "bundled", "8x8 pixel epsilon model on scikit-learn digits",
                  "python scripts/train.py digits8"),
        ModelInfo("mnist-vae", "bundled", "latent autoencoder 1x32x32 -> 4x8x8 shared by mnist-dit and mnist-sd",
                  "python scripts/train.py vae"),
        ModelInfo("mnist-classifier", "bundled", "evaluation classifier (accuracy and FID features)",
                  "python scripts/train.py classifier"),
        ModelInfo("facebook/DiT-XL-2-256", "hub", "DiT-XL/2 at 256 px on ImageNet (the paper's model)",
                  stand_in="mnist-dit"),
        ModelInfo("stable-diffusion-v1-5/stable-diffusion-v1-5", "hub", "Stable Diffusion 1.5 (the paper's text model)",
                  stand_in="mnist-sd"),
    ]
}


def info(name: str) -> ModelInfo:
    """Registry lookup; an unknown name raises UnknownModelError listing the known names."""
    if name not in REGISTRY:
        known = ", ".join(REGISTRY)
        raise UnknownModelError(f"unknown model {name!r}; known models: {known}")
    return REGISTRY[name]


# ----------------------------------------------------------------------------------------------
# Architectures (config builders). Each returns a freshly initialised model with the shipped
# hyper-parameters; the `tiny` flag gives a smaller one for tests.
# ----------------------------------------------------------------------------------------------


class DigitClassifier(nn.Module):
    """Small CNN classifier of 1x32x32 digits in [-1, 1]; penultimate layer = FID features."""

    def __init__(self, width: int = 32, num_features: int = 128, num_classes: int = 10, in_size: int = 32):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 32 -> 16
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 16 -> 8
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 8 -> 4
            nn.Flatten(),
            nn.Linear(4 * w * (in_size // 8) ** 2, num_features), nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(num_features, num_classes)
        self.config = {"width": width, "num_features": num_features, "num_classes": num_classes, "in_size": in_size}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations phi(x) (N, num_features): the feature space of our FID."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, num_classes) of images x (N, 1, 32, 32) in [-1, 1]."""
        return self.head(self.dropout(self.features(x)))


def build_classifier(tiny: bool = False) -> DigitClassifier:
    """The evaluation classifier (shipped: width 32, 128 features)."""
    return DigitClassifier(width=8 if tiny else 32, num_features=16 if tiny else 128)


def build_vae(tiny: bool = False):
    """diffusers AutoencoderKL 1x32x32 -> 4x8x8 (shipped: block_out_channels (16, 32, 32))."""
    from diffusers import AutoencoderKL

    ch = (8, 8, 8) if tiny else (16, 32, 32)
    return AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=4, sample_size=32,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=ch, layers_per_block=1, norm_num_groups=8, scaling_factor=1.0,
    )


def build_dit(tiny: bool = False):
    """diffusers DiTTransformer2DModel on 4x8x8 latents, noise + learned variance (out_channels 8)."""
    from diffusers import DiTTransformer2DModel

    model = DiTTransformer2DModel(
        num_attention_heads=2 if tiny else 4, attention_head_dim=8 if tiny else 32,
        in_channels=4, out_channels=8,  # 8 = 4 noise channels + 4 variance-interpolation channels (v)
        num_layers=1 if tiny else 6, sample_size=8, patch_size=2,
        num_embeds_ada_norm=1000,  # labels 0..999 (we use 0..9); row 1000 = null class for CFG
    )
    disable_label_dropout(model)
    return model


def disable_label_dropout(model: nn.Module) -> nn.Module:
    """Turn off diffusers' own 10 % label dropout (it draws from the global RNG); we drop labels ourselves."""
    from diffusers.models.embeddings import LabelEmbedding

    for m in model.modules():
        if isinstance(m, LabelEmbedding):
            m.dropout_prob = 0.0  # the null row (index num_classes) stays in the embedding table
    return model


def build_digits8_unet(tiny: bool = False):
    """diffusers UNet2DModel predicting epsilon on 1x8x8 digits."""
    from diffusers import UNet2DModel

    ch = (16, 32) if tiny else (32, 64)
    return UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=ch, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=8,
    )


def ddpm_scheduler_config() -> dict[str, Any]:
    """The chain of DDPM/DiT: 1000 steps, linear betas 1e-4..0.02 (Ho et al. 2020, sec. 4)."""
    return {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
            "clip_sample": False}


def sd_scheduler_config() -> dict[str, Any]:
    """The chain of Stable Diffusion 1.5: 1000 steps, scaled-linear betas 0.00085..0.012."""
    return {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
            "beta_end": 0.012, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}


# --- text side of the SD stand-in --------------------------------------------------------------

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PROMPT_TEMPLATES = [
    "a handwritten {word}", "the digit {digit}", "a handwritten digit {digit}", "the number {word}",
    "a {word}", "{digit}", "an image of the digit {word}", "a drawing of a {digit}",
]


def prompts_for(label: int) -> list[str]:
    """All training prompts of one digit label (e.g. 7 -> 'a handwritten seven', 'the digit 7', ...)."""
    return [t.format(word=NUMBER_WORDS[label], digit=label) for t in PROMPT_TEMPLATES]


def build_tokenizer(max_length: int = 16):
    """CLIPTokenizer over the tiny vocabulary of the label prompts (one token per word)."""
    from transformers import CLIPTokenizer

    words = sorted({w for c in range(10) for p in prompts_for(c) for w in p.split()})
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
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length, pad_token="<|endoftext|>")
    return tok


def build_text_encoder(vocab_size: int, tiny: bool = False, max_length: int = 16):
    """Small transformers CLIPTextModel trained from scratch (hidden 64, 2 layers)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=16 if tiny else 64, intermediate_size=32 if tiny else 128,
        num_hidden_layers=1 if tiny else 2, num_attention_heads=2 if tiny else 4,
        max_position_embeddings=max_length, projection_dim=16 if tiny else 64,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )
    return CLIPTextModel(cfg)


def build_sd_unet(tiny: bool = False, cross_attention_dim: int = 64):
    """diffusers UNet2DConditionModel on 4x8x8 latents with cross-attention to the text encoder."""
    from diffusers import UNet2DConditionModel

    ch = (16, 32) if tiny else (32, 64)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=ch,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8,
    )


# ----------------------------------------------------------------------------------------------
# Saving and loading bundled folders, with checksums
# ----------------------------------------------------------------------------------------------


def model_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    """Folder of a bundled model: <root or data/>/<name>."""
    if info(name).kind != "bundled":
        raise ModelError(f"{name!r} is a hub model; it has no folder in data/")
    return Path(root) if root is not None and Path(root).name == name else Path(root or DATA_ROOT) / name


def _sha256(path: Path) -> str:
    """sha256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(folder: Path) -> Path:
    """Write SHA256SUMS (sha256sum format) for every weight and config file under folder."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json", ".txt"))
    lines = [f"{_sha256(p)}  {p.relative_to(folder).as_posix()}" for p in files]
    (folder / SUMS_FILE).write_text("\n".join(lines) + "\n")
    return folder / SUMS_FILE


def verify_checksums(folder: Path, name: str) -> None:
    """Check every file listed in SHA256SUMS; missing or corrupt files raise CorruptWeightsError."""
    folder = Path(folder)
    cmd = REGISTRY[name].train_command if name in REGISTRY else "python scripts/train.py"
    fix = f"re-clone the repository (git checkout -- data/{name}) or retrain with `{cmd}`"
    sums = folder / SUMS_FILE
    if not sums.is_file():
        raise CorruptWeightsError(f"model {name!r}: {sums} is missing (weights not bundled here?); {fix}")
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, rel = line.split(maxsplit=1)
        path = folder / rel.strip()
        if not path.is_file():
            raise CorruptWeightsError(f"model {name!r}: file {path} is missing; {fix}")
        if _sha256(path) != digest:
            raise CorruptWeightsError(f"model {name!r}: file {path} is corrupt (sha256 mismatch); {fix}")


def save_classifier(model: DigitClassifier, folder: Path) -> None:
    """Save the classifier as model.safetensors + config.json."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(model.config, indent=2) + "\n")


def _load_classifier(folder: Path) -> DigitClassifier:
    """Rebuild the classifier from config.json and model.safetensors."""
    from safetensors.torch import load_file

    model = DigitClassifier(**json.loads((folder / "config.json").read_text()))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval()


def _hub_error(name: str, err: Exception | None) -> HubOfflineError:
    """The error of a hub model requested offline: says so and names the bundled stand-in."""
    stand_in = REGISTRY[name].stand_in
    why = f" ({type(err).__name__}: {err})" if err is not None else " (HF_HUB_OFFLINE is set)"
    return HubOfflineError(
        f"{name!r} is a Hugging Face hub model and the hub cannot be reached: offline{why}. "
        f"Use the bundled stand-in model={stand_in!r} (runs offline on a CPU), "
        f"or connect to the internet (a GPU is advised) and unset HF_HUB_OFFLINE."
    )


def _offline() -> bool:
    """True when the environment asks huggingface_hub to stay offline."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _load_hub(name: str, device: str | torch.device, dtype: torch.dtype | None):
    """Load a real model through diffusers from the hub (online only)."""
    from diffusers import DiTPipeline, StableDiffusionPipeline

    if _offline():
        raise _hub_error(name, None)
    cls = DiTPipeline if REGISTRY[name].stand_in == "mnist-dit" else StableDiffusionPipeline
    kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
    if cls is StableDiffusionPipeline:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = cls.from_pretrained(name, **kwargs)
    except (OSError, ConnectionError, ValueError) as err:  # hub unreachable or files not cached
        raise _hub_error(name, err) from err
    return pipe.to(device)


def load(name: str, device: str | torch.device = "cpu", root: str | os.PathLike | None = None,
         dtype: torch.dtype | None = None) -> Any:
    """Load a model by registry name (bundled from data/ after a sha256 check, or from the hub)."""
    entry = info(name)
    if entry.kind == "hub":
        return _load_hub(name, device, dtype)
    folder = model_dir(name, root)
    verify_checksums(folder, name)
    if name == "mnist-classifier":
        return _load_classifier(folder).to(device)
    from diffusers import AutoencoderKL, DDPMPipeline, DiTPipeline, StableDiffusionPipeline

    f32 = torch.float32
    if name == "mnist-vae":
        return AutoencoderKL.from_pretrained(folder, dtype=f32).to(device).eval()
    if name == "mnist-dit":
        pipe = DiTPipeline.from_pretrained(folder, dtype=f32)
        disable_label_dropout(pipe.transformer)
    elif name == "mnist-sd":
        pipe = StableDiffusionPipeline.from_pretrained(
            folder, dtype=f32, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    else:  # digits8
        pipe = DDPMPipeline.from_pretrained(folder, dtype=f32)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


LATENT_STATS_FILE = "latent_stats.json"


def load_latent_stats(root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the raw training latents, already folded into mnist-vae: (4,), (4,)."""
    stats = json.loads((model_dir("mnist-vae", root) / LATENT_STATS_FILE).read_text())
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

"""Model registry: the bundled small models in ``data/`` and the real hub models they stand in for.

One name picks a model (`REGISTRY` below lists them); ``load(name)`` returns a diffusers object (or, for the
classifier, a torch module), so that a chapter runs the same code on the bundled stand-in and on the real model.
Each bundled folder ``data/<name>/`` holds diffusers-style weights (safetensors + config.json),
``SHA256SUMS`` (checked on every load), ``MODEL_CARD.md`` and ``samples.png``. ``scripts/train.py`` builds,
trains and writes them (architectures and writing in ``scripts/bundles.py``), ``scripts/evaluate.py`` measures them.
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
    key: str | None = None  # bundled: its short name on the scripts' command lines
    stand_in: str | None = None  # hub: the bundled model that replaces it offline

    @property
    def train_command(self) -> str | None:
        """Bundled: the command that retrains it from scratch."""
        return f"python scripts/train.py {self.key}" if self.key else None


REGISTRY: dict[str, ModelInfo] = {
    m.name: m
    for m in [
        ModelInfo("mnist-dit", "bundled", "class-conditional latent DiT on MNIST (DiT-XL/2 stand-in)", key="dit"),
        ModelInfo("mnist-sd", "bundled", "text-conditioned latent UNet on MNIST (Stable Diffusion 1.5 stand-in)",
                  key="sd"),
        ModelInfo("digits8", "bundled", "8x8 pixel epsilon model on scikit-learn digits", key="digits8"),
        ModelInfo("mnist-pixel", "bundled", "32x32 pixel epsilon model on MNIST (inverse problems)", key="pixel"),
        ModelInfo("mnist-vae", "bundled", "latent autoencoder 1x32x32 -> 4x8x8 shared by mnist-dit and mnist-sd",
                  key="vae"),
        ModelInfo("mnist-classifier", "bundled", "evaluation classifier (accuracy and FID features)", key="classifier"),
        ModelInfo("mnist-tiny-decoder", "bundled", "cheap preview decoders of mnist-vae latents: a least-squares "
                  "linear map and a distilled tiny conv decoder", key="tiny-decoder"),
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


# --- Architectures that loading or a chapter needs (the other builders live in scripts/bundles.py) --------------


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


# --- prompts of the SD stand-in (its tokenizer is built in scripts/bundles.py) --------------------

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PROMPT_TEMPLATES = [
    "a handwritten {word}", "the digit {digit}", "a handwritten digit {digit}", "the number {word}",
    "a {word}", "{digit}", "an image of the digit {word}", "a drawing of a {digit}",
]


def prompts_for(label: int) -> list[str]:
    """All training prompts of one digit label (e.g. 7 -> 'a handwritten seven', 'the digit 7', ...)."""
    return [t.format(word=NUMBER_WORDS[label], digit=label) for t in PROMPT_TEMPLATES]


# --- Loading bundled folders, with checksums (scripts/bundles.py writes them) -----------------------------------


def model_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    """Folder of a bundled model: <root or data/>/<name>."""
    if info(name).kind != "bundled":
        raise ModelError(f"{name!r} is a hub model; it has no folder in data/")
    return Path(root) if root is not None and Path(root).name == name else Path(root or DATA_ROOT) / name


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
        if file_sha256(path) != digest:
            raise CorruptWeightsError(f"model {name!r}: file {path} is corrupt (sha256 mismatch); {fix}")


def _load_classifier(folder: Path) -> DigitClassifier:
    """Rebuild the classifier from config.json and model.safetensors."""
    from safetensors.torch import load_file

    model = DigitClassifier(**json.loads((folder / "config.json").read_text()))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval()


def _load_preview_decoders(folder: Path):
    """Rebuild the linear and tiny preview decoders (nestedlib.decoders) from config.json and model.safetensors."""
    from safetensors.torch import load_file

    from .decoders import PreviewDecoders

    model = PreviewDecoders(**json.loads((folder / "config.json").read_text()))
    model.load_state_dict({k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()})
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
    if name == "mnist-tiny-decoder":
        return _load_preview_decoders(folder).to(device)
    from diffusers import AutoencoderKL, DDPMPipeline, DiTPipeline, StableDiffusionPipeline

    from diffusers.utils import logging as diffusers_logging

    f32 = torch.float32
    if name == "mnist-vae":
        return AutoencoderKL.from_pretrained(folder, dtype=f32).to(device).eval()
    bar = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()  # no "Loading pipeline components" bar for 3 small local files
    try:
        if name == "mnist-dit":
            pipe = DiTPipeline.from_pretrained(folder, dtype=f32)
            disable_label_dropout(pipe.transformer)
        elif name == "mnist-sd":
            pipe = StableDiffusionPipeline.from_pretrained(
                folder, dtype=f32, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        else:  # digits8, mnist-pixel
            pipe = DDPMPipeline.from_pretrained(folder, dtype=f32)
    finally:
        if bar:
            diffusers_logging.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)

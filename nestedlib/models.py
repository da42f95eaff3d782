"""Model registry: every model the book samples or judges, one entry each, with all its facts.

One name picks a model; ``load(name)`` returns a diffusers object (or, for the classifier and the preview decoders, a
torch module), so a chapter runs the same code on a bundled stand-in and on the real hub model, and
``nestedlib.pipelines.prepare(name, ...)`` wraps it for the samplers from the facts of its entry alone. An entry
(`ModelInfo`) says where the model lives (bundled in ``data/<name>/`` or on the hub), how it loads (`loader`, from
nestedlib.weights), how it is wrapped (`family`: "dit", "sd" or "pixel"), its default guidance scale, the class
labels it was trained on and its null class, its latent family (the VAE whose latents it samples) and the cheap
preview decoders fitted to those latents, the classifier that judges its samples, and the presets it supports.

A new model is added in one place, here, as one more entry (or at run time with `register`), e.g. the colour emoji
stand-in for DiT-XL/2 with its own VAE and judge::

    ModelInfo("emoji-dit", "bundled", "class-conditional latent DiT on 32x32 colour emoji", load_dit_pipeline,
              family="dit", key="emoji-dit", guidance=1.5, classes=9, null_class=1000, latents="emoji-vae",
              judge="emoji-classifier")

and then ``prepare("emoji-dit", cond=[0, 3])`` samples it, refuses labels it was not trained on, and
``preview_decoder(model, "tiny")`` says that no cheap decoder fits its latents. Each bundled folder holds
diffusers-style weights (safetensors + config.json), ``SHA256SUMS`` (checked on every load), ``MODEL_CARD.md`` and
``samples.png``; ``scripts/train.py`` builds, trains and writes them, ``scripts/evaluate.py`` measures them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import CorruptWeightsError, HubOfflineError, ModelError, UnknownModelError  # noqa: F401 (re-exported)
from .weights import (DATA_ROOT, SUMS_FILE, file_sha256, load_classifier, load_ddpm_pipeline,  # noqa: F401
                      load_dit_pipeline, load_preview_decoders, load_sd_pipeline, load_vae, verify_checksums)

FAMILIES = ("dit", "sd", "pixel", "pipeline")  # how nestedlib.pipelines.prepare wraps a sampler: see its ADAPTERS;
# "pipeline": by the loaded diffusers pipeline's class (nestedlib.pipelines.PIPELINES: SDXL, PixArt, SD3, Flux)
PRESETS = ("book", "paper")  # nestedlib.presets.PRESETS: this book's defaults, the authors' exact settings


@dataclass(frozen=True)
class ModelInfo:
    """One registry entry: a bundled model in data/ or a real model on the Hugging Face hub, with all its facts."""

    name: str
    kind: str  # "bundled" (data/<name>/) or "hub"
    description: str
    loader: Callable[..., Any]  # loader(folder or hub name, device, dtype) -> the model (nestedlib.weights)
    family: str | None = None  # "dit" (class labels), "sd" (prompts), "pixel" (unconditional); None: not a sampler
    key: str | None = None  # bundled: its short name on the scripts' command lines
    stand_in: str | None = None  # hub: the bundled model that replaces it offline
    guidance: float | None = None  # the default classifier-free guidance scale (conditional families)
    classes: int | None = None  # "dit": the labels 0 .. classes - 1 it was trained on
    null_class: int | None = None  # "dit": the label of the unconditional branch
    latents: str | None = None  # latent family: the VAE whose latents it samples (None: it samples pixels)
    preview_decoders: str | None = None  # the registry entry of cheap decoders fitted to those latents, if any
    judge: str | None = None  # the classifier that reads its samples (accuracy, FID features), if any
    data: str | None = None  # a judge: the dataset whose held-out part is its reference set (nestedlib.data.split)
    presets: tuple[str, ...] = ()  # the sampler presets it supports (samplers: both)

    def __post_init__(self):
        if self.kind not in ("bundled", "hub"):
            raise ValueError(f"{self.name}: kind must be 'bundled' or 'hub', got {self.kind!r}")
        if self.family is not None and self.family not in FAMILIES:
            raise ValueError(f"{self.name}: family must be one of {FAMILIES} (or None), got {self.family!r}")
        if self.family == "dit" and (self.classes is None or self.null_class is None):
            raise ValueError(f"{self.name}: a 'dit' model names its trained classes and its null class")
        if any(p not in PRESETS for p in self.presets):
            raise ValueError(f"{self.name}: presets must be among {PRESETS}, got {self.presets!r}")

    @property
    def train_command(self) -> str | None:
        """Bundled: the command that retrains it from scratch."""
        return f"python scripts/train.py {self.key}" if self.key else None


_SAMPLER = dict(presets=PRESETS)
_PIPELINE = dict(family="pipeline", presets=("book",))  # the paper preset is the authors' DiT and SD 1.5 code


def load_pipeline(name: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """Any diffusers pipeline from the hub (DiffusionPipeline picks its class from the model's model_index.json)."""
    from diffusers import DiffusionPipeline

    if dtype is None and str(device).startswith("cuda"):
        dtype = torch.bfloat16  # these checkpoints are trained and served in half precision (Flux-dev: 24 GB)
    kwargs = {} if dtype is None else {"torch_dtype": dtype}
    return DiffusionPipeline.from_pretrained(name, **kwargs).to(device)

_MNIST_LATENTS = dict(latents="mnist-vae", preview_decoders="mnist-tiny-decoder", judge="mnist-classifier")
EMOJI_CLASSES = 9  # nestedlib.data.EMOJI_CATEGORIES: label c is its c-th category

REGISTRY: dict[str, ModelInfo] = {
    m.name: m
    for m in [
        ModelInfo("mnist-dit", "bundled", "class-conditional latent DiT on MNIST (DiT-XL/2 stand-in)",
                  load_dit_pipeline, family="dit", key="dit", guidance=1.5, classes=10, null_class=1000,
                  **_MNIST_LATENTS, **_SAMPLER),
        ModelInfo("mnist-sd", "bundled", "text-conditioned latent UNet on MNIST (Stable Diffusion 1.5 stand-in)",
                  load_sd_pipeline, family="sd", key="sd", guidance=4.0, **_MNIST_LATENTS, **_SAMPLER),
        ModelInfo("mnist-flow", "bundled", "class-conditional rectified-flow latent DiT on MNIST (SD3/Flux stand-in)",
                  load_dit_pipeline, family="dit", key="flow", guidance=1.5, classes=10, null_class=1000,
                  **_MNIST_LATENTS, presets=("book",)),
        ModelInfo("digits8", "bundled", "8x8 pixel epsilon model on scikit-learn digits", load_ddpm_pipeline,
                  family="pixel", key="digits8", **_SAMPLER),
        ModelInfo("mnist-pixel", "bundled", "32x32 pixel epsilon model on MNIST (inverse problems)",
                  load_ddpm_pipeline, family="pixel", key="pixel", judge="mnist-classifier", **_SAMPLER),
        ModelInfo("mnist-vae", "bundled", "latent autoencoder 1x32x32 -> 4x8x8 shared by mnist-dit and mnist-sd",
                  load_vae, key="vae"),
        ModelInfo("mnist-classifier", "bundled", "evaluation classifier (accuracy and FID features)",
                  load_classifier, key="classifier", data="mnist"),
        ModelInfo("mnist-tiny-decoder", "bundled", "cheap preview decoders of mnist-vae latents: a least-squares "
                  "linear map and a distilled tiny conv decoder", load_preview_decoders, key="tiny-decoder",
                  latents="mnist-vae"),
        ModelInfo("emoji-dit", "bundled", "class-conditional latent DiT on 32x32 colour emoji in 9 categories "
                  "(a multimodal DiT-XL/2 stand-in)", load_dit_pipeline, family="dit", key="emoji-dit", guidance=1.5,
                  classes=EMOJI_CLASSES, null_class=1000, latents="emoji-vae", judge="emoji-classifier", **_SAMPLER),
        ModelInfo("emoji-vae", "bundled", "latent autoencoder 3x32x32 -> 4x8x8 of the colour emoji", load_vae,
                  key="emoji-vae"),
        ModelInfo("emoji-classifier", "bundled", "category classifier of 32x32 colour emoji (accuracy and FID "
                  "features of emoji-dit)", load_classifier, key="emoji-classifier", classes=EMOJI_CLASSES,
                  data="emoji"),
        ModelInfo("facebook/DiT-XL-2-256", "hub", "DiT-XL/2 at 256 px on ImageNet (the paper's model)",
                  load_dit_pipeline, family="dit", stand_in="mnist-dit", guidance=1.5, classes=1000, null_class=1000,
                  latents="stabilityai/sd-vae-ft-ema", **_SAMPLER),
        ModelInfo("stable-diffusion-v1-5/stable-diffusion-v1-5", "hub", "Stable Diffusion 1.5 (the paper's text model)",
                  load_sd_pipeline, family="sd", stand_in="mnist-sd", guidance=7.5,
                  latents="stable-diffusion-v1-5/vae", **_SAMPLER),
        ModelInfo("stabilityai/stable-diffusion-xl-base-1.0", "hub", "SDXL 1.0 base: eps UNet, two text encoders, "
                  "size and crop conditioning", load_pipeline, guidance=5.0, latents="stabilityai/sdxl-vae",
                  **_PIPELINE),
        ModelInfo("PixArt-alpha/PixArt-XL-2-1024-MS", "hub", "PixArt-alpha 1024: T5-conditioned DiT, eps with "
                  "learned sigma", load_pipeline, guidance=4.5, latents="stabilityai/sd-vae-ft-ema", **_PIPELINE),
        ModelInfo("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", "hub", "PixArt-Sigma 1024: T5-conditioned DiT, eps with "
                  "learned sigma, SDXL's VAE", load_pipeline, guidance=4.5, latents="stabilityai/sdxl-vae",
                  **_PIPELINE),
        ModelInfo("stabilityai/stable-diffusion-3-medium-diffusers", "hub", "Stable Diffusion 3 medium: rectified "
                  "flow MMDiT, shift 3, guided on the velocity", load_pipeline, guidance=7.0,
                  latents="stabilityai/sd3-vae", **_PIPELINE),
        ModelInfo("black-forest-labs/FLUX.1-dev", "hub", "FLUX.1 [dev]: guidance-distilled rectified flow, guidance "
                  "as a network input, resolution-dependent shift", load_pipeline, guidance=3.5,
                  latents="black-forest-labs/flux-vae", **_PIPELINE),
    ]
}


def register(entry: ModelInfo) -> ModelInfo:
    """Add a model to the registry (a new model is this one entry); a name already there is refused."""
    if entry.name in REGISTRY:
        raise ValueError(f"a model named {entry.name!r} is already registered; pick another name")
    REGISTRY[entry.name] = entry
    return entry


def info(name: str) -> ModelInfo:
    """Registry lookup; an unknown name raises UnknownModelError listing the known names."""
    if name not in REGISTRY:
        known = ", ".join(REGISTRY)
        raise UnknownModelError(f"unknown model {name!r}; known models: {known}")
    return REGISTRY[name]


def names(**facts: Any) -> tuple[str, ...]:
    """The registered names whose entries have these facts, e.g. names(family="dit", judge="mnist-classifier")."""
    return tuple(n for n, m in REGISTRY.items() if all(getattr(m, k) == v for k, v in facts.items()))


def model_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    """Folder of a bundled model: <root or data/>/<name>."""
    if info(name).kind != "bundled":
        raise ModelError(f"{name!r} is a hub model; it has no folder in data/")
    return Path(root) if root is not None and Path(root).name == name else Path(root or DATA_ROOT) / name


def _hub_error(name: str, err: Exception | None) -> HubOfflineError:
    """The error of a hub model requested offline: says so and names the bundled stand-in."""
    why = f" ({type(err).__name__}: {err})" if err is not None else " (HF_HUB_OFFLINE is set)"
    stand_in = info(name).stand_in
    instead = (f"Use the bundled stand-in model={stand_in!r} (runs offline on a CPU), " if stand_in else
               "No bundled model stands in for it (tests/tiny_pipelines.py builds tiny random components of its "
               "pipeline class); ")
    return HubOfflineError(
        f"{name!r} is a Hugging Face hub model and the hub cannot be reached: offline{why}. "
        f"{instead}or connect to the internet (a GPU is advised) and unset HF_HUB_OFFLINE."
    )


def _offline() -> bool:
    """True when the environment asks huggingface_hub to stay offline."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def load(name: str, device: str | torch.device = "cpu", root: str | os.PathLike | None = None,
         dtype: torch.dtype | None = None) -> Any:
    """Load a model by registry name with its entry's loader: bundled from data/ (float32, after a sha256 check),
    or from the hub (online only; `dtype` None keeps the checkpoint's)."""
    entry = info(name)
    if entry.kind == "hub":
        if _offline():
            raise _hub_error(name, None)
        try:
            return entry.loader(name, device, dtype)
        except (OSError, ConnectionError, ValueError) as err:  # hub unreachable or files not cached
            raise _hub_error(name, err) from err
    folder = model_dir(name, root)
    verify_checksums(folder, name, entry.train_command or "python scripts/train.py")
    return entry.loader(folder, device, torch.float32)

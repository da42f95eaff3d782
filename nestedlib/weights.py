"""Bundled weights on disk (``data/<name>/``, sha256-checked on every load) and the loaders that rebuild a model from a
folder or fetch it from the Hugging Face hub. Each loader is one registry entry's ``loader`` (nestedlib.models).

Every loader has the signature ``loader(source, device, dtype)``: `source` is a bundled folder or a hub name, and
`dtype` None keeps the checkpoint's own (bundled models are always rebuilt in float32). scripts/bundles.py writes
these folders.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from .errors import CorruptWeightsError

DATA_ROOT = Path(__file__).resolve().parents[1] / "data"
SUMS_FILE = "SHA256SUMS"


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checksums(folder: Path, name: str, retrain: str = "python scripts/train.py") -> None:
    """Check every file listed in SHA256SUMS; missing or corrupt files raise CorruptWeightsError saying how to fix."""
    folder = Path(folder)
    fix = f"re-clone the repository (git checkout -- data/{name}) or retrain with `{retrain}`"
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


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No progress bars while a few small local files load: diffusers' "Loading pipeline components" and
    transformers' "Loading weights" (its text encoder); each library's own setting is restored afterwards."""
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    bars = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    hub_bars = not are_progress_bars_disabled()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()  # also turns the hub's bars off: restored below
    try:
        yield
    finally:
        if bars[0]:
            diffusers_logging.enable_progress_bar()
        if bars[1]:
            transformers_logging.enable_progress_bar()
        if hub_bars:
            enable_progress_bars()


def _kwargs(dtype) -> dict[str, Any]:
    """from_pretrained's dtype argument, left out when None (the checkpoint's own)."""
    return {"dtype": dtype} if dtype is not None else {}


def load_classifier(source: str | os.PathLike, device, dtype=None):
    """nestedlib.architectures.DigitClassifier from config.json and model.safetensors."""
    from safetensors.torch import load_file

    from .architectures import DigitClassifier

    folder = Path(source)
    model = DigitClassifier(**json.loads((folder / "config.json").read_text()))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval().to(device)


def load_preview_decoders(source: str | os.PathLike, device, dtype=None):
    """nestedlib.decoders.PreviewDecoders (linear and tiny) from config.json and model.safetensors, in float32."""
    from safetensors.torch import load_file

    from .decoders import PreviewDecoders

    folder = Path(source)
    model = PreviewDecoders(**json.loads((folder / "config.json").read_text()))
    model.load_state_dict({k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()})
    return model.eval().to(device)


def load_vae(source: str | os.PathLike, device, dtype=None):
    """A diffusers AutoencoderKL."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(source, **_kwargs(dtype)).to(device).eval()


def _pipeline(cls, source, device, dtype, **kwargs):
    """cls.from_pretrained(source), quiet for local folders, its own sampling progress bar off, on `device`."""
    with quiet_loading() if Path(source).is_dir() else contextlib.nullcontext():
        pipe = cls.from_pretrained(source, **_kwargs(dtype), **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_dit_pipeline(source: str | os.PathLike, device, dtype=None):
    """A diffusers DiTPipeline, its built-in label dropout off (nestedlib.architectures.disable_label_dropout)."""
    from diffusers import DiTPipeline

    from .architectures import disable_label_dropout

    pipe = _pipeline(DiTPipeline, source, device, dtype)
    disable_label_dropout(pipe.transformer)
    return pipe


def load_sd_pipeline(source: str | os.PathLike, device, dtype=None):
    """A diffusers StableDiffusionPipeline without safety checker (the stand-in has none; the book shows digits)."""
    from diffusers import StableDiffusionPipeline

    return _pipeline(StableDiffusionPipeline, source, device, dtype, safety_checker=None, feature_extractor=None,
                     requires_safety_checker=False)


def load_ddpm_pipeline(source: str | os.PathLike, device, dtype=None):
    """A diffusers DDPMPipeline (an unconditional pixel-space UNet and its scheduler)."""
    from diffusers import DDPMPipeline

    return _pipeline(DDPMPipeline, source, device, dtype)

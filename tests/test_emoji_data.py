"""The colour emoji data (nestedlib.data.emoji): counts per category, a split by whole emoji, a deterministic array."""

from __future__ import annotations

import collections
import shutil

import numpy as np
import pytest
import torch

from nestedlib import data

# Emoji per category in the pinned index (Unicode 16.0, emoji-datasource 16.0.0), in EMOJI_CATEGORIES order.
PER_CATEGORY = (169, 386, 159, 131, 218, 85, 264, 224, 270)


def _fetched() -> bool:
    return all((data.emoji_dir() / f"emoji-datasource-{v}-{data.EMOJI_VERSION}.tgz").is_file()
               for v in data.EMOJI_VENDORS)


needs_emoji = pytest.mark.skipif(not _fetched(), reason="emoji packages not fetched: bash scripts/fetch_emoji.sh")


def test_composite_on_white_is_porter_duff_over():
    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [255, 0, 0, 51]]], dtype=np.uint8)
    out = data.composite_on_white(rgba)
    # opaque red stays red, transparent becomes white, alpha 0.2: 0.2 * fg + 0.8 * 255
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    np.testing.assert_allclose(out[0, 2], [255, 204, 204], rtol=0, atol=1e-12)


def test_box_downsample_averages_blocks_and_refuses_odd_sizes():
    img = np.arange(16, dtype=np.float64).reshape(4, 4, 1)
    np.testing.assert_array_equal(data.box_downsample(img, 2)[..., 0], [[2.5, 4.5], [10.5, 12.5]])
    with pytest.raises(ValueError, match="blocks"):
        data.box_downsample(np.zeros((5, 4, 3)), 2)


def test_prompt_is_name_then_new_short_names():
    assert data.emoji_prompt("EAR OF MAIZE", ["corn"]) == "ear of maize, corn"
    assert data.emoji_prompt("SNOW-CAPPED MOUNTAIN", ["snow_capped_mountain"]) == "snow-capped mountain"
    assert data.emoji_prompt("RABBIT", ["rabbit2"]) == "rabbit"
    assert data.emoji_prompt("TOMATO", ["tomato"]) == "tomato"


def test_missing_packages_say_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("NESTEDLIB_EMOJI_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="fetch_emoji.sh"):
        data.build_emoji()


@needs_emoji
def test_counts_per_category_and_split():
    _, y_all = data.emoji("all")
    _, y_tr = data.emoji("train")
    _, y_he = data.emoji("heldout")
    n_vendors = len(data.EMOJI_VENDORS)
    assert np.bincount(y_all.numpy()).tolist() == [n_vendors * n for n in PER_CATEGORY]  # 3,812 pictures
    held = [n // data.EMOJI_HELDOUT_EVERY for n in PER_CATEGORY]  # positions 3, 7, 11, ... of each category
    assert np.bincount(y_he.numpy()).tolist() == [n_vendors * h for h in held]
    assert np.bincount(y_tr.numpy()).tolist() == [n_vendors * (n - h) for n, h in zip(PER_CATEGORY, held)]
    assert len(data.EMOJI_CATEGORIES) == 9 and len(y_he) == 946 and len(y_tr) == 2866


@needs_emoji
@pytest.mark.parametrize("skin_tones", [False, True])
def test_heldout_emoji_never_in_training(skin_tones):
    train = data.emoji_index("train", skin_tones=skin_tones)
    held = data.emoji_index("heldout", skin_tones=skin_tones)
    assert {e["emoji"] for e in train}.isdisjoint(e["emoji"] for e in held)
    assert {e["unified"] for e in train}.isdisjoint(e["unified"] for e in held)
    assert {e["name"] for e in train}.isdisjoint(e["name"] for e in held)
    # every vendor's picture of a held-out emoji is held out, and the held-out part has no skin-tone variants
    per_emoji = collections.Counter(e["emoji"] for e in held)
    assert set(per_emoji.values()) == {len(data.EMOJI_VENDORS)}
    assert all(e["tone"] == 0 for e in held)


@needs_emoji
def test_skin_tones_add_variants_of_training_emoji_only():
    base = data.emoji_index("train")
    tones = data.emoji_index("train", skin_tones=True)
    extra = [e for e in tones if e["tone"] > 0]
    assert len(tones) == len(base) + len(extra) and extra
    assert {e["emoji"] for e in extra} <= {e["emoji"] for e in base}
    assert {e["category"] for e in extra} == {"People & Body"}


@needs_emoji
def test_images_in_range_on_white():
    x, y = data.emoji("all")
    assert x.shape == (3812, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1
    corners = x[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]  # (N, 3, 4): the four corner pixels
    assert (corners == 1).all(dim=1).float().mean() > 0.9  # the background is white (full-bleed pictures aside)
    assert [e["prompt"] for e in data.emoji_index("all")][:1] == ["grinning face, grinning"]


@needs_emoji
def test_built_array_is_the_pinned_one(tmp_path):
    for v in data.EMOJI_VENDORS:
        name = f"emoji-datasource-{v}-{data.EMOJI_VERSION}.tgz"
        (tmp_path / name).symlink_to(data.emoji_dir() / name)
    path = data.build_emoji(tmp_path)  # raises if the sha256 differs from data.EMOJI_SHA256
    with np.load(path) as f:
        assert str(f["sha256"]) == data.EMOJI_SHA256
        assert f["images"].dtype == np.uint8 and f["images"].shape[1:] == (32, 32, 3)

"""Model registry, bundled weights (sha256 on load), error messages, and the bundled models' quality."""

from __future__ import annotations

import json

import pytest
import torch

from nestedlib import data, metrics, models

BUNDLED = [n for n, i in models.REGISTRY.items() if i.kind == "bundled"]


def _shipped(name: str) -> bool:
    return (models.DATA_ROOT / name / models.SUMS_FILE).is_file()


def test_unknown_name_lists_the_known_names():
    with pytest.raises(models.UnknownModelError) as err:
        models.load("mnist-gan")
    msg = str(err.value)
    assert "mnist-gan" in msg and all(n in msg for n in models.REGISTRY)


def test_registry_names_the_paper_models_and_their_stand_ins():
    assert models.info("facebook/DiT-XL-2-256").stand_in == "mnist-dit"
    assert models.info("stable-diffusion-v1-5/stable-diffusion-v1-5").stand_in == "mnist-sd"
    for n in BUNDLED:
        assert models.info(n).train_command.startswith("python scripts/train.py")


@pytest.mark.parametrize("name", ["facebook/DiT-XL-2-256", "stable-diffusion-v1-5/stable-diffusion-v1-5"])
def test_hub_model_offline_says_so_and_names_the_stand_in(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.HubOfflineError) as err:
        models.load(name)
    assert models.info(name).stand_in in str(err.value) and "offline" in str(err.value).lower()


def test_hub_connection_failure_is_turned_into_the_offline_error(monkeypatch):
    import diffusers

    def fail(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(diffusers.DiTPipeline, "from_pretrained", fail)
    with pytest.raises(models.HubOfflineError, match="mnist-dit"):
        models.load("facebook/DiT-XL-2-256")


@pytest.fixture()
def tiny_bundle(tmp_path):
    clf = models.build_classifier(tiny=True)
    folder = tmp_path / "mnist-classifier"
    models.save_classifier(clf, folder)
    models.write_checksums(folder)
    return tmp_path, clf


def test_load_verifies_sha256_and_rebuilds_the_model(tiny_bundle):
    root, clf = tiny_bundle
    loaded = models.load("mnist-classifier", root=root)
    x = torch.zeros(2, 1, 32, 32)
    torch.testing.assert_close(loaded(x), clf.eval()(x))


def test_corrupt_weight_file_says_what_to_do(tiny_bundle):
    root, _ = tiny_bundle
    f = root / "mnist-classifier" / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(models.CorruptWeightsError, match="corrupt.*python scripts/train.py classifier"):
        models.load("mnist-classifier", root=root)


def test_missing_weight_file_says_what_to_do(tiny_bundle):
    root, _ = tiny_bundle
    (root / "mnist-classifier" / "model.safetensors").unlink()
    with pytest.raises(models.CorruptWeightsError, match="missing.*re-clone"):
        models.load("mnist-classifier", root=root)
    (root / "mnist-classifier" / models.SUMS_FILE).unlink()
    with pytest.raises(models.CorruptWeightsError, match="SHA256SUMS"):
        models.load("mnist-classifier", root=root)


def test_tokenizer_reads_every_prompt_word_as_one_known_token():
    tok = models.build_tokenizer()
    for c in range(10):
        for p in models.prompts_for(c):
            ids = tok(p).input_ids
            assert len(ids) == len(p.split()) + 2  # <start> words <end>
            assert tok.unk_token_id not in ids[1:-1]  # CLIP's unknown token is <|endoftext|>
    assert tok("").input_ids == [tok.bos_token_id, tok.eos_token_id]


def test_latent_normalisation_folding_is_exact():
    vae = models.build_vae(tiny=True).eval()
    x, _ = data.mnist("heldout")
    with torch.no_grad():
        mu = vae.encode(x[:32]).latent_dist.mean
        rec = vae.decode(mu).sample
        mean, std = mu.mean((0, 2, 3)), mu.std((0, 2, 3))
        models.fold_latent_normalisation(vae, mean, std)
        mu_n = vae.encode(x[:32]).latent_dist.mean
        torch.testing.assert_close(mu_n, (mu - mean.view(1, 4, 1, 1)) / std.view(1, 4, 1, 1), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(vae.decode(mu_n).sample, rec, rtol=1e-4, atol=1e-4)


def test_classifier_features_feed_torchmetrics():
    clf = models.build_classifier(tiny=True)
    x = torch.rand(20, 1, 32, 32) * 2 - 1
    f = metrics.ClassifierFeatures(clf)
    torch.testing.assert_close(f(data.to_uint8(x)), f(x), atol=0.1, rtol=0)
    assert metrics.fid(clf, x, x) < 1e-3
    assert metrics.fid(clf, x, torch.flip(x, [0]) * 0 - 1) > 0


# --- the shipped models (skipped where data/<name> is not there yet) --------------------------


def test_shipped_sd_tokenizer_reads_the_prompts_like_the_builder():
    if not _shipped("mnist-sd"):
        pytest.skip("mnist-sd not shipped")
    shipped, built = models.load("mnist-sd").tokenizer, models.build_tokenizer()
    for p in ["a handwritten seven", "the digit 7", ""]:
        assert shipped(p).input_ids == built(p).input_ids


@pytest.mark.parametrize("name", BUNDLED)
def test_shipped_model_loads_with_checksum(name):
    if not _shipped(name):
        pytest.skip(f"{name} not shipped")
    obj = models.load(name)
    assert obj is not None


def test_shipped_classifier_reaches_95_percent_on_heldout():
    if not _shipped("mnist-classifier"):
        pytest.skip("classifier not shipped")
    x, y = data.mnist("heldout")
    assert metrics.class_accuracy(models.load("mnist-classifier"), x, y) >= 0.95


@pytest.mark.parametrize("name,key,bar", [("mnist-dit", "class_accuracy", 0.9), ("mnist-sd", "prompt_accuracy", 0.9)])
def test_recorded_quality_bars(name, key, bar):
    path = models.DATA_ROOT / name / "metrics.json"
    if not path.is_file():
        pytest.skip(f"{name} not evaluated")
    m = json.loads(path.read_text())
    assert m[key] >= bar and m["n"] >= 1000

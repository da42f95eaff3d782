"""Model registry, bundled weights (sha256 on load), error messages, data splits, metrics, and the bundled models'
quality. Bundles are written for these tests with scripts/bundles.py, as scripts/train.py writes them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from nestedlib import data, metrics, models
from nestedlib.widgets import to_uint8

from conftest import flip_last_byte

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bundles as B  # noqa: E402

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
        assert models.info(n).train_command == f"python scripts/train.py {models.info(n).key}"
    assert len({models.info(n).key for n in BUNDLED}) == len(BUNDLED)  # one command-line key per bundled model


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
    clf = B.build_classifier(tiny=True)
    folder = tmp_path / "mnist-classifier"
    B.save_classifier(clf, folder)
    B.write_checksums(folder)
    return tmp_path, clf


def test_load_verifies_sha256_and_rebuilds_the_model(tiny_bundle):
    root, clf = tiny_bundle
    loaded = models.load("mnist-classifier", root=root)
    x = torch.zeros(2, 1, 32, 32)
    torch.testing.assert_close(loaded(x), clf.eval()(x))


def test_corrupt_weight_file_says_what_to_do(tiny_bundle):
    root, _ = tiny_bundle
    flip_last_byte(root / "mnist-classifier" / "model.safetensors")
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


def test_data_split_is_fixed_and_disjoint():
    x_tr, y_tr = data.mnist("train")
    x_he, y_he = data.mnist("heldout")
    assert x_tr.shape == (4000, 1, 32, 32) and x_he.shape == (1000, 1, 32, 32)
    assert torch.bincount(y_he).tolist() == [100] * 10 and torch.bincount(y_tr).tolist() == [400] * 10
    assert x_tr.min() == -1 and x_tr.max() == 1
    assert (x_tr[:, :, :2] == -1).all()  # the 2-pixel padding is black
    x_all, _ = data.mnist("all")
    assert len(x_all) == 5000
    d_tr, _ = data.digits8("train")
    d_he, dy = data.digits8("heldout")
    assert len(d_tr) + len(d_he) == 1797 and torch.bincount(dy).tolist() == [20] * 10
    with pytest.raises(ValueError, match="split"):
        data.mnist("test")


def test_classifier_features_read_uint8_as_the_same_grey_levels():
    clf = B.build_classifier(tiny=True)
    x = torch.rand(20, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    f = metrics.ClassifierFeatures(clf)
    u8 = torch.from_numpy(to_uint8(x)).permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W), 0..255
    assert torch.equal(f(u8), f(u8.float() / 127.5 - 1))  # the same float operations on the same grey levels


def test_fid_is_the_frechet_distance_of_the_classifier_features():
    import numpy as np
    from scipy import linalg

    clf = B.build_classifier(tiny=True)
    with torch.no_grad():  # every feature active and O(1): well-conditioned covariances (condition number ~10)
        clf.body[-2].weight *= 30
        clf.body[-2].bias.fill_(10.0)
    g = torch.Generator().manual_seed(0)
    real = torch.rand(64, 1, 32, 32, generator=g) * 2 - 1
    fake = (torch.rand(64, 1, 32, 32, generator=g) * 2 - 1) * 0.5 + 0.2
    a, b = (metrics.ClassifierFeatures(clf)(x).double().numpy() for x in (real, fake))
    m1, m2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)  # Heusel et al. 2017, eq. 6
    # torchmetrics computes in float64 and returns float32 (relative 6e-8); in float64 the two matrix square roots
    # (eigenvalues there, Schur here) of well-conditioned matrices agree to ~1e-14: 1e-6 covers both with room.
    assert metrics.fid(clf, real, fake) == pytest.approx(ref, rel=1e-6, abs=0)
    assert metrics.fid(clf, real, real) == pytest.approx(0.0, abs=1e-6 * ref)


def test_real_floor_compares_the_sizes_it_is_given_and_refuses_sizes_it_cannot_draw():
    clf = B.build_classifier(tiny=True)
    small, matched = metrics.real_floor(clf, n=50, seed=0), metrics.real_floor(clf, n=50, seed=0, n_real=1000)
    assert (small["n"], small["n_real"], matched["n_real"]) == (50, 50, 1000)
    # a larger reference set shrinks FID's small-sample bias: the floor a 50-sample cell against all 1,000 held-out
    # digits must be compared with is lower than the 50-vs-50 floor
    assert matched["fid"] < small["fid"]
    with pytest.raises(ValueError, match="training images of mnist"):
        metrics.real_floor(clf, n=5000, n_real=1000)
    with pytest.raises(ValueError, match="held-out"):
        metrics.real_floor(clf, n=10, n_real=1001)


# --- the shipped models (skipped where data/<name> is not there yet) --------------------------


SHIPPED_CLASS = {"mnist-dit": "DiTPipeline", "mnist-flow": "DiTPipeline", "mnist-sd": "StableDiffusionPipeline",
                 "digits8": "DDPMPipeline", "mnist-pixel": "DDPMPipeline",
                 "mnist-vae": "AutoencoderKL", "mnist-classifier": "DigitClassifier",
                 "mnist-tiny-decoder": "PreviewDecoders", "emoji-classifier": "DigitClassifier",
                 "emoji-vae": "AutoencoderKL", "emoji-dit": "DiTPipeline"}


@pytest.mark.parametrize("name", BUNDLED)
def test_shipped_model_loads_with_checksum(name):
    if not _shipped(name):
        pytest.skip(f"{name} not shipped")
    obj = models.load(name)
    assert type(obj).__name__ == SHIPPED_CLASS[name]
    modules = obj.components.values() if hasattr(obj, "components") else [obj]
    params = [p for m in modules if isinstance(m, torch.nn.Module) for p in m.parameters()]
    assert params and all(p.dtype == torch.float32 for p in params)  # float16 files are cast back on load


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


def test_recorded_cards_are_what_evaluate_writes_now():
    """The cards of the two stand-ins hold what scripts/evaluate.py writes today: its sampler, the registry's
    guidance, its cross-check keys, and the card's figures are metrics.json's."""
    keys = {"mnist-dit": "class_accuracy_diffusers_ddpm_learned_range_200",
            "mnist-sd": "prompt_accuracy_diffusers_pipeline_200"}
    for name, key in keys.items():
        folder = models.DATA_ROOT / name
        if not (folder / "metrics.json").is_file():
            pytest.skip(f"{name} not evaluated")
        m = json.loads((folder / "metrics.json").read_text())
        assert m["sampler"].startswith("nestedlib vanilla (Algorithm 1)")
        assert f"guidance {models.info(name).guidance}" in m["sampler"] and key in m
        assert json.dumps(m, indent=1) in (folder / "MODEL_CARD.md").read_text()


# --- one registry entry per model ---------------------------------------------------------------------------------


def test_every_fact_of_a_model_is_in_its_entry():
    dit, sd = models.info("mnist-dit"), models.info("mnist-sd")
    assert (dit.family, dit.guidance, dit.classes, dit.null_class) == ("dit", 1.5, 10, 1000)
    assert dit.latents == sd.latents == "mnist-vae" == models.info("mnist-tiny-decoder").latents
    assert dit.preview_decoders == sd.preview_decoders == "mnist-tiny-decoder"
    assert (sd.family, sd.guidance) == ("sd", 4.0) and models.info(sd.stand_in or "mnist-sd").kind == "bundled"
    assert models.info("facebook/DiT-XL-2-256").guidance == 1.5
    assert models.info("stable-diffusion-v1-5/stable-diffusion-v1-5").guidance == 7.5
    # what scripts/sweep.py samples: the class-conditional DiT-family digit models (mnist-flow: book preset only)
    assert models.names(family="dit", judge="mnist-classifier") == ("mnist-dit", "mnist-flow")
    assert models.info("mnist-flow").presets == ("book",)
    for name in models.REGISTRY:
        entry = models.info(name)
        assert callable(entry.loader) and (entry.family is None) == (entry.presets == ())
        if entry.preview_decoders:  # the cheap decoders it names were fitted to its own latent family
            assert models.info(entry.preview_decoders).latents == entry.latents
    with pytest.raises(ValueError, match="names its trained classes and its null class"):
        models.ModelInfo("x", "bundled", "a DiT without classes", models.load_dit_pipeline, family="dit")


def test_a_new_model_is_one_registry_entry(tmp_path, monkeypatch):
    """A colour-emoji-like stand-in, added as nothing but one `register` call: prepare, the class check, the guidance
    default, Guided and the preview decoders all follow from its entry."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    from nestedlib.decoders import preview_decoder
    from nestedlib.guided import Guided
    from nestedlib.pipelines import prepare

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                        num_layers=1, sample_size=4, patch_size=2, num_embeds_ada_norm=1000,
                                        norm_num_groups=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
                        norm_num_groups=4, sample_size=8)
    DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler()).save_pretrained(tmp_path / "colour-dit")
    B.write_checksums(tmp_path / "colour-dit")
    monkeypatch.setattr(models, "REGISTRY", dict(models.REGISTRY))  # the test's entry leaves with the test
    monkeypatch.setattr(models, "DATA_ROOT", tmp_path)
    models.register(models.ModelInfo("colour-dit", "bundled", "class-conditional latent DiT on 32x32 emoji",
                                     models.load_dit_pipeline, family="dit", key="colour-dit", guidance=2.5, classes=9,
                                     null_class=1000, latents="emoji-vae", presets=("book", "paper")))
    model = prepare("colour-dit", cond=[0, 8], preset="paper")
    assert (model.name, model.kind, model.classes, model.latents) == ("colour-dit", "dit", 9, "emoji-vae")
    assert model.network.guidance_scale == 2.5 and model.network.guided_channels == 3 and model.shape == (2, 4, 4, 4)
    assert Guided(model, seed=0, total_nfe=10, outer=5).num_classes == 9
    with pytest.raises(ValueError, match="colour-dit was trained on classes 0-8 and the null class 1000"):
        prepare("colour-dit", cond=[9])
    with pytest.raises(ValueError, match=r"fitted to its latents \(emoji-vae\)"):
        preview_decoder(model, "tiny")
    with pytest.raises(ValueError, match="already registered"):
        models.register(models.info("colour-dit"))


# --- no import circles --------------------------------------------------------------------------------------------


def _imports() -> dict[str, set[str]]:
    """Module -> the modules of nestedlib/ and scripts/ it imports, at any depth of its ast (lazy imports count)."""
    import ast

    root = Path(__file__).resolve().parents[1]
    files = {f"nestedlib.{p.stem}": p for p in (root / "nestedlib").glob("*.py") if p.stem != "__init__"}
    files["nestedlib"] = root / "nestedlib" / "__init__.py"
    files.update({f"scripts.{p.stem}": p for p in (root / "scripts").glob("*.py")})
    graph = {}
    for mod, path in files.items():
        package = "scripts" if mod.startswith("scripts.") else "nestedlib"
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = (package if node.level else "") + ("." + node.module if node.module and node.level else
                                                          node.module or "")
                names = [f"{base}.{a.name}" for a in node.names] + [base]  # a submodule, or a name of base
            else:
                continue
            for n in names:
                n = n.lstrip(".")
                n = n if n in files else f"scripts.{n}" if package == "scripts" and f"scripts.{n}" in files else n
                if n in files and n != mod:
                    found.add(n)
        graph[mod] = found - ({"nestedlib"} if mod.startswith("nestedlib.") else set())  # a submodule's own package
    return graph


def test_no_two_modules_import_each_other_directly_or_in_a_circle():
    graph = _imports()
    assert "nestedlib.pipelines" in graph["nestedlib.guided"] and "scripts.bundles" in graph["scripts.train"]
    circles, done = [], set()

    def visit(mod, path):  # depth-first search; a module met again on the current path closes a circle
        if mod in path:
            circles.append(path[path.index(mod):] + [mod])
            return
        if mod in done:
            return
        for nxt in sorted(graph[mod]):
            visit(nxt, path + [mod])
        done.add(mod)

    for mod in sorted(graph):
        visit(mod, [])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_each_judge_names_the_dataset_it_compares_with():
    for name in models.names():
        entry = models.info(name)
        if entry.judge:  # a sampler's judge is a bundled classifier whose dataset the library can load
            judge = models.info(entry.judge)
            assert judge.data in data.DATASETS, (name, entry.judge, judge.data)
    assert (models.info("mnist-classifier").data, models.info("emoji-classifier").data) == ("mnist", "emoji")


def test_generated_digits_ask_for_digit_i_mod_10():
    # MNIST's held-out part is balanced (100 per digit): its class plan is i % 10, the committed sweeps' labels
    assert torch.equal(data.label_plan("mnist", 25), torch.arange(25) % 10)
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        data.label_plan("cifar", 3)

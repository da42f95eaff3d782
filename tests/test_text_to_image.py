"""The text-to-image chapter (Figures 1, 5 and 7 on mnist-sd): its claims, asserted from its results.json for 3
seeds, and its Stable Diffusion 1.5 path, run offline on tiny random components."""
import json

import nbformat
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from test_notebooks import ROOT, execute
from test_pipelines import tiny_vae

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def tiny_sd_pipe():
    """A StableDiffusionPipeline of tiny random components (as tests/test_pipelines.py's `sd_pipe`)."""
    torch.manual_seed(0)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "seven</w>": 3, "digit</w>": 4, "!": 5}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=8)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=8,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=2, norm_num_groups=4)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              set_alpha_to_one=False)
    return StableDiffusionPipeline(vae=tiny_vae().eval(), text_encoder=text.eval(), tokenizer=tokenizer,
                                   unet=unet.eval(), scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def test_the_stable_diffusion_path_runs_offline_on_tiny_components(tmp_path, monkeypatch):
    """model = the Stable Diffusion 1.5 id: the chapter's own cells, run in this process with the hub download
    replaced by a tiny random StableDiffusionPipeline (RGB 16 x 16 images; the digit measures are skipped)."""
    import matplotlib

    import nestedlib.models

    matplotlib.use("Agg")
    pipe, real_load = tiny_sd_pipe(), nestedlib.models.load
    monkeypatch.setattr(nestedlib.models, "load",
                        lambda name, *a, **k: pipe if name == SD15 else real_load(name, *a, **k))
    cells = [c for c in nbformat.read(ROOT / "notebooks" / "text_to_image.ipynb", as_version=4).cells
             if c.cell_type == "code"]
    overrides = dict(model=SD15, prompts=["a seven", "a digit"], total_nfe=20, outer=4, second_nfe=10,
                     second_outer=2, split_outers=[2, 4], out_dir=str(tmp_path / "out"))
    from IPython.display import display

    ns = {"display": display}
    for cell in cells:
        exec(compile(cell.source, "text_to_image", "exec"), ns)
        if "parameters" in cell.metadata.get("tags", []):
            ns.update(overrides)
    r = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert r["same_as_paper_samplers"]  # the chapter's nested sampler is the library's paper preset
    assert r["preview_nfes"]["20/nested: last inner run"] == [5, 10, 15, 20]
    assert r["preview_nfes"]["20/vanilla: decoded one-step x̂0"] == list(range(1, 21))
    assert r["preview_nfes"]["10/nested: last inner run"] == [5, 10]
    assert r["figure_5_first_preview"] == {"2": 10, "4": 5} and r["measures"] == {}
    assert ns["sd"].shape == (2, 4, 8, 8) and ns["sd"].network.guidance_scale == 7.5  # the paper's w for SD 1.5


def test_text_to_image_claims(tmp_path):
    """One run of the chapter at n = 20 prompts per seed, seeds 0-2 (SMALL in test_notebooks.py). Each claim below
    is one the chapter's text makes, asserted as a paired difference (nested - vanilla, same prompts and noise) of
    the same sign in every seed. At n = 20 the classifier FIDs of vanilla and nested differ by 90-125 at the end
    and their seed-to-seed spread is 5-50; the pixel change-to-end differences are 0.04-0.06 against a spread of
    0.005."""
    r = execute("text_to_image", tmp_path)["results"]
    assert r["same_as_paper_samplers"]  # the chapter's nested sampler is nestedlib's paper preset, bit for bit
    assert r["preview_nfes"]["100/nested: last inner run"] == list(range(4, 101, 4))  # 25 x 4
    assert r["preview_nfes"]["80/nested: last inner run"] == list(range(4, 81, 4))  # 20 x 4
    assert r["preview_nfes"]["100/vanilla: decoded one-step x̂0"] == list(range(1, 101))
    assert r["figure_5_first_preview"] == {"4": 25, "25": 4}
    m, d = r["measures"], r["paired_differences"]
    van, zt, ddim, dpm = ("vanilla DDIM", "vanilla DDIM, decoded z_t", "nested, ddim inner",
                          "nested, dpm-solver++ inner")
    stops = ["20", "40", "60", "80", "100"]

    def mean(name, k, key):
        return sum(row[key] for row in m[name][k]) / len(m[name][k])

    # every preview of both samplers is legible from 20 % of the budget on ...
    assert all(mean(van, k, "accuracy") >= 0.9 and mean(ddim, k, "accuracy") >= 0.9 for k in stops)
    # ... but vanilla's decoded latent z_t is not: the fracture patterns
    assert mean(zt, "20", "accuracy") < 0.5 and all(row["fid"] > 2 * van_row["fid"]
                                                    for row, van_row in zip(m[zt]["20"], m[van]["20"]))
    # the final samples (and already those at 60 and 80 %): nested ahead in FID in every seed
    assert all(all(x < 0 for x in d[ddim][k]["fid"]) for k in ("60", "80", "100"))
    # at 20 %: no consistent early advantage; the sign changes between seeds
    assert min(d[ddim]["20"]["fid"]) < 0 < max(d[ddim]["20"]["fid"])
    # nested's previews (inner eta 0.85) are farther from its end result than vanilla's from 40 % on
    assert all(all(x > 0.02 for x in d[ddim][k]["change_to_end"]) for k in ("40", "60", "80"))
    # DPM-Solver++ inside: previews closest to the end, but final samples less often the prompted digit
    assert all(all(x < 0 for x in d[dpm][k]["change_to_end"]) for k in ("20", "40", "60", "80"))
    assert all(x < 0 for x in d[dpm]["100"]["accuracy"])

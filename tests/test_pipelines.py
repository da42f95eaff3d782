"""Nested and vanilla sampling end to end through tiny, randomly initialised diffusers pipelines (no download):
the same DiTPipeline / StableDiffusionPipeline classes as DiT-XL/2 and Stable Diffusion 1.5."""
import numpy as np
import pytest
import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMPipeline, DDPMScheduler, DiTPipeline, DiTTransformer2DModel,
                       StableDiffusionPipeline, UNet2DConditionModel, UNet2DModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from nestedlib import nested, run, sample_generators, vanilla
from nestedlib.pipelines import dit_model, paper_samplers, pixel_model, sd_model


def tiny_vae():
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
                         norm_num_groups=4, sample_size=16)


@pytest.fixture(scope="module")
def dit_pipe():
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                        num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=1000,
                                        norm_num_groups=4)
    return DiTPipeline(transformer=transformer.eval(), vae=tiny_vae().eval(), scheduler=DDIMScheduler())


@pytest.fixture(scope="module")
def sd_pipe():
    return tiny_sd_pipe()


def tiny_sd_pipe(**scheduler_options):
    """A StableDiffusionPipeline of tiny random components (seeded): scaled-linear DDIM, RGB 16 x 16 images."""
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
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, **scheduler_options)
    return StableDiffusionPipeline(vae=tiny_vae().eval(), text_encoder=text.eval(), tokenizer=tokenizer,
                                   unet=unet.eval(), scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


class Spy:
    """Wraps a model's forward to record every batch it sees (and so guidance and the process that called it)."""

    def __init__(self, module):
        self.module, self.calls = module, []
        module.register_forward_pre_hook(lambda m, args, kwargs: self.calls.append(args[0].shape[0] if args else
                                                                                   kwargs["hidden_states"].shape[0]),
                                         with_kwargs=True)


def test_dit_pipeline_nested_and_vanilla_end_to_end(dit_pipe):
    model = dit_model(dit_pipe, [1, 7, 7], guidance_scale=1.5)
    assert model.learned_variance and model.shape == (3, 4, 8, 8)
    samplers = paper_samplers(model, total_nfe=20)
    spy = Spy(dit_pipe.transformer)
    nest = run(samplers["nested"], model.noise(torch.Generator().manual_seed(0)), generator=torch.Generator().manual_seed(0))
    van = run(samplers["vanilla"], model.noise(torch.Generator().manual_seed(0)), generator=torch.Generator().manual_seed(0))
    images = model.decode(nest.x0)
    assert nest.nfe == van.nfe == 20 and [p.nfe for p in nest.previews] == [4, 8, 12, 16, 20]
    assert spy.calls == [6] * 40  # every call is guided (cond + null in one batch): 20 inner calls, 20 vanilla calls
    assert images.shape == (3, 3, 16, 16) and torch.isfinite(images).all()
    # the learned variance draws noise in the inner DDPM steps; the outer step is deterministic DDIM on x̂_0
    inner_runs = [run(samplers["nested"], model.noise(torch.Generator().manual_seed(0)),
                      generator=torch.Generator().manual_seed(s), record_inner=True) for s in (1, 2)]
    assert not torch.equal(inner_runs[0].x0, inner_runs[1].x0)
    for a, b in zip(inner_runs[0].inner, inner_runs[1].inner):
        assert torch.equal(a.x0, b.x0) == (a.path[1] == 0 and a.path[0] == 0)  # equal only before any noise


def test_dit_guidance_only_inside_the_inner_process(dit_pipe):
    """With outer = 1 and guidance, nested equals vanilla: the outer step adds no network call and no guidance."""
    model = dit_model(dit_pipe, [3, 4], guidance_scale=4.0)
    x_T = model.noise(torch.Generator().manual_seed(1))
    inner = vanilla(model.network, model.schedule, 6, transition="ddpm", learned_variance=True)
    a = run(nested(inner, 1), x_T, generator=torch.Generator().manual_seed(2))
    b = run(inner, x_T, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.x0, b.x0)


def test_sd_pipeline_nested_and_vanilla_end_to_end(sd_pipe):
    model = sd_model(sd_pipe, ["a seven", "a digit"], guidance_scale=7.5)
    assert not model.learned_variance and model.shape == (2, 4, 8, 8)
    samplers = paper_samplers(model, total_nfe=50)  # 25 outer x 2 inner, as the authors' script at 50 NFEs
    spy = Spy(sd_pipe.unet)
    nest = run(samplers["nested"], model.noise(torch.Generator().manual_seed(0)), generator=torch.Generator().manual_seed(0),
               record_inner=True)
    images = model.decode(nest.x0)
    assert nest.nfe == 50 and len(nest.previews) == 25 and spy.calls == [4] * 50
    assert images.shape == (2, 3, 16, 16)
    assert [e.t for e in nest.inner[:2]] == [999, 1]  # the authors' inner grid over [1, t]


def test_pixel_pipeline(dit_pipe):
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    model = pixel_model(DDPMPipeline(unet=unet.eval(), scheduler=DDPMScheduler()), batch_size=5)
    res = run(paper_samplers(model, 10)["nested"], model.noise(torch.Generator().manual_seed(0)), generator=torch.Generator())
    assert res.x0.shape == (5, 1, 8, 8) and res.nfe == 10


def test_bad_conditions_are_refused(dit_pipe, sd_pipe):
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 999\]"):
        dit_model(dit_pipe, [3, 1000])
    assert dit_model(dit_pipe, [1000, 1000], guidance_scale=1.0).network.cond.tolist() == [1000, 1000]  # unconditional
    with pytest.raises(ValueError, match="at least one prompt"):
        sd_model(sd_pipe, [])
    model = dit_model(dit_pipe, [1, 2])
    with pytest.raises(ValueError, match="does not divide into 5 outer steps"):
        paper_samplers(model, total_nfe=101)


# ---- golden full-loop numbers: a refactor that changes numbers fails loudly -------------------------------------
# float32 networks: another CPU's vector unit or thread count reorders sums (~1e-7 relative per operation); over 20
# steps of these tiny contracting networks that stays far below 1e-4, while a change of grid, guidance or noise
# moves these means by more than 1 %. Means of absolute values, not signed sums, so nothing cancels.

def _golden(model, sampler, seed=0):
    result = run(sampler, model.noise(torch.Generator().manual_seed(seed)), generator=torch.Generator().manual_seed(seed))
    return [p.x0.abs().mean().item() for p in result.previews[:: max(1, len(result.previews) // 5)]]


def test_golden_dit_nested_and_vanilla(dit_pipe):
    model = dit_model(dit_pipe, [1, 7, 7], guidance_scale=1.5)
    samplers = paper_samplers(model, total_nfe=20)
    assert _golden(model, samplers["nested"]) == pytest.approx(GOLDEN["dit_nested"], rel=1e-4)
    assert _golden(model, samplers["vanilla"]) == pytest.approx(GOLDEN["dit_vanilla"], rel=1e-4)


def test_golden_dit_paper_preset(dit_pipe):
    model = dit_model(dit_pipe, [1, 7, 7], guidance_scale=1.5, preset="paper")
    samplers = paper_samplers(model, total_nfe=20)
    assert _golden(model, samplers["nested"]) == pytest.approx(GOLDEN["dit_paper_nested"], rel=1e-4)
    assert _golden(model, samplers["vanilla"]) == pytest.approx(GOLDEN["dit_paper_vanilla"], rel=1e-4)


def test_the_paper_preset_is_the_authors_dit_sampler(dit_pipe):
    """The authors' DiT script: space_timesteps grids everywhere, guidance on the first 3 latent channels only."""
    seen = []
    dit_pipe.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append(int(kw["timestep"][0])),
                                                   with_kwargs=True)
    paper = dit_model(dit_pipe, [1, 7], guidance_scale=4.0, preset="paper")
    run(paper_samplers(paper, total_nfe=105)["nested"], paper.noise(torch.Generator().manual_seed(0)))
    assert seen[:21][9:12] == [549, 499, 450] and seen[21] == 799 and seen[21 * 4] == 200  # outer 999 .. 200
    x, book = paper.noise(torch.Generator()), dit_model(dit_pipe, [1, 7], guidance_scale=4.0)
    a, b = paper.network(x, 500), book.network(x, 500)
    assert torch.equal(a[:, :3], b[:, :3]) and not torch.equal(a[:, 3], b[:, 3])  # channel 3: conditional only
    with pytest.raises(ValueError, match="unknown preset"):
        dit_model(dit_pipe, [1], preset="authors")


def test_golden_sd_nested_and_vanilla(sd_pipe):
    model = sd_model(sd_pipe, ["a seven", "a digit"], guidance_scale=7.5)
    samplers = paper_samplers(model, total_nfe=50)
    assert _golden(model, samplers["nested"]) == pytest.approx(GOLDEN["sd_nested"], rel=1e-4)
    assert _golden(model, samplers["vanilla"]) == pytest.approx(GOLDEN["sd_vanilla"], rel=1e-4)


def test_golden_sd_paper_preset(sd_pipe):
    model = sd_model(sd_pipe, ["a seven", "a digit"], guidance_scale=7.5, preset="paper")
    samplers = paper_samplers(model, total_nfe=50)
    assert _golden(model, samplers["nested"]) == pytest.approx(GOLDEN["sd_paper_nested"], rel=1e-4)
    assert _golden(model, samplers["vanilla"]) == pytest.approx(GOLDEN["sd_paper_vanilla"], rel=1e-4)  # SD 1.5's DDIM


GOLDEN = {  # mean |x̂_0| of the previews at 20, 40, ..., 100 % of the budget (OMP_NUM_THREADS 1 and 2 agree to 3e-7)
    "dit_nested": [167.02066040039062, 163.5459747314453, 163.300048828125, 163.38177490234375, 163.403076171875],
    "dit_vanilla": [158.86729431152344, 233.3050079345703, 235.8046112060547, 236.65687561035156, 236.889404296875],
    "dit_paper_nested": [166.45545959472656, 163.04078674316406, 162.80433654785156, 162.88365173339844, 162.9011993408203],
    "dit_paper_vanilla": [158.3056182861328, 232.35813903808594, 234.77650451660156, 235.6132354736328, 235.8377685546875],
    "sd_nested": [12.174271583557129, 12.011528015136719, 11.974151611328125, 11.965065002441406, 11.963156700134277],
    "sd_vanilla": [12.148309707641602, 12.006553649902344, 11.96496868133545, 11.955937385559082, 11.954559326171875],
    "sd_paper_nested": [12.167675018310547, 12.00448226928711, 11.95759105682373, 11.947356224060059, 11.94168758392334],
    "sd_paper_vanilla": [10.90109920501709, 10.787290573120117, 10.750248908996582, 10.741382598876953, 10.740002632141113],
}


# ---- the authors' Stable Diffusion sampler (preset="paper") -----------------------------------------------------

# The UNet's timesteps in the authors' pipeline: outer round(linspace(1, 999, outer + 1)) without its last point 1,
# then inner round(linspace(1, t, inner)) from each outer t (their NestedScheduler.set_timesteps, run with numpy).
AUTHORS_SD_GRIDS = {
    (5, 4): [[999, 666, 334, 1], [799, 533, 267, 1], [600, 400, 201, 1], [400, 267, 134, 1], [201, 134, 68, 1]],
    (3, 7): [[999, 833, 666, 500, 334, 167, 1], [666, 555, 444, 334, 223, 112, 1], [334, 278, 223, 168, 112, 56, 1]],
    (25, 4): [[999, 666, 334, 1], [959, 640, 320, 1], [919, 613, 307, 1], [879, 586, 294, 1], [839, 560, 280, 1],
              [799, 533, 267, 1], [759, 506, 254, 1], [720, 480, 241, 1], [680, 454, 227, 1], [640, 427, 214, 1],
              [600, 400, 201, 1], [560, 374, 187, 1], [520, 347, 174, 1], [480, 320, 161, 1], [440, 294, 147, 1],
              [400, 267, 134, 1], [360, 240, 121, 1], [320, 214, 107, 1], [280, 187, 94, 1], [241, 161, 81, 1],
              [201, 134, 68, 1], [161, 108, 54, 1], [121, 81, 41, 1], [81, 54, 28, 1], [41, 28, 14, 1]],
}


def _authors_sd(network, schedule, x_T, outer, inner, eta, generator):
    """The authors' nested SD loop, written out from their pipeline in float64: outer DDIM (eta 0) on x̂_0 with its
    last step to t = 1; inner DDIM(eta) from t down to 1, then one more step to t = 0 (abar_0), noise at every step."""
    abar = schedule.alphas_cumprod.double()
    outer_ts = np.linspace(1, 999, outer + 1).round().astype(int)[::-1].tolist()
    x_out, previews = x_T, []
    for i, t in enumerate(outer_ts[:-1]):
        ts = np.linspace(1, t, min(inner, t)).round().astype(int)[::-1].tolist() + [0]
        x = x_out
        for s, s_prev in zip(ts[:-1], ts[1:]):
            eps = network(x, s)
            x0 = (x - (1 - abar[s]).sqrt() * eps) / abar[s].sqrt()
            std = eta * ((1 - abar[s_prev]) / (1 - abar[s]) * (1 - abar[s] / abar[s_prev])).sqrt()
            x = abar[s_prev].sqrt() * x0 + (1 - abar[s_prev] - std**2).sqrt() * eps
            if eta > 0:
                x = x + std * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        previews.append(x)  # the inner run's final latent is the image shown
        t_prev = outer_ts[i + 1]
        eps_outer = (x_out - abar[t].sqrt() * x) / (1 - abar[t]).sqrt()
        x_out = abar[t_prev].sqrt() * x + (1 - abar[t_prev]).sqrt() * eps_outer
    return previews


def _unet_timesteps(pipe):
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(int(a[1].reshape(-1)[0])),
                                                 with_kwargs=True)
    return seen, handle


@pytest.mark.parametrize("outer, inner", sorted(AUTHORS_SD_GRIDS))
def test_the_paper_preset_is_the_authors_sd_sampler(sd_pipe, outer, inner):
    """Same UNet timesteps, same NFEs and the same numbers as the authors' loop (written out above, in float64).
    Error model: both sides run in float64 around a float32 UNet; they differ only in the order of float64
    operations (~1e-16 relative), which flips a float32 rounding of the UNet's input with probability ~1e-8 per
    element; one flip moves a latent by ~1e-7. 1e-6 of the latents' scale is therefore a wide bound, while a wrong
    ending (2.9 % of epŝ) or a missing draw (0.85 sigma z) is off by 1e-3 or more."""
    model = sd_model(sd_pipe, ["a seven", "a digit"], guidance_scale=7.5, preset="paper")
    x_T = model.noise(torch.Generator().manual_seed(3)).double()
    seen, handle = _unet_timesteps(sd_pipe)
    try:
        ours = run(paper_samplers(model, outer * inner, outer)["nested"], x_T, generator=torch.Generator().manual_seed(4))
    finally:
        handle.remove()
    assert seen == [t for grid in AUTHORS_SD_GRIDS[outer, inner] for t in grid]
    assert ours.nfe == ours.planned_nfe == outer * inner and [p.nfe for p in ours.previews][-1] == outer * inner
    theirs = _authors_sd(model.network, model.schedule, x_T, outer, inner, 0.85, torch.Generator().manual_seed(4))
    scale = max(p.abs().max().item() for p in theirs)
    for a, b in zip(ours.previews, theirs):
        assert (a.x0 - b).abs().max().item() <= 1e-6 * scale


def test_the_sd_ending_is_one_more_draw_per_inner_run_from_each_samples_stream(sd_pipe):
    """paper: 4 draws per inner run of 4 steps (the last one to abar_0); book: 3. No NFE is added."""
    draws = {}
    for preset in ("paper", "book"):
        model = sd_model(sd_pipe, ["a seven", "a digit"], guidance_scale=7.5, preset=preset)
        gens = sample_generators(0, [0, 1])
        result = run(paper_samplers(model, 20, 5)["nested"], model.noise(sample_generators(9, [0, 1])), generator=gens)
        assert result.nfe == 20
        ref = sample_generators(0, [0, 1])[0]
        n = 0
        while not torch.equal(ref.get_state(), gens[0].get_state()):
            torch.randn(model.shape[1:], generator=ref)
            n += 1
        draws[preset] = n
    assert draws == {"paper": 5 * 4, "book": 5 * 3}


def test_sd_edge_cases_of_the_authors_code(sd_pipe):
    """What the book does where the authors' code misbehaves (see `paper_samplers`)."""
    model = sd_model(sd_pipe, ["a seven", "a digit"], guidance_scale=7.5, preset="paper")
    seen, handle = _unet_timesteps(sd_pipe)
    try:  # one inner step: the UNet is evaluated at the outer t (the authors' code evaluates it at t = 1)
        one = run(paper_samplers(model, 3, 3)["nested"], model.noise(torch.Generator().manual_seed(0)),
                  generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    assert seen == [999, 666, 334] and one.nfe == 3
    # more inner steps than fit under the last outer t = 41: an error (the authors clamp, 1,241 NFEs for 1,250)
    with pytest.raises(ValueError, match=r"cannot take 50 steps from t=41 down to t=1.*at most 41 steps"):
        paper_samplers(model, total_nfe=1250, outer=25)
    assert paper_samplers(model, total_nfe=25 * 41, outer=25)["nested"].nfe(999) == 25 * 41
    # guidance below 1: refused by the paper preset (the authors turn guidance off); the book applies the formula
    with pytest.raises(ValueError, match="pass guidance_scale=1 for that, or preset='book'"):
        sd_model(sd_pipe, ["a seven"], guidance_scale=0.5, preset="paper")
    book = sd_model(sd_pipe, ["a seven"], guidance_scale=0.5)
    x = book.noise(torch.Generator().manual_seed(1))
    cond = sd_model(sd_pipe, ["a seven"], guidance_scale=1.0).network(x, 500)
    uncond = sd_model(sd_pipe, [""], guidance_scale=1.0).network(x, 500)
    assert torch.allclose(book.network(x, 500), uncond + 0.5 * (cond - uncond), atol=1e-5)
    with pytest.raises(ValueError, match="unknown preset"):
        sd_model(sd_pipe, ["a seven"], preset="authors")


# ---- no autograd graph while sampling (the public API, called outside any no_grad) -----------------------------

def test_sampling_keeps_no_autograd_graph(dit_pipe, sd_pipe):
    assert all(p.requires_grad for p in dit_pipe.transformer.parameters())  # as a freshly built or loaded model
    for model in (dit_model(dit_pipe, [1, 2]), sd_model(sd_pipe, ["a seven", "a digit"])):
        for name, sampler in paper_samplers(model, total_nfe=10 if model.kind == "dit" else 25).items():
            result = run(sampler, model.noise(torch.Generator().manual_seed(0)), generator=torch.Generator(),
                         record_inner=True)
            tensors = [result.x0] + [t for e in result.previews + result.inner for t in (e.x0, e.x)]
            assert not any(t.requires_grad or t.grad_fn is not None for t in tensors), (model.kind, name)
    model = dit_model(dit_pipe, [1, 2])
    opted_in = run(paper_samplers(model, total_nfe=5)["nested"], model.noise(torch.Generator()), grad=True)
    assert opted_in.x0.requires_grad  # methods that need gradients with respect to x_t opt in


# ---- the paper preset's vanilla Stable Diffusion: the unaltered sampler (diffusers' DDIM with SD 1.5's config) ------


# SD 1.5's scheduler_config.json, as DDIMScheduler.from_config reads it (its timestep_spacing: diffusers' default)
SD15_SCHEDULER = {"timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False}


@pytest.mark.parametrize("steps", [50, 12])
def test_the_paper_preset_vanilla_sd_is_diffusers_stable_diffusion_pipeline(steps):
    """preset="paper" vanilla = StableDiffusionPipeline with DDIMScheduler under SD 1.5's config (leading spacing,
    steps_offset 1, set_alpha_to_one False): the same UNet timesteps and the same final latents, from the same x_T.
    Error model: everything in float64 except diffusers' abar, a float32 tensor (as ours: `Schedule.from_diffusers`)
    whose square roots diffusers takes in float32 (relative 2^-24 = 6e-8 per coefficient) and we in float64; over
    `steps` DDIM steps of this contracting sampler that stays below steps x 1e-7 of the latents' scale, while the
    book's ending at x̂_0 on round(linspace(1, 999)) is off by ~3 % of epŝ (1e-2 here)."""
    pipe = tiny_sd_pipe(**SD15_SCHEDULER).to(torch.float64)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a seven", "a digit"]
    model = sd_model(pipe, prompts, guidance_scale=7.5, preset="paper")
    x_T = model.noise(torch.Generator().manual_seed(5))
    assert x_T.dtype == torch.float64
    seen, handle = _unet_timesteps(pipe)
    try:
        ours = run(paper_samplers(model, steps, outer=1 if steps == 12 else None)["vanilla"], x_T).x0
        n_ours = len(seen)
        theirs = pipe(prompts, num_inference_steps=steps, guidance_scale=7.5, latents=x_T.clone(),
                      output_type="latent").images
    finally:
        handle.remove()
    pipe.scheduler.set_timesteps(steps)
    assert seen[:n_ours] == pipe.scheduler.timesteps.tolist() == seen[n_ours:]  # 981, 961, ..., 1 at 50 steps
    scale = theirs.abs().max().item()
    assert (ours - theirs).abs().max().item() <= steps * 1e-7 * scale
    book = run(paper_samplers(sd_model(pipe, prompts, guidance_scale=7.5), steps, outer=1 if steps == 12 else None)
               ["vanilla"], x_T).x0
    assert (book - theirs).abs().max().item() > 1e3 * steps * 1e-7 * scale  # the test tells the two apart


def test_sd15_grid_is_diffusers_and_refuses_what_diffusers_cannot_sample():
    from nestedlib.pipelines import SD15_DDIM, sd15_timesteps

    assert SD15_DDIM == SD15_SCHEDULER
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, **SD15_SCHEDULER)
    for steps in (1, 4, 7, 25, 50, 100, 150, 250, 333, 500):
        scheduler.set_timesteps(steps)
        assert sd15_timesteps(steps) == scheduler.timesteps.tolist()
    assert sd15_timesteps(500)[0] == 999 and sd15_timesteps(4) == [751, 501, 251, 1]
    with pytest.raises(ValueError, match="at most 500 steps"):
        sd15_timesteps(1000)
    with pytest.raises(ValueError, match="positive integer"):
        sd15_timesteps(0)


# ---- the preset object -------------------------------------------------------------------------------------------


def test_a_preset_is_one_object_that_names_what_it_sets(dit_pipe, sd_pipe):
    from nestedlib.pipelines import BOOK, PAPER, PRESETS, Preset, preset_of

    from nestedlib import models

    assert PRESETS == {"book": BOOK, "paper": PAPER} and preset_of("paper") is PAPER and preset_of(BOOK) is BOOK
    assert tuple(PRESETS) == models.PRESETS  # the names the registry's entries may list
    assert (PAPER.grid_spacing, PAPER.dit_guided_channels, PAPER.sd_inner_end_abar0, PAPER.sd_vanilla,
            PAPER.sd_guidance_below_one) == ("space_timesteps", 3, True, "sd15", False)
    assert (BOOK.grid_spacing, BOOK.dit_guided_channels, BOOK.sd_inner_end_abar0, BOOK.sd_vanilla,
            BOOK.sd_guidance_below_one) == ("linspace", None, False, "linspace", True)
    assert PAPER != BOOK and str(PAPER) == "paper" and PAPER == Preset(**vars(PAPER))  # equal settings, equal presets
    # a string and the object build the same samplers; a custom preset changes exactly the field it names
    by_name, by_object = (dit_model(dit_pipe, [1, 7], 4.0, preset=p) for p in ("paper", PAPER))
    assert by_name.preset is PAPER and by_object.network.guided_channels == 3
    grids = {p: paper_samplers(dit_model(dit_pipe, [1], 4.0, preset=p), 100)["nested"].grid(999)
             for p in (BOOK, PAPER, Preset("mine", "space_timesteps", None, False, "linspace", True))}
    assert grids[BOOK] == [999, 799, 600, 400, 201] and grids[PAPER] == [999, 799, 599, 400, 200]
    assert list(grids.values())[2] == grids[PAPER]
    with pytest.raises(ValueError, match="unknown preset 'authors'"):
        preset_of("authors")
    with pytest.raises(ValueError, match="grid_spacing must be one of"):
        Preset("typo", "linear", None, False, "linspace", True)


def test_pixel_models_take_the_preset_themselves():
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    model = pixel_model(DDPMPipeline(unet=unet.eval(), scheduler=DDPMScheduler()), 2, preset="paper")
    assert model.preset.name == "paper" and paper_samplers(model, 10)["nested"].grid(999) == [999, 799, 599, 400, 200]


# ---- prepare: the registry's facts (bundled models; skipped where data/<name> is not there) ----------------------


def _shipped(name):
    from nestedlib import models

    return (models.DATA_ROOT / name / models.SUMS_FILE).is_file()


def test_prepare_refuses_classes_the_bundled_dit_never_saw():
    if not _shipped("mnist-dit"):
        pytest.skip("mnist-dit not shipped")
    from nestedlib.pipelines import prepare

    for bad in ([12], [3, 10], [-1]):
        with pytest.raises(ValueError, match=r"trained on classes 0-9 and the null class 1000.*\[0, 9\]"):
            prepare("mnist-dit", cond=bad)
    with pytest.raises(ValueError, match="null class 1000"):
        prepare("mnist-dit", cond=[1000])  # the null class is unconditional: guidance 1 only
    assert prepare("mnist-dit", cond=[1000], guidance_scale=1.0).network.cond.tolist() == [1000]
    model = prepare("mnist-dit", cond=[0, 9])
    assert model.classes == 10 and model.network.guidance_scale == 1.5 and model.latents == "mnist-vae"


def test_prepare_mnist_sd_prints_no_loading_bar(capfd):
    if not _shipped("mnist-sd"):
        pytest.skip("mnist-sd not shipped")
    from nestedlib.pipelines import prepare

    capfd.readouterr()
    model = prepare("mnist-sd", cond=["a seven"])
    out, err = capfd.readouterr()
    assert "Loading weights" not in out + err and "Loading pipeline components" not in out + err
    assert model.network.guidance_scale == 4.0


def test_prepare_takes_the_family_from_the_registry_not_from_the_pipeline_class():
    if not _shipped("digits8"):
        pytest.skip("digits8 not shipped")
    from nestedlib.pipelines import prepare

    model = prepare("digits8", batch_size=3, preset="paper")
    assert model.kind == "pixel" and model.shape[0] == 3 and model.preset.name == "paper"
    with pytest.raises(ValueError, match="unconditional: leave cond out"):
        prepare("digits8", cond=[1])
    with pytest.raises(ValueError, match="not a diffusion model.*nestedlib.models.load"):
        prepare("mnist-classifier")


def test_a_real_model_refuses_starting_noise_of_another_shape(dit_pipe, sd_pipe):
    """The wrappers declare their latent shape (`Network(image_shape=...)`), so `run` refuses an x_T that the
    transformer or UNet would otherwise take silently (a DiT runs on any even latent size)."""
    dit = dit_model(dit_pipe, [0, 1])
    sd = sd_model(sd_pipe, ["a seven", "a digit"])
    for model in (dit, sd):
        sampler = vanilla(model.network, model.schedule, 2)
        bad = torch.zeros(model.shape[0], model.shape[1], 2 * model.shape[2], 2 * model.shape[3])
        with pytest.raises(ValueError, match=r"x_T has shape .* model\.noise"):
            run(sampler, bad)
        assert run(sampler, model.noise(torch.Generator().manual_seed(0))).x0.shape == model.shape
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        pixel_model(DDPMPipeline(unet=UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
                                                   down_block_types=("DownBlock2D",) * 2,
                                                   up_block_types=("UpBlock2D",) * 2, norm_num_groups=4),
                                 scheduler=DDPMScheduler()), True)

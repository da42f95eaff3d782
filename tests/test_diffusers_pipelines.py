"""Any diffusers pipeline through nestedlib (`pipeline_model` / `prepare(pipe)`): tiny random components of the real
classes (tests/tiny_pipelines.py), offline. Vanilla through nestedlib is the pipeline's own output on the same noise;
nested with one outer step is vanilla; golden numbers pin the nested runs; what nestedlib cannot drive is refused."""
import pytest
import torch
from diffusers import (DDIMScheduler, DDPMPipeline, DDPMScheduler, FlowMatchEulerDiscreteScheduler,
                       FlowMatchHeunDiscreteScheduler, UNet2DModel)

import tiny_pipelines as tiny
from nestedlib import models, run
from nestedlib.pipelines import PIPELINES, pipeline_model, prepare, samplers

SIZE = dict(height=16, width=16)
CALL = {  # what the pipeline's __call__ needs on tiny components besides the prompt (PixArt bins only its real sizes)
    "PixArtAlphaPipeline": dict(use_resolution_binning=False), "PixArtSigmaPipeline": dict(use_resolution_binning=False),
}
NAMES = sorted(tiny.BUILDERS)
STEPS = 6


@pytest.fixture(scope="module")
def pipes():
    return {}


def _pipe(pipes, name, dtype=torch.float32):
    if (name, dtype) not in pipes:
        pipes[name, dtype] = tiny.BUILDERS[name]().to(dtype)
    return pipes[name, dtype]


def _cond(name):
    return [1, 7] if name == "DiTPipeline" else tiny.PROMPTS


def _model(pipe, name, **kw):
    return pipeline_model(pipe, _cond(name), **({} if name == "DiTPipeline" else SIZE), **kw)


def _theirs(pipe, name, x_T, steps=STEPS, **kw):
    """The pipeline's own output from x_T: its final latents, or for DiTPipeline (no `latents` argument) its images
    from the same generator seed, which draws the same x_T."""
    if name == "DiTPipeline":
        images = pipe(_cond(name), num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                      output_type="np", **kw).images
        return torch.from_numpy(images).permute(0, 3, 1, 2)
    return pipe(_cond(name), num_inference_steps=steps, latents=x_T.clone(), output_type="latent", **SIZE,
                **CALL.get(name, {}), **kw).images


def _ours(model, name, x0):
    return (model.decode(x0) / 2 + 0.5).clamp(0, 1).to(torch.float64) if name == "DiTPipeline" else x0


@pytest.mark.parametrize("name", NAMES)
def test_vanilla_through_nestedlib_is_the_pipelines_own_output_float32(pipes, name):
    """Error model (float32): the two loops compute the same steps in another order (x̂_0 and epŝ against the
    scheduler's own formula; the CFG batch as [cond, uncond] against [uncond, cond]): a few units in the last place
    (2^-24 = 6e-8 relative) per step, which these contracting samplers do not amplify; 6 steps x 16 ulp stays below
    1e-5 of the latents' scale, while one step of the wrong grid or guidance moves them by 1e-2 or more."""
    pipe = _pipe(pipes, name)
    model = _model(pipe, name)
    x_T = model.noise(torch.Generator().manual_seed(0))
    ours = _ours(model, name, run(samplers(model, 2, 3)["vanilla"], x_T).x0)
    theirs = _theirs(pipe, name, x_T)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= 1e-5 * theirs.abs().max().item()


@pytest.mark.parametrize("name", NAMES)
def test_vanilla_is_the_pipelines_own_output_float64(pipes, name):
    """float64 components. Error model: what diffusers still takes in float32. DDPM-path pipelines: its abar is a
    float32 tensor whose square roots it takes in float32 (2^-24 relative per coefficient; ours in float64), below
    steps x 1e-7 of the scale. Flow pipelines: FlowMatchEulerDiscreteScheduler casts the sample to float32 before
    each step, and its dt = sigma' - sigma is float32: 2 x 2^-24 per step. DiT: its images, decoded in float64."""
    pipe = _pipe(pipes, name, torch.float64)
    model = _model(pipe, name)
    x_T = model.noise(torch.Generator().manual_seed(0))
    assert x_T.dtype == torch.float64
    ours = _ours(model, name, run(samplers(model, 2, 3)["vanilla"], x_T).x0)
    theirs = _theirs(pipe, name, x_T)
    assert (ours - theirs).abs().max().item() <= STEPS * 1.2e-7 * theirs.abs().max().item()


@pytest.mark.parametrize("name", NAMES)
def test_nested_with_one_outer_step_is_vanilla(pipes, name):
    """Flow pipelines: the one outer step is an inner Euler run on the pipeline's own grid, so it *is* the pipeline's
    vanilla sampler (bit for bit), and one inner step per outer step is vanilla Euler on the outer grid. DDPM-path
    pipelines: one outer step is the inner DDIM run from t = 999 (nestedlib's vanilla DDIM over [0, 999])."""
    model = _model(_pipe(pipes, name), name)
    x_T = model.noise(torch.Generator().manual_seed(1))
    one = run(samplers(model, 1, 4)["nested"], x_T)
    assert one.nfe == 4 and len(one.previews) == 1
    if model.prediction == "flow":
        assert torch.equal(one.x0, run(samplers(model, 1, 4)["vanilla"], x_T).x0)
        a, b = run(samplers(model, 4, 1)["nested"], x_T), run(samplers(model, 4, 1)["vanilla"], x_T)
        assert (a.x0 - b.x0).abs().max().item() <= 1e-5 * b.x0.abs().max().item()  # x̂_0, epŝ against x + dt v
    else:
        inner = samplers(model, 1, 4)["nested"].x0_sampler
        assert torch.equal(one.x0, run(inner, x_T).x0)


GOLDEN = {  # mean |x̂_0| of the 3 outer previews of nested (3 outer x 2 inner), then mean |decoded image|; seed 2
    "DiTPipeline": [207.97744750976562, 203.57940673828125, 203.56072998046875, 0.25760626792907715],
    "FluxPipeline": [0.9667505621910095, 0.9662114977836609, 0.967325747013092, 0.2588762938976288],
    "PixArtAlphaPipeline": [13.130546569824219, 13.312728881835938, 13.294240951538086, 0.2624201476573944],
    "PixArtSigmaPipeline": [13.35645866394043, 13.039700508117676, 13.007922172546387, 0.26168689131736755],
    "StableDiffusion3Pipeline": [0.9295666217803955, 0.9229869842529297, 0.9229536056518555, 0.26976221799850464],
    "StableDiffusionPipeline": [11.594186782836914, 11.570027351379395, 11.582623481750488, 0.2482345700263977],
    "StableDiffusionXLPipeline": [12.530234336853027, 12.417058944702148, 12.404333114624023, 0.24738936126232147],
}


@pytest.mark.parametrize("name", NAMES)
def test_golden_nested_runs(pipes, name):
    """float32 tiny networks: a thread count or vector unit reorders sums (1e-7 relative per operation), far below
    rel 1e-4; a change of grid, guidance, conditioning or decoding moves these means by more than 1 %."""
    model = _model(_pipe(pipes, name), name)
    result = run(samplers(model, 3, 2)["nested"], model.noise(torch.Generator().manual_seed(2)))
    assert [p.nfe for p in result.previews] == [2, 4, 6]
    got = [p.x0.abs().mean().item() for p in result.previews] + [model.decode(result.x0).abs().mean().item()]
    assert got == pytest.approx(GOLDEN[name], rel=1e-4)


@pytest.mark.parametrize("name", ["StableDiffusion3Pipeline", "FluxPipeline", "StableDiffusionXLPipeline"])
def test_decoding_is_the_pipelines_vae_with_its_scaling_and_shift(pipes, name):
    """SD3 and Flux decode z / scaling_factor + shift_factor (Flux after unpacking its 2 x 2 patches); SDXL z /
    scaling_factor: the same images as the pipeline's own output_type='pt' (its [0, 1] postprocessing)."""
    pipe = _pipe(pipes, name)
    model = _model(pipe, name)
    x_T = model.noise(torch.Generator().manual_seed(3))
    ours = (model.decode(run(samplers(model, 1, 3)["vanilla"], x_T).x0) / 2 + 0.5).clamp(0, 1)
    theirs = pipe(tiny.PROMPTS, num_inference_steps=3, latents=x_T.clone(), output_type="pt", **SIZE).images
    assert ours.shape == theirs.shape == (2, 3, 16, 16)
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_v_prediction_is_converted_to_epsilon_from_the_scheduler_config(pipes):
    """An SDXL-like pipeline whose DDIMScheduler says prediction_type='v_prediction': the same latents as the
    pipeline (the conversion eps = sqrt(abar) v + sqrt(1 - abar) x_t is affine, so guiding v or eps is the same)."""
    pipe = tiny.sdxl(prediction_type="v_prediction")
    model = _model(pipe, "StableDiffusionXLPipeline")
    x_T = model.noise(torch.Generator().manual_seed(4))
    ours = run(samplers(model, 2, 3)["vanilla"], x_T).x0
    theirs = _theirs(pipe, "StableDiffusionXLPipeline", x_T)
    assert (ours - theirs).abs().max().item() <= 1e-5 * theirs.abs().max().item()
    eps_model = _model(_pipe(pipes, "StableDiffusionXLPipeline"), "StableDiffusionXLPipeline")
    assert (ours - run(samplers(eps_model, 2, 3)["vanilla"], x_T).x0).abs().max().item() > 1e-2  # told apart


def test_guidance_lives_in_the_inner_process_only(pipes):
    """Every network call of a nested SD3 run is one guided batch (cond and uncond, 2 x 2 rows), and there are
    exactly |outer| x |inner| of them; Flux's guidance is a network input: one branch, 2 rows."""
    for name, rows in (("StableDiffusion3Pipeline", 4), ("FluxPipeline", 2)):
        pipe = _pipe(pipes, name)
        seen = []
        handle = pipe.transformer.register_forward_pre_hook(
            lambda m, a, kw: seen.append(kw["hidden_states"].shape[0]), with_kwargs=True)
        try:
            model = _model(pipe, name)
            result = run(samplers(model, 3, 2)["nested"], model.noise(torch.Generator().manual_seed(5)))
        finally:
            handle.remove()
        assert result.nfe == 6 and seen == [rows] * 6


def test_prepare_takes_a_pipeline_object_and_refuses_what_it_cannot_drive(pipes):
    pipe = _pipe(pipes, "StableDiffusion3Pipeline")
    a, b = prepare(pipe, cond=tiny.PROMPTS, **SIZE), pipeline_model(pipe, tiny.PROMPTS, **SIZE)
    x = a.noise(torch.Generator().manual_seed(6))
    assert a.kind == "sd3" and a.network.guidance_scale == 7.0 and torch.equal(a.network(x, 0.5), b.network(x, 0.5))
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), norm_num_groups=4,
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
    with pytest.raises(ValueError, match=r"cannot drive a DDPMPipeline \(components: \['scheduler', 'unet'\]\).*"
                                         r"StableDiffusionXLPipeline.*PIPELINES"):
        prepare(DDPMPipeline(unet=unet, scheduler=DDPMScheduler()), cond=["a cat"])
    sd3 = tiny.sd3()
    sd3.scheduler = DDIMScheduler()
    with pytest.raises(ValueError, match="with a FlowMatchEulerDiscreteScheduler.*not DDIMScheduler"):
        prepare(sd3, cond=tiny.PROMPTS, **SIZE)
    clipped = tiny.sdxl(clip_sample=True)
    with pytest.raises(ValueError, match="clip_sample=False"):
        samplers(prepare(clipped, cond=tiny.PROMPTS, **SIZE), 2, 2)
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        karras = tiny.flux()
        karras.scheduler = FlowMatchEulerDiscreteScheduler.from_config(karras.scheduler.config, use_karras_sigmas=True)
        prepare(karras, cond=tiny.PROMPTS, **SIZE)
    with pytest.raises(ValueError, match="true CFG"):
        prepare(_pipe(pipes, "FluxPipeline"), cond=tiny.PROMPTS, negative_prompt="blurry", **SIZE)
    with pytest.raises(ValueError, match="text-conditioned: pass cond"):
        prepare(pipe, cond=[3, 4], **SIZE)


def test_every_pipeline_class_has_a_wrapper_and_a_tiny_test_build():
    assert sorted(PIPELINES) == NAMES


def test_the_registry_holds_the_hub_pipelines_facts(monkeypatch):
    for name, guidance in (("stabilityai/stable-diffusion-xl-base-1.0", 5.0), ("PixArt-alpha/PixArt-XL-2-1024-MS", 4.5),
                           ("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", 4.5),
                           ("stabilityai/stable-diffusion-3-medium-diffusers", 7.0),
                           ("black-forest-labs/FLUX.1-dev", 3.5)):
        entry = models.info(name)
        assert (entry.kind, entry.family, entry.guidance, entry.presets) == ("hub", "pipeline", guidance, ("book",))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.HubOfflineError, match="No bundled model stands in for it.*unset HF_HUB_OFFLINE"):
        prepare("black-forest-labs/FLUX.1-dev", cond=["a cat"])


def test_a_dit_folder_with_a_flow_scheduler_is_a_class_conditional_flow_model():
    """The bundled mnist-flow's layout on tiny components: a DiTPipeline whose scheduler is
    FlowMatchEulerDiscreteScheduler. Vanilla through nestedlib equals the scheduler's own Euler loop around the same
    guided velocity (float64; error model of test_vanilla_is_the_pipelines_own_output_float64), nested with one
    outer step is vanilla, and labels it was not trained on are refused."""
    pipe = tiny.dit()
    pipe.transformer = tiny.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                                  out_channels=4, num_layers=1, sample_size=8, patch_size=2,
                                                  num_embeds_ada_norm=1000, norm_num_groups=4).eval()
    pipe.scheduler = FlowMatchEulerDiscreteScheduler()
    pipe = pipe.to(torch.float64)
    model = prepare(pipe, cond=[1, 7], guidance_scale=3.0)
    assert model.prediction == "flow" and model.network.guidance_scale == 3.0
    x_T = model.noise(torch.Generator().manual_seed(7))
    ours = run(samplers(model, 2, 3)["vanilla"], x_T).x0
    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(6)
    x, labels = x_T.clone(), torch.tensor([1, 7, 1000, 1000])
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = pipe.transformer(torch.cat([x, x]), timestep=t.expand(4), class_labels=labels).sample
            v_c, v_u = out.chunk(2)
            x = scheduler.step(v_u + 3.0 * (v_c - v_u), t, x).prev_sample
    assert (ours - x).abs().max().item() <= STEPS * 1.2e-7 * x.abs().max().item()
    assert torch.equal(run(samplers(model, 1, 6)["nested"], x_T).x0, ours)

    class Subclassed(FlowMatchEulerDiscreteScheduler):  # a user's own scheduler class is still a flow (was: betas)
        pass

    for other in (Subclassed(), FlowMatchHeunDiscreteScheduler()):  # same flow path: nestedlib's Euler on it
        pipe.scheduler = other
        again = prepare(pipe, cond=[1, 7], guidance_scale=3.0)
        assert again.prediction == "flow", type(other).__name__
        assert torch.equal(run(samplers(again, 2, 3)["vanilla"], x_T).x0, ours), type(other).__name__
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 9\]"):
        from nestedlib.pipelines import flow_dit_model

        flow_dit_model(pipe, [12], classes=10)

"""diffusers pipelines as nestedlib models: one function turns a DiT, Stable Diffusion or pixel pipeline into the
network, schedule, noise shape and decoder that Algorithms 1 and 2 need, the same way for the bundled stand-ins
and for DiT-XL/2 and Stable Diffusion 1.5.

    model = prepare("mnist-dit", cond=labels, guidance_scale=3.0)     # or "facebook/DiT-XL-2-256" on a GPU
    samplers = paper_samplers(model, total_nfe=100)                   # the paper's vanilla and nested settings
    result = run(samplers["nested"], model.noise(generator), generator=generator)
    images = model.decode(result.x0)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .sampling import Diffusion, Network, nested, vanilla
from .schedules import Schedule, split_budget


@dataclass
class Model:
    """Everything a sampler needs from a pretrained diffusion model."""

    name: str
    kind: str  # "dit" (class labels, learned variance), "sd" (text prompts) or "pixel" (unconditional)
    network: Network  # eps_theta(x_t, t | c), guidance folded in; one call = one NFE
    schedule: Schedule  # the betas the model was trained with
    shape: tuple[int, ...]  # (batch, channels, height, width) of x_T
    decode: Callable[[torch.Tensor], torch.Tensor]  # x_0 (latent or pixels) -> images in [-1, 1]
    learned_variance: bool = False
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    def noise(self, generator: torch.Generator) -> torch.Tensor:
        """x_T ~ N(0, I), drawn from `generator` on its own device, then moved to the model's."""
        return torch.randn(self.shape, generator=generator, device=generator.device, dtype=self.dtype).to(self.device)


def dit_model(pipe, class_labels: Sequence[int] | torch.Tensor, guidance_scale: float = 1.5, name: str = "dit") -> Model:
    """A diffusers DiTPipeline: class-conditional, learned variance, guidance on the epsilon channels only."""
    transformer, vae = pipe.transformer, pipe.vae
    device, dtype = transformer.device, transformer.dtype
    labels = torch.as_tensor(class_labels, dtype=torch.long, device=device).reshape(-1)
    null_class = int(transformer.config.num_embeds_ada_norm)  # DiTPipeline's null label (1000 for DiT-XL/2)
    if labels.numel() == 0 or int(labels.min()) < 0 or int(labels.max()) >= null_class:
        raise ValueError(f"class labels must lie in [0, {null_class - 1}] (one per sample), got {labels.tolist()}")

    def fn(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return transformer(x.to(dtype), timestep=t, class_labels=cond).sample.to(x.dtype)

    network = Network(fn, cond=labels, null_cond=torch.full_like(labels, null_class), guidance_scale=guidance_scale)
    c, size = transformer.config.in_channels, transformer.config.sample_size
    return Model(
        name, "dit", network, Schedule.from_diffusers(pipe.scheduler), (len(labels), c, size, size),
        _vae_decoder(vae), learned_variance=transformer.config.out_channels == 2 * c, device=device, dtype=dtype,
    )


def sd_model(pipe, prompts: Sequence[str] | str, guidance_scale: float = 7.5, name: str = "sd",
             negative_prompt: str = "") -> Model:
    """A diffusers StableDiffusionPipeline: text-conditioned; the empty prompt is the unconditional branch."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("give at least one prompt (one per sample)")
    unet, device, dtype = pipe.unet, pipe.unet.device, pipe.unet.dtype
    with torch.no_grad():
        cond, null = pipe.encode_prompt(prompts, device, 1, True, negative_prompt=[negative_prompt] * len(prompts))

    def fn(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return unet(x.to(dtype), t, encoder_hidden_states=c).sample.to(x.dtype)

    network = Network(fn, cond=cond, null_cond=null, guidance_scale=guidance_scale)
    size = unet.config.sample_size
    shape = (len(prompts), unet.config.in_channels, size, size)
    return Model(name, "sd", network, Schedule.from_diffusers(pipe.scheduler), shape, _vae_decoder(pipe.vae),
                 device=device, dtype=dtype)


def pixel_model(pipe, batch_size: int, name: str = "pixel") -> Model:
    """An unconditional pixel-space pipeline (e.g. diffusers' DDPMPipeline): x_0 is the image itself."""
    unet, device, dtype = pipe.unet, pipe.unet.device, pipe.unet.dtype
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")

    def fn(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        return unet(x.to(dtype), t).sample.to(x.dtype)

    size = unet.config.sample_size
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    shape = (batch_size, unet.config.in_channels, *size)
    return Model(name, "pixel", Network(fn), Schedule.from_diffusers(pipe.scheduler), shape,
                 lambda x0: x0.clamp(-1, 1), learned_variance=unet.config.out_channels == 2 * unet.config.in_channels,
                 device=device, dtype=dtype)


def _vae_decoder(vae) -> Callable[[torch.Tensor], torch.Tensor]:
    """Latents -> images: vae.decode(z / scaling_factor), in [-1, 1] (LDM's decoder D)."""
    scale = float(vae.config.scaling_factor)

    @torch.no_grad()
    def decode(z: torch.Tensor) -> torch.Tensor:
        return vae.decode(z.to(vae.dtype) / scale).sample.clamp(-1, 1).float()

    return decode


# The guidance scale each model is sampled with by default: the paper's for the hub models; for the bundled ones,
# the scale their model cards report quality at.
GUIDANCE = {"facebook/DiT-XL-2-256": 1.5, "stable-diffusion-v1-5/stable-diffusion-v1-5": 7.5, "mnist-dit": 1.5,
            "mnist-sd": 4.0}


def prepare(name: str, cond: Any = None, guidance_scale: float | None = None, *, batch_size: int | None = None,
            device: str | torch.device = "cpu") -> Model:
    """Load a model by name (nestedlib.models registry: bundled or hub) and wrap it for nestedlib.

    cond: class labels for DiT models, prompts for Stable Diffusion models, nothing for pixel models.
    guidance_scale: defaults to GUIDANCE[name].
    """
    from .models import info, load

    info(name)  # an unknown name fails here, listing the known ones
    pipe = load(name, device=device)
    cls = type(pipe).__name__
    if cls == "DiTPipeline":
        scale = guidance_scale if guidance_scale is not None else GUIDANCE.get(name, 1.5)
        return dit_model(pipe, cond if cond is not None else list(range(10)), scale, name)
    if cls == "StableDiffusionPipeline":
        scale = guidance_scale if guidance_scale is not None else GUIDANCE.get(name, 7.5)
        if cond is None:
            raise ValueError(f"{name} is text-conditioned: pass cond=[prompt, ...], one prompt per sample")
        return sd_model(pipe, cond, scale, name)
    if cond is not None:
        raise ValueError(f"{name} is unconditional: leave cond out and pass batch_size")
    return pixel_model(pipe, batch_size or 16, name)


def paper_samplers(model: Model, total_nfe: int, outer: int | None = None) -> dict[str, Diffusion]:
    """The paper's vanilla and nested samplers at one total NFE budget, for a DiT-like or an SD-like model.

    DiT (ImageNet settings): vanilla = DDPM with the learned variance, `total_nfe` steps respaced over [0, 999];
    nested = 5 outer DDIM steps, each an inner DDPM (learned variance) run over [0, t] of total_nfe / 5 steps.
    Stable Diffusion (the authors' script): vanilla = DDIM with `total_nfe` steps; nested = 25 outer DDIM steps of
    total_nfe / 25 inner DDIM(eta = 0.85) steps over [1, t]. Pixel models follow the DiT settings.
    """
    net, sched = model.network, model.schedule
    if model.kind == "sd":
        outer = outer or 25
        inner = split_budget(total_nfe, outer)
        return {
            "vanilla": vanilla(net, sched, total_nfe, transition="ddim", t_end=1),
            "nested": nested(net, sched, outer, inner, inner_transition="ddim", inner_eta=0.85, inner_t_end=1),
        }
    outer = outer or 5
    inner = split_budget(total_nfe, outer)
    lv = model.learned_variance
    return {
        "vanilla": vanilla(net, sched, total_nfe, transition="ddpm", learned_variance=lv),
        "nested": nested(net, sched, outer, inner, inner_transition="ddpm", learned_variance=lv),
    }

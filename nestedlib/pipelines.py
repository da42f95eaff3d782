"""diffusers pipelines as nestedlib models: one function turns a DiT, Stable Diffusion or pixel pipeline into the
network, schedule, noise shape and decoder that Algorithms 1 and 2 need, the same way for the bundled stand-ins
and for DiT-XL/2 and Stable Diffusion 1.5.

    model = prepare("mnist-dit", cond=labels, guidance_scale=1.5)     # or "facebook/DiT-XL-2-256" on a GPU
    samplers = paper_samplers(model, total_nfe=100)                   # the paper's vanilla and nested settings
    result = run(samplers["nested"], model.noise(generator), generator=generator)      # no autograd graph is kept
    images = model.decode(result.x0)

`prepare` takes every fact of a model from its registry entry (nestedlib.models): the loader, the family adapter
that wraps it (`ADAPTERS`), its guidance, its trained classes, its latent family. A sampler preset is one `Preset`
object that names each setting it fixes; "book" and "paper" are its two instances (nestedlib.presets).
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from . import models as registry  # called through the module, so a test may stand in for registry.load
from .models import ModelInfo
from .presets import BOOK, PAPER, PRESETS, SD15_DDIM, FixedGrid, Preset, preset_of, sd15_timesteps  # noqa: F401
from .sampling import (Context, Diffusion, Estimate, Event, Network, NetworkMean, nested, nfe_so_far, predict_x0,
                       vanilla)
from .schedules import Schedule, next_t, positive_int, process_grid, split_budget, step_counts
from .transitions import DDIM, randn


# --- Models: a pipeline wrapped for the samplers. ------------------------------------------------------------


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
    preset: Preset = BOOK  # PAPER: the authors' exact code paths (see `Preset`, `paper_samplers`); BOOK: ours
    classes: int | None = None  # "dit": the class labels 0 .. classes - 1 it was trained on
    latents: str | None = None  # its latent family (the registry's VAE name); None: unknown, or pixels
    preview_decoders: Callable[[], Any] | None = None  # loads the cheap decoders fitted to its latents, if any

    def __post_init__(self):
        self.preset = preset_of(self.preset)  # preset="paper" as a string still works

    def noise(self, generator: torch.Generator | list[torch.Generator]) -> torch.Tensor:
        """x_T ~ N(0, I), drawn from `generator` (or one generator per sample) on its device, moved to the model's."""
        return randn(torch.empty(self.shape, dtype=self.dtype, device=self.device), generator)


def dit_model(pipe, class_labels: Sequence[int] | torch.Tensor, guidance_scale: float = 1.5, name: str = "dit",
              preset: str | Preset = "book", classes: int | None = None) -> Model:
    """A diffusers DiTPipeline: class-conditional, learned variance, guidance on the epsilon channels only.

    `classes`: the labels 0 .. classes - 1 the network was trained on (the registry's; None: every label below the
    null class). preset.dit_guided_channels = 3 ("paper") guides only the first 3 of the 4 latent noise channels, as
    the official DiT sampler that the paper's numbers come from does (`eps = model_out[:, :3]`); None ("book")
    guides all 4, as diffusers' DiTPipeline.
    """
    preset = preset_of(preset)
    transformer, vae = pipe.transformer, pipe.vae
    device, dtype = transformer.device, transformer.dtype
    labels = torch.as_tensor(class_labels, dtype=torch.long, device=device).reshape(-1)
    null_class = int(transformer.config.num_embeds_ada_norm)  # DiTPipeline's null label (1000 for DiT-XL/2)
    classes = null_class if classes is None else int(classes)
    trained = f"{name} was trained on classes 0-{classes - 1} and the null class {null_class}; " \
        if classes < null_class else ""
    ok = (labels >= 0) & (labels < classes) | ((labels == null_class) & (guidance_scale == 1.0))
    if labels.numel() == 0 or not bool(ok.all()):  # the null class: unconditional, unguided only
        raise ValueError(f"{trained}class labels must lie in [0, {classes - 1}] (one per sample; the null class "
                         f"{null_class} samples unconditionally, with guidance_scale=1), got {labels.tolist()}")

    def fn(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return transformer(x.to(dtype), timestep=t, class_labels=cond).sample.to(x.dtype)

    c, size = transformer.config.in_channels, transformer.config.sample_size
    network = Network(fn, cond=labels, null_cond=torch.full_like(labels, null_class), guidance_scale=guidance_scale,
                      guided_channels=preset.dit_guided_channels, image_shape=(c, size, size))
    return Model(
        name, "dit", network, Schedule.from_diffusers(pipe.scheduler), (len(labels), c, size, size),
        _vae_decoder(vae), learned_variance=transformer.config.out_channels == 2 * c, device=device, dtype=dtype,
        preset=preset, classes=classes,
    )


def sd_model(pipe, prompts: Sequence[str] | str, guidance_scale: float = 7.5, name: str = "sd",
             negative_prompt: str = "", preset: str | Preset = "book") -> Model:
    """A diffusers StableDiffusionPipeline: text-conditioned; the empty prompt is the unconditional branch.

    Guidance is eps_u + w (eps_c - eps_u) for every w; the authors' pipeline switches guidance off for w <= 1, so
    preset="paper" (`sd_guidance_below_one=False`) refuses w < 1 rather than silently sampling something else.
    """
    preset = preset_of(preset)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("give at least one prompt (one per sample)")
    if not preset.sd_guidance_below_one and guidance_scale < 1.0:
        raise ValueError(f"guidance_scale={guidance_scale} < 1: the authors' pipeline turns guidance off there and "
                         "samples the conditional model alone; pass guidance_scale=1 for that, or preset='book' for "
                         "eps_u + w (eps_c - eps_u) with w < 1")
    unet, device, dtype = pipe.unet, pipe.unet.device, pipe.unet.dtype
    with torch.no_grad():
        cond, null = pipe.encode_prompt(prompts, device, 1, True, negative_prompt=[negative_prompt] * len(prompts))

    def fn(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return unet(x.to(dtype), t, encoder_hidden_states=c).sample.to(x.dtype)

    size = unet.config.sample_size
    shape = (len(prompts), unet.config.in_channels, size, size)
    network = Network(fn, cond=cond, null_cond=null, guidance_scale=guidance_scale, image_shape=shape[1:])
    return Model(name, "sd", network, Schedule.from_diffusers(pipe.scheduler), shape, _vae_decoder(pipe.vae),
                 device=device, dtype=dtype, preset=preset)


def pixel_model(pipe, batch_size: int, name: str = "pixel", preset: str | Preset = "book") -> Model:
    """An unconditional pixel-space pipeline (e.g. diffusers' DDPMPipeline): x_0 is the image itself."""
    unet, device, dtype = pipe.unet, pipe.unet.device, pipe.unet.dtype
    batch_size = positive_int("batch_size", batch_size)

    def fn(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        return unet(x.to(dtype), t).sample.to(x.dtype)

    size = unet.config.sample_size
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    shape = (int(batch_size), unet.config.in_channels, *size)
    return Model(name, "pixel", Network(fn, image_shape=shape[1:]), Schedule.from_diffusers(pipe.scheduler), shape,
                 lambda x0: x0.clamp(-1, 1), learned_variance=unet.config.out_channels == 2 * unet.config.in_channels,
                 device=device, dtype=dtype, preset=preset)


def _vae_decoder(vae) -> Callable[[torch.Tensor], torch.Tensor]:
    """Latents -> images: vae.decode(z / scaling_factor), in [-1, 1] (LDM's decoder D)."""
    scale = float(vae.config.scaling_factor)

    @torch.no_grad()
    def decode(z: torch.Tensor) -> torch.Tensor:
        return vae.decode(z.to(vae.dtype) / scale).sample.clamp(-1, 1).float()

    return decode


# --- Family adapters: a registry entry's pipeline wrapped by its family. -------------------------------------


def _adapt_dit(pipe, entry: ModelInfo, cond, scale: float, batch_size, preset: Preset) -> Model:
    """'dit': class labels (default: one of each of the first ten classes), checked against the entry's classes."""
    if batch_size is not None:
        raise ValueError(f"{entry.name} is class-conditional: pass cond=[label, ...] (one per sample), not batch_size")
    if int(pipe.transformer.config.num_embeds_ada_norm) != entry.null_class:
        raise ValueError(f"{entry.name}'s registry entry says null class {entry.null_class}, its network has "
                         f"{pipe.transformer.config.num_embeds_ada_norm}; fix the entry in nestedlib/models.py")
    labels = list(range(min(10, entry.classes))) if cond is None else cond
    return dit_model(pipe, labels, scale, entry.name, preset, classes=entry.classes)


def _adapt_sd(pipe, entry: ModelInfo, cond, scale: float, batch_size, preset: Preset) -> Model:
    """'sd': one prompt per sample."""
    if cond is None or batch_size is not None:
        raise ValueError(f"{entry.name} is text-conditioned: pass cond=[prompt, ...], one prompt per sample "
                         "(no batch_size)")
    return sd_model(pipe, cond, scale, entry.name, preset=preset)


def _adapt_pixel(pipe, entry: ModelInfo, cond, scale, batch_size, preset: Preset) -> Model:
    """'pixel': unconditional, `batch_size` samples (default 16)."""
    if cond is not None:
        raise ValueError(f"{entry.name} is unconditional: leave cond out and pass batch_size")
    return pixel_model(pipe, 16 if batch_size is None else batch_size, entry.name, preset)


ADAPTERS: dict[str, Callable[..., Model]] = {"dit": _adapt_dit, "sd": _adapt_sd, "pixel": _adapt_pixel}


def prepare(name: str, cond: Any = None, guidance_scale: float | None = None, *, batch_size: int | None = None,
            device: str | torch.device = "cpu", preset: str | Preset = "book") -> Model:
    """Load a model by registry name (nestedlib.models: bundled or hub) and wrap it by its entry's family.

    cond: class labels for "dit" models, prompts for "sd" models, nothing for "pixel" models (pass batch_size).
    guidance_scale: defaults to the entry's. preset: "paper" (PAPER) for the authors' exact DiT and Stable
    Diffusion samplers, "book" (BOOK) for this book's defaults; see `Preset`.
    """
    preset = preset_of(preset)
    entry = registry.info(name)  # an unknown name fails here, listing the known ones
    if entry.family not in ADAPTERS:
        raise ValueError(f"{name} is not a diffusion model ({entry.description}); load it with "
                         f"nestedlib.models.load({name!r})")
    if preset.name not in entry.presets:
        raise ValueError(f"{name} supports the presets {entry.presets}, not {preset.name!r}")
    scale = entry.guidance if guidance_scale is None else guidance_scale
    model = ADAPTERS[entry.family](registry.load(name, device=device), entry, cond, 1.0 if scale is None else scale,
                                   batch_size, preset)
    decoders = entry.preview_decoders
    model.latents = entry.latents
    model.preview_decoders = (lambda: registry.load(decoders, device=model.device)) if decoders else None
    return model


def paper_samplers(model: Model, total_nfe: int, outer: int | None = None,
                   inner_steps: Sequence[int] | None = None) -> dict[str, Diffusion]:
    """The paper's vanilla and nested samplers at one total NFE budget, for a DiT-like or an SD-like model.

    `inner_steps` gives nested one inner step count per outer step (e.g. `schedules.allocate`), summing to
    total_nfe, in place of the even split total_nfe / outer.

    DiT (ImageNet settings): vanilla = DDPM with the learned variance, `total_nfe` steps respaced over [0, 999];
    nested = 5 outer DDIM steps, each an inner DDPM (learned variance) run over [0, t] of total_nfe / 5 steps.
    Stable Diffusion (the authors' script): vanilla = DDIM with `total_nfe` steps; nested = 25 outer DDIM steps of
    total_nfe / 25 inner DDIM(eta = 0.85) steps over [1, t]. Pixel models follow the DiT settings.

    What model.preset (a `Preset`) sets:
    - grid_spacing (DiT, pixel): "space_timesteps" ("paper") builds every grid as improved-diffusion does, as the
      authors' DiT script (5 outer steps: [999, 799, 599, 400, 200]); "linspace" ("book") rounds a linspace
      ([999, 799, 600, 400, 201]). Guidance on 3 channels comes with the model (`dit_model`).
    - sd_inner_end_abar0 (SD): True ("paper") ends each inner run as the authors' NestedScheduler (diffusers'
      `set_alpha_to_one=False`): a DDIM step from t = 1 to t = 0 with abar_0 = 0.99915 (0.99957 x̂_0 + 0.0292 epŝ,
      plus one more noise draw at eta = 0.85, no NFE); False ("book") ends exactly at x̂_0.
    - sd_vanilla (SD): "sd15" ("paper") is the unaltered Stable Diffusion sampler the paper compares against:
      diffusers' DDIMScheduler with SD 1.5's config, on its grid (`sd15_timesteps`: 981, 961, ..., 1 at 50 steps)
      down to abar_0, returning the final latents (`FixedGrid`); "linspace" ("book") is DDIM (eta = 0) over
      round(linspace(1, 999)), ending at x̂_0, the grid of the nested sampler's outer steps.
    Where the authors' code misbehaves the book does not follow it, in either preset: one inner step evaluates the
    network at the outer t (theirs: at t = 1); more inner steps than fit under an outer t raise an error here
    (theirs: clamped, so 25 x 50 spends 1,241 NFEs, not 1,250); w < 1 is refused by `sd_model(preset="paper")`
    (theirs: guidance off).
    """
    net, sched, preset = model.network, model.schedule, preset_of(model.preset)
    if inner_steps is not None:
        inner_steps = [int(k) for k in inner_steps]
        if sum(inner_steps) != total_nfe or (outer is not None and outer != len(inner_steps)):
            raise ValueError(f"inner_steps {inner_steps} spend {sum(inner_steps)} NFEs over {len(inner_steps)} outer "
                             f"steps; they must sum to total_nfe={total_nfe} (and have outer={outer} entries)")
        outer = len(inner_steps)
    if model.kind == "sd":
        outer = outer or 25
        split = inner_steps or split_budget(total_nfe, outer)
        end = sched.abar(0) if preset.sd_inner_end_abar0 else 1.0  # the authors' inner DDIM ends at t = 0, not x̂_0
        inner = vanilla(net, sched, split, transition="ddim", eta=0.85, t_end=1,
                        final_alpha_cumprod=end)
        if preset.sd_vanilla == "sd15":  # diffusers' DDIMScheduler with SD 1.5's config, to abar_0 (set_alpha_to_one)
            van = FixedGrid(NetworkMean(net, sched), DDIM(sched, 0.0, sched.abar(0)), total_nfe, sd15_timesteps)
        else:
            van = vanilla(net, sched, total_nfe, transition="ddim", t_end=1)
        samplers = {"vanilla": van, "nested": nested(inner, outer)}
    else:
        outer = outer or 5
        kw = dict(transition="ddpm", learned_variance=model.learned_variance, spacing=preset.grid_spacing)
        inner = vanilla(net, sched, inner_steps or split_budget(total_nfe, outer), **kw)
        samplers = {"vanilla": vanilla(net, sched, total_nfe, **kw),
                    "nested": nested(inner, outer, spacing=kw["spacing"])}
    samplers["nested"].nfe(sched.num_timesteps - 1)  # every inner grid fits under its outer t, or a clear error now
    return samplers


# --- diffusers schedulers as inner processes (e.g. DPM-Solver++). -----------------------------------------------


class SchedulerSampler:
    """p(x_0 | x_t) sampled by a diffusers scheduler run from x_t at t down to the clean end (e.g. DPM-Solver++).

    Works with every scheduler whose `set_timesteps` accepts custom `timesteps` (DDPMScheduler,
    DPMSolverMultistepScheduler, ...); see `inner_from_scheduler` for DDIMScheduler.
    """

    def __init__(self, scheduler, network: Callable, steps: int | Sequence[int], *, t_end: int = 0,
                 drop_end: bool = False):
        if "timesteps" not in inspect.signature(scheduler.set_timesteps).parameters:
            raise ValueError(f"{type(scheduler).__name__} cannot start at an arbitrary timestep (its set_timesteps "
                             "takes no custom `timesteps`); use inner_from_scheduler, or a transition from nestedlib")
        if scheduler.config.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError("nestedlib's networks predict epsilon; configure the scheduler with "
                             "prediction_type='epsilon'")
        self.scheduler, self.network = scheduler, network
        self.schedule = Schedule.from_diffusers(scheduler)
        self.steps, self.t_end, self.drop_end = steps, t_end, drop_end
        step_counts(steps)  # the grid rules and errors of every nestedlib process (`schedules.process_grid`)

    def grid(self, t_start: int, index: int = 0) -> list[int]:
        """The scheduler's timesteps from t_start as step `index` of the enclosing process (`process_grid`)."""
        return process_grid(self.steps, t_start, index, t_end=self.t_end, drop_end=self.drop_end)

    def nfe(self, t: int, index: int = 0) -> int:
        return len(self.grid(t, index))

    def __call__(self, x: torch.Tensor, t: int, t_next: int, ctx: Context) -> Estimate:
        """Algorithm 2, line 3, by the scheduler's own loop; each step reports the network's x̂_0 as its preview."""
        grid = self.grid(t, ctx.path[-1] if ctx.path else 0)
        scheduler = copy.deepcopy(self.scheduler)  # a fresh state (multistep history) for every inner run
        scheduler.set_timesteps(timesteps=grid, device=x.device)
        for j, s in enumerate(grid):
            out = self.network(x, s)
            x0 = predict_x0(x, out[:, : x.shape[1]], self.schedule.abar(s))  # DDPM eq. 15: the step's preview
            x = scheduler.step(out, s, x, generator=ctx.generator).prev_sample
            ctx.report(Event(ctx.depth, ctx.path + (j,), s, next_t(grid, j), x0, x, nfe_so_far()))
        return Estimate(x)

    def __repr__(self) -> str:
        return f"SchedulerSampler({type(self.scheduler).__name__})"


def inner_from_scheduler(scheduler, network: Callable, steps: int | Sequence[int], *, t_end: int = 0,
                         drop_end: bool = False, eta: float = 0.0):
    """Any diffusers scheduler as an inner process (an x0-sampler for Algorithm 2).

    diffusers' DDIMScheduler steps by a fixed stride from T, so it cannot start at an outer t; its update is
    written out in `nestedlib.transitions.DDIM` (tested step for step against DDIMScheduler) and used instead,
    with the scheduler's own betas and its abar at the clean end (`set_alpha_to_one`).
    """
    from diffusers import DDIMScheduler

    if isinstance(scheduler, DDIMScheduler):
        schedule = Schedule.from_diffusers(scheduler)
        clip = scheduler.config.clip_sample_range if scheduler.config.clip_sample else None
        end = float(scheduler.final_alpha_cumprod)  # 1, or abar_0 with set_alpha_to_one=False (SD's config)
        return Diffusion(NetworkMean(network, schedule, clip), DDIM(schedule, eta, end), steps, t_end=t_end,
                         drop_end=drop_end)
    return SchedulerSampler(scheduler, network, steps, t_end=t_end, drop_end=drop_end)

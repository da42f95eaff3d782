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
    pipeline: Any = None  # the diffusers pipeline it wraps, where `samplers` follows its scheduler
    prediction: str = "epsilon"  # what `network` returns: "epsilon" (DDPM path) or "flow" (velocity, nestedlib.flow)

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


def flow_dit_model(pipe, class_labels: Sequence[int] | torch.Tensor, guidance_scale: float = 1.5,
                   name: str = "flow-dit", classes: int | None = None) -> Model:
    """A class-conditional rectified-flow DiT (a DiTPipeline folder with FlowMatchEulerDiscreteScheduler, as the
    bundled mnist-flow): velocity out, guided on every channel, the timestep sigma T (as SD3 takes it)."""
    from .flow import FlowSchedule

    transformer, vae = pipe.transformer, pipe.vae
    device, dtype = transformer.device, transformer.dtype
    labels = torch.as_tensor(class_labels, dtype=torch.long, device=device).reshape(-1)
    null_class = int(transformer.config.num_embeds_ada_norm)
    classes = null_class if classes is None else int(classes)
    ok = (labels >= 0) & (labels < classes) | ((labels == null_class) & (guidance_scale == 1.0))
    if labels.numel() == 0 or not bool(ok.all()):
        raise ValueError(f"{name} was trained on classes 0-{classes - 1} and the null class {null_class}: class "
                         f"labels must lie in [0, {classes - 1}] (the null class only with guidance_scale=1), got "
                         f"{labels.tolist()}")

    def fn(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return transformer(x.to(dtype), timestep=_sigma_timesteps(t), class_labels=cond).sample.to(x.dtype)

    c, size = transformer.config.in_channels, transformer.config.sample_size
    network = Network(fn, cond=labels, null_cond=torch.full_like(labels, null_class), guidance_scale=guidance_scale,
                      image_shape=(c, size, size))
    return Model(name, "dit", network, FlowSchedule.from_diffusers(pipe.scheduler), (len(labels), c, size, size),
                 _vae_decoder(vae), device=device, dtype=dtype, classes=classes, pipeline=pipe, prediction="flow")


def _is_flow(pipe) -> bool:
    """Does the pipeline sample a rectified flow (Eq. 1 on x_t = (1 - sigma) x0 + sigma eps)? Its scheduler is one of
    diffusers' FlowMatch* schedulers (Euler, Heun, LCM) or a subclass of one: matching the exact class name would
    take a subclass for a DDPM model and sample it with the wrong path."""
    return any(c.__name__.startswith("FlowMatch") for c in type(getattr(pipe, "scheduler", None)).__mro__)


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
    if _is_flow(pipe):  # a rectified-flow DiT (mnist-flow)
        return flow_dit_model(pipe, labels, scale, entry.name, classes=entry.classes)
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


def prepare(name: Any, cond: Any = None, guidance_scale: float | None = None, *, batch_size: int | None = None,
            device: str | torch.device = "cpu", preset: str | Preset = "book", **options) -> Model:
    """Load a model by registry name (nestedlib.models: bundled or hub) and wrap it by its entry's family, or wrap
    a diffusers pipeline object you already have (`pipeline_model`, by its class).

    cond: class labels for "dit" models, prompts for "sd" and pipeline models, nothing for "pixel" models (pass
    batch_size). guidance_scale: defaults to the entry's (or the pipeline's). preset: "paper" (PAPER) for the
    authors' exact DiT and Stable Diffusion samplers, "book" (BOOK) for this book's defaults; see `Preset`.
    options (pipelines): negative_prompt, height, width.
    """
    preset = preset_of(preset)
    if not isinstance(name, str):  # a pipeline object
        return pipeline_model(name, cond, guidance_scale, preset=preset, **options)
    entry = registry.info(name)  # an unknown name fails here, listing the known ones
    if entry.family not in ADAPTERS and entry.family != "pipeline":
        raise ValueError(f"{name} is not a diffusion model ({entry.description}); load it with "
                         f"nestedlib.models.load({name!r})")
    if preset.name not in entry.presets:
        raise ValueError(f"{name} supports the presets {entry.presets}, not {preset.name!r}")
    scale = entry.guidance if guidance_scale is None else guidance_scale
    if entry.family == "pipeline":  # wrapped by the loaded pipeline's class
        if batch_size is not None:
            raise ValueError(f"{name} is text-conditioned: pass cond=[prompt, ...], one prompt per sample")
        model = pipeline_model(registry.load(name, device=device), cond, scale, name=name, preset=preset, **options)
    else:
        if options:
            raise ValueError(f"{sorted(options)}: options of diffusers pipelines; {name} takes none of them")
        model = ADAPTERS[entry.family](registry.load(name, device=device), entry, cond,
                                       1.0 if scale is None else scale, batch_size, preset)
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
    if model.prediction == "flow":  # the same split on a flow path: Euler inside, FlowDDIM outside (nestedlib.flow)
        from .flow import euler

        outer = outer or (len(inner_steps) if inner_steps is not None else 5)
        if inner_steps is not None and sum(inner_steps) != total_nfe:
            raise ValueError(f"inner_steps {list(inner_steps)} spend {sum(inner_steps)} NFEs; they must sum to "
                             f"total_nfe={total_nfe}")
        inner = euler(net, sched, list(inner_steps) if inner_steps is not None else split_budget(total_nfe, outer))
        return {"vanilla": euler(net, sched, total_nfe), "nested": nested(inner, outer)}
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


def refuse_clipping(scheduler, name: str = "the") -> None:
    """The one rule for a DDIMScheduler that clips x̂_0: nestedlib refuses it rather than step differently.

    Eq. 1's transition q(x_t' | x̂_0, x_t) sees only x̂_0 and x_t, so with x̂_0 clipped its epsilon is the one the
    clipped x̂_0 implies: `vanilla(..., clip=r)` is `DDIMScheduler(clip_sample=True, clip_sample_range=r).step(...,
    use_clipped_model_output=True)` (tested). DDIMScheduler's default step (use_clipped_model_output=False, what
    every pipeline calls) keeps the network's own epsilon instead, and dynamic thresholding has no nestedlib
    counterpart; neither can be reproduced, so both raise here. (`SchedulerSampler` runs any other scheduler's own
    step, clipping included, so it follows the scheduler as it is.)
    """
    config = scheduler.config
    if config.get("clip_sample") or config.get("thresholding"):
        what = "thresholds" if config.get("thresholding") else "clips"
        raise ValueError(
            f"{name} DDIMScheduler {what} x̂_0 (clip_sample={config.get('clip_sample')}, thresholding="
            f"{config.get('thresholding')}) and then steps with the network's own epsilon, not the one the clipped "
            "x̂_0 implies, which no transition of Eq. 1 does. Set scheduler = DDIMScheduler.from_config("
            "scheduler.config, clip_sample=False, thresholding=False) (latent models are not clipped: "
            "StableDiffusionPipeline turns clipping off itself); to clip x̂_0 the way Eq. 1 allows, build "
            "vanilla(network, schedule, steps, clip=clip_sample_range), which equals DDIMScheduler.step(..., "
            "use_clipped_model_output=True)")


def inner_from_scheduler(scheduler, network: Callable, steps: int | Sequence[int], *, t_end: int = 0,
                         drop_end: bool = False, eta: float = 0.0, mu: float | None = None,
                         spacing: str = "scheduler"):
    """Any diffusers scheduler as an inner process (an x0-sampler for Algorithm 2).

    FlowMatchEulerDiscreteScheduler (SD3, Flux) is Euler on a flow path, `nestedlib.flow.euler` on its sigmas
    (mu: the resolution-dependent shift where it shifts dynamically; spacing="flux": FluxPipeline's sigmas), with
    fresh noise where the scheduler samples stochastically.

    diffusers' DDIMScheduler steps by a fixed stride from T, so it cannot start at an outer t; its update is
    written out in `nestedlib.transitions.DDIM` (tested step for step against DDIMScheduler) and used instead,
    with the scheduler's own betas and its abar at the clean end (`set_alpha_to_one`). A DDIMScheduler that clips
    or thresholds x̂_0 is refused (`refuse_clipping`).
    """
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):  # written out in nestedlib.flow (tested against it)
        from .flow import FlowSchedule, euler

        return euler(network, FlowSchedule.from_diffusers(scheduler, mu=mu, spacing=spacing), steps,
                     fresh=bool(scheduler.config.get("stochastic_sampling")))
    if isinstance(scheduler, DDIMScheduler):
        refuse_clipping(scheduler)
        schedule = Schedule.from_diffusers(scheduler)
        end = float(scheduler.final_alpha_cumprod)  # 1, or abar_0 with set_alpha_to_one=False (SD's config)
        return Diffusion(NetworkMean(network, schedule), DDIM(schedule, eta, end), steps, t_end=t_end,
                         drop_end=drop_end)
    return SchedulerSampler(scheduler, network, steps, t_end=t_end, drop_end=drop_end)


# --- Any diffusers pipeline: one wrapper per way a pipeline calls its network. ----------------------------------
# Each wrapper encodes the condition with the pipeline's own encode_prompt, calls the network as the pipeline's
# denoising loop does (same inputs, same timestep dtype, classifier-free guidance as uncond + w (cond - uncond)),
# converts the output to what the samplers take (epsilon on a DDPM path, the velocity on a flow path), and decodes
# with the pipeline's VAE (scaling and shift factors; Flux's packed latents unpacked first).


def _guidance_default(pipe, fallback: float) -> float:
    """The pipeline's own default guidance scale (its __call__ signature)."""
    p = inspect.signature(type(pipe).__call__).parameters.get("guidance_scale")
    return fallback if p is None or p.default is inspect.Parameter.empty else float(p.default)


def _prompts(cond, name: str) -> list[str]:
    prompts = [cond] if isinstance(cond, str) else list(cond or [])
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{name} is text-conditioned: pass cond=[prompt, ...], one prompt per sample")
    return prompts


def epsilon_from(prediction_type: str, out: torch.Tensor, x: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """eps from a network's output: as is ("epsilon"), eps = sqrt(abar) v + sqrt(1 - abar) x_t ("v_prediction",
    Salimans & Ho 2022, eq. 9), or eps = (x_t - sqrt(abar) x̂_0) / sqrt(1 - abar) ("sample"); extra (variance)
    channels are kept as they are."""
    c = x.shape[1]
    head, rest = out[:, :c], out[:, c:]
    a = abar.to(x.dtype).reshape(-1, *[1] * (x.dim() - 1))
    if prediction_type == "epsilon":
        return out
    if prediction_type == "v_prediction":
        head = a.sqrt() * head + (1 - a).sqrt() * x
    elif prediction_type == "sample":
        head = (x - a.sqrt() * head) / (1 - a).sqrt()
    else:
        raise ValueError(f"prediction_type {prediction_type!r} is none nestedlib converts (epsilon, v_prediction, "
                         "sample, or a flow scheduler)")
    return torch.cat([head, rest], dim=1)


def _latent_decoder(vae, unpack: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """Latents -> images in [-1, 1]: vae.decode(z / scaling_factor + shift_factor) (LDM's D; SD3 and Flux shift)."""
    scale, shift = float(vae.config.scaling_factor), float(getattr(vae.config, "shift_factor", None) or 0.0)

    @torch.no_grad()
    def decode(z: torch.Tensor) -> torch.Tensor:
        z = unpack(z) if unpack is not None else z
        upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
        if upcast:  # SDXL's VAE overflows in float16: its pipeline decodes in float32 (force_upcast), so do we
            vae.to(torch.float32)
        try:
            return vae.decode(z.to(vae.dtype) / scale + shift).sample.clamp(-1, 1).float()
        finally:
            if upcast:
                vae.to(torch.float16)

    return decode


def _ddpm_model(pipe, name: str, kind: str, fn, cond, null, scale: float, shape, *, device, dtype, preset) -> Model:
    """A Model on the scheduler's DDPM path: fn's output converted to eps by the scheduler's prediction type."""
    schedule = Schedule.from_diffusers(pipe.scheduler)
    prediction = pipe.scheduler.config.prediction_type
    abar = schedule.alphas_cumprod.to(device)

    def eps_fn(x, t, c):
        return epsilon_from(prediction, fn(x, t, c), x, abar[t].to(torch.float64))

    network = Network(eps_fn, cond=cond, null_cond=null, guidance_scale=scale, image_shape=shape[1:])
    return Model(name, kind, network, schedule, tuple(shape), _latent_decoder(pipe.vae), device=device, dtype=dtype,
                 preset=preset, pipeline=pipe)


def _cfg(scale: float) -> float:
    """The guidance scale a pipeline applies: w > 1 guides (uncond + w (cond - uncond)); w <= 1 runs cond alone."""
    return float(scale) if scale > 1.0 else 1.0


def _wrap_sd(pipe, cond, scale, negative_prompt, height, width, name, preset) -> Model:
    """Stable Diffusion 1.x/2.x (`sd_model`); a v-prediction scheduler (SD 2.x 768) converts to eps."""
    model = sd_model(pipe, _prompts(cond, name), _cfg(scale), name, negative_prompt or "", preset)
    if pipe.scheduler.config.get("prediction_type", "epsilon") != "epsilon":
        return _ddpm_model(pipe, name, "sd", model.network.fn, model.network.cond, model.network.null_cond, _cfg(scale),
                           model.shape, device=model.device, dtype=model.dtype, preset=model.preset)
    model.pipeline = pipe
    return model


def _text_setup(pipe, cond, negative_prompt, height, width, name):
    """The prompts, the image size (the pipeline's default sample size when not given) and one negative per prompt."""
    prompts = _prompts(cond, name)
    height = height or pipe.default_sample_size * pipe.vae_scale_factor
    width = width or pipe.default_sample_size * pipe.vae_scale_factor
    negative = None if negative_prompt is None else [negative_prompt] * len(prompts)
    return prompts, height, width, negative


def _wrap_sdxl(pipe, cond, scale, negative_prompt, height, width, name, preset) -> Model:
    """SDXL: two text encoders, and the added conditioning (pooled text embeds, size and crop time ids)."""
    prompts, height, width, negative = _text_setup(pipe, cond, negative_prompt, height, width, name)
    unet, device, dtype = pipe.unet, pipe.unet.device, pipe.unet.dtype
    with torch.no_grad():
        embeds, neg_embeds, pooled, neg_pooled = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                                                    do_classifier_free_guidance=True,
                                                                    negative_prompt=negative)
    projection = (int(pooled.shape[-1]) if pipe.text_encoder_2 is None
                  else pipe.text_encoder_2.config.projection_dim)
    time_ids = pipe._get_add_time_ids((height, width), (0, 0), (height, width), dtype=embeds.dtype,
                                      text_encoder_projection_dim=projection).to(device).repeat(len(prompts), 1)
    if unet.config.time_cond_proj_dim is not None:
        raise ValueError(f"{name}'s UNet takes a guidance embedding (time_cond_proj_dim, an LCM); nestedlib does "
                         "not drive it")

    def fn(x, t, c):
        added = {"text_embeds": c["pooled"], "time_ids": c["time_ids"]}
        return unet(x.to(dtype), t, encoder_hidden_states=c["embeds"], added_cond_kwargs=added).sample.to(x.dtype)

    shape = (len(prompts), unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    return _ddpm_model(pipe, name, "sdxl", fn, {"embeds": embeds, "pooled": pooled, "time_ids": time_ids},
                       {"embeds": neg_embeds, "pooled": neg_pooled, "time_ids": time_ids}, _cfg(scale), shape,
                       device=device, dtype=dtype, preset=preset)


def _wrap_pixart(pipe, cond, scale, negative_prompt, height, width, name, preset) -> Model:
    """PixArt-alpha/sigma: a T5-conditioned transformer with learned sigma (dropped, as the pipeline drops it)."""
    prompts = _prompts(cond, name)
    tr, device, dtype = pipe.transformer, pipe.transformer.device, pipe.transformer.dtype
    height = height or tr.config.sample_size * pipe.vae_scale_factor
    width = width or tr.config.sample_size * pipe.vae_scale_factor
    sigma = type(pipe).__name__.startswith("PixArtSigma") or any(
        c.__name__ == "PixArtSigmaPipeline" for c in type(pipe).__mro__)
    with torch.no_grad():
        embeds, mask, neg_embeds, neg_mask = pipe.encode_prompt(
            prompts, True, negative_prompt=negative_prompt or "", device=device, clean_caption=True,
            max_sequence_length=300 if sigma else 120)
    cond_, null = {"embeds": embeds, "mask": mask}, {"embeds": neg_embeds, "mask": neg_mask}
    if tr.config.sample_size == 128 and not sigma:  # PixArt-alpha 1024 px: resolution and aspect-ratio micro-conditions
        res = torch.tensor([height, width]).repeat(len(prompts), 1).to(device, embeds.dtype)
        ratio = torch.tensor([float(height / width)]).repeat(len(prompts), 1).to(device, embeds.dtype)
        cond_.update(resolution=res, aspect_ratio=ratio)
        null.update(resolution=res, aspect_ratio=ratio)
    c_lat = tr.config.in_channels

    def fn(x, t, c):
        added = {"resolution": c.get("resolution"), "aspect_ratio": c.get("aspect_ratio")}
        out = tr(x.to(dtype), encoder_hidden_states=c["embeds"], encoder_attention_mask=c["mask"], timestep=t,
                 added_cond_kwargs=added, return_dict=False)[0].to(x.dtype)
        return out[:, :c_lat] if tr.config.out_channels // 2 == c_lat else out  # learned sigma: the pipeline drops it

    shape = (len(prompts), c_lat, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    return _ddpm_model(pipe, name, "pixart", fn, cond_, null, _cfg(scale), shape, device=device, dtype=dtype,
                       preset=preset)


def _flow_model(pipe, name: str, kind: str, fn, cond, null, scale: float, shape, schedule, decode, *, device,
                dtype) -> Model:
    """A Model on a flow path: fn returns the velocity v_theta(x_sigma, sigma); the pipeline's scheduler must be
    FlowMatchEulerDiscreteScheduler (its steps are nestedlib.flow's FlowDDIM)."""
    network = Network(fn, cond=cond, null_cond=null, guidance_scale=scale, image_shape=shape[1:])
    return Model(name, kind, network, schedule, tuple(shape), decode, device=device, dtype=dtype, pipeline=pipe,
                 prediction="flow")


def _flow_scheduler(pipe, mu=None, spacing="scheduler"):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from .flow import FlowSchedule

    if not isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler):
        raise ValueError(f"nestedlib drives {type(pipe).__name__} with a FlowMatchEulerDiscreteScheduler (written "
                         f"out in nestedlib.flow), not {type(pipe.scheduler).__name__}; set pipe.scheduler = "
                         "FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config) first")
    return FlowSchedule.from_diffusers(pipe.scheduler, mu=mu, spacing=spacing)


def _sigma_timesteps(t: torch.Tensor) -> torch.Tensor:
    """The pipeline's timestep for sigma: sigma T in float32, as FlowMatchEulerDiscreteScheduler's `timesteps`."""
    return t.to(torch.float32) * 1000


def _wrap_sd3(pipe, cond, scale, negative_prompt, height, width, name, preset) -> Model:
    """Stable Diffusion 3: a flow transformer on CLIP-L, CLIP-G and T5 embeddings, guided on the velocity."""
    prompts, height, width, negative = _text_setup(pipe, cond, negative_prompt, height, width, name)
    tr, device, dtype = pipe.transformer, pipe.transformer.device, pipe.transformer.dtype
    with torch.no_grad():
        embeds, neg_embeds, pooled, neg_pooled = pipe.encode_prompt(
            prompts, None, None, device=device, do_classifier_free_guidance=True, negative_prompt=negative)
    shape = (len(prompts), tr.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    mu = None
    if pipe.scheduler.config.get("use_dynamic_shifting", None):
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

        c = pipe.scheduler.config
        mu = calculate_shift((shape[2] // tr.config.patch_size) * (shape[3] // tr.config.patch_size),
                             c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.16))

    def fn(x, t, c):
        return tr(hidden_states=x.to(dtype), timestep=_sigma_timesteps(t), encoder_hidden_states=c["embeds"],
                  pooled_projections=c["pooled"], return_dict=False)[0].to(x.dtype)

    return _flow_model(pipe, name, "sd3", fn, {"embeds": embeds, "pooled": pooled},
                       {"embeds": neg_embeds, "pooled": neg_pooled}, _cfg(scale), shape, _flow_scheduler(pipe, mu),
                       _latent_decoder(pipe.vae), device=device, dtype=dtype)


def _wrap_flux(pipe, cond, scale, negative_prompt, height, width, name, preset) -> Model:
    """Flux: a guidance-distilled flow transformer; the guidance scale is a network input (no second branch), on
    packed 2 x 2 latent patches, with FluxPipeline's own sigmas and its resolution-dependent shift mu."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    if negative_prompt:
        raise ValueError("FluxPipeline's true CFG (negative_prompt with true_cfg_scale) is not driven by nestedlib; "
                         "Flux's guidance is the network input guidance_scale")
    prompts = _prompts(cond, name)
    tr, device, dtype = pipe.transformer, pipe.transformer.device, pipe.transformer.dtype
    height = height or pipe.default_sample_size * pipe.vae_scale_factor
    width = width or pipe.default_sample_size * pipe.vae_scale_factor
    with torch.no_grad():
        embeds, pooled, text_ids = pipe.encode_prompt(prompts, None, device=device)
    h, w = 2 * (int(height) // (pipe.vae_scale_factor * 2)), 2 * (int(width) // (pipe.vae_scale_factor * 2))
    channels = tr.config.in_channels // 4
    image_ids = pipe._prepare_latent_image_ids(len(prompts), h // 2, w // 2, device, embeds.dtype)
    shape = (len(prompts), (h // 2) * (w // 2), channels * 4)
    c = pipe.scheduler.config
    mu = calculate_shift(shape[1], c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                         c.get("base_shift", 0.5), c.get("max_shift", 1.15))
    guidance = float(scale) if tr.config.guidance_embeds else None

    def fn(x, t, c):
        g = None if guidance is None else torch.full([x.shape[0]], guidance, device=x.device, dtype=torch.float32)
        timestep = _sigma_timesteps(t).to(x.dtype) / 1000  # FluxPipeline: t.to(latents.dtype) / 1000
        return tr(hidden_states=x.to(dtype), timestep=timestep, guidance=g, pooled_projections=c["pooled"],
                  encoder_hidden_states=c["embeds"], txt_ids=text_ids, img_ids=image_ids,
                  return_dict=False)[0].to(x.dtype)

    def unpack(z):
        return pipe._unpack_latents(z, height, width, pipe.vae_scale_factor)

    return _flow_model(pipe, name, "flux", fn, {"embeds": embeds, "pooled": pooled}, None, 1.0, shape,
                       _flow_scheduler(pipe, mu, "flux"), _latent_decoder(pipe.vae, unpack), device=device,
                       dtype=dtype)


def _wrap_dit(pipe, cond, scale, negative_prompt, height, width, name, preset) -> Model:
    """DiT: class labels (`dit_model`); nestedlib's DDIM steps need the pipeline's DDIMScheduler for `samplers`."""
    if cond is None:
        raise ValueError(f"{name} is class-conditional: pass cond=[label, ...] (one per sample)")
    if _is_flow(pipe):
        return flow_dit_model(pipe, cond, _cfg(scale), name)
    model = dit_model(pipe, cond, _cfg(scale), name, preset)
    model.pipeline = pipe
    return model


PIPELINES: dict[str, tuple[Callable[..., Model], float]] = {  # class name: (wrapper, guidance if the pipeline has none)
    "StableDiffusionPipeline": (_wrap_sd, 7.5),
    "StableDiffusionXLPipeline": (_wrap_sdxl, 5.0),
    "PixArtAlphaPipeline": (_wrap_pixart, 4.5),
    "PixArtSigmaPipeline": (_wrap_pixart, 4.5),
    "StableDiffusion3Pipeline": (_wrap_sd3, 7.0),
    "FluxPipeline": (_wrap_flux, 3.5),
    "DiTPipeline": (_wrap_dit, 4.0),
}


def pipeline_model(pipe, cond: Any = None, guidance_scale: float | None = None, *, negative_prompt: str | None = None,
                   height: int | None = None, width: int | None = None, name: str | None = None,
                   preset: str | Preset = "book") -> Model:
    """A diffusers pipeline object as a nestedlib Model, by its class (or the first class of its MRO that
    nestedlib knows, so a subclass built from the same components works too); guidance defaults to the pipeline's."""
    known = next((c.__name__ for c in type(pipe).__mro__ if c.__name__ in PIPELINES), None)
    if known is None:
        parts = sorted(getattr(pipe, "components", {}) or {})
        raise ValueError(f"nestedlib cannot drive a {type(pipe).__name__} (components: {parts}): it knows how "
                         f"{', '.join(PIPELINES)} call their networks. Add a wrapper to "
                         "nestedlib.pipelines.PIPELINES for it")
    wrap, fallback = PIPELINES[known]
    scale = _guidance_default(pipe, fallback) if guidance_scale is None else float(guidance_scale)
    return wrap(pipe, cond, scale, negative_prompt, height, width, name or known, preset_of(preset))


def samplers(model: Model, outer: int, inner: int | Sequence[int], *, eta: float | None = None) -> dict[str, Diffusion]:
    """The pipeline's own sampler at |outer| x |inner| steps ("vanilla": equal to calling the pipeline on the same
    noise) and Nested Diffusion with `outer` steps of `inner` inner steps each ("nested"), for a `pipeline_model`.

    Flow pipelines: vanilla = Euler on the pipeline's sigmas; nested = outer FlowDDIM(eta = 0) steps on the same
    grid, each an inner Euler run from the outer sigma (`nestedlib.flow`), so 1 outer or 1 inner step is vanilla.
    DDPM-path pipelines: vanilla = DDIM on the scheduler's own grid (its timestep_spacing, to its final abar), for
    a DDIMScheduler only (any other, e.g. SDXL's Euler, is not written out here: "vanilla" then refuses to run);
    nested = the book's outer DDIM over round(linspace(1, 999)) around inner DDIM(eta) runs (eta: the inner
    stochasticity, default 0) with the scheduler's betas and final abar (`inner_from_scheduler`).
    """
    outer = positive_int("outer", outer)
    counts = step_counts(inner)
    total = sum(counts) if isinstance(inner, (list, tuple)) else outer * counts[0]
    if model.prediction == "flow":
        from .flow import euler

        return {"vanilla": euler(model.network, model.schedule, total),
                "nested": nested(euler(model.network, model.schedule, inner, eta=eta or 0.0), outer)}
    from diffusers import DDIMScheduler

    sched, net = model.schedule, model.network
    scheduler = model.pipeline.scheduler if model.pipeline is not None else None
    if not isinstance(scheduler, DDIMScheduler):  # e.g. SDXL's Euler: nestedlib's DDIM on the scheduler's betas
        return {"vanilla": _NotThePipelines(model.name, type(scheduler).__name__),
                "nested": nested(vanilla(net, sched, inner, transition="ddim", eta=eta or 0.0), outer)}
    refuse_clipping(scheduler, f"{model.name}'s")  # before the vanilla sampler: the pipeline's step is not ours

    def grid(steps: int, num_timesteps: int) -> list[int]:
        s = copy.deepcopy(scheduler)
        s.set_timesteps(steps)
        return s.timesteps.tolist()

    van = FixedGrid(NetworkMean(net, sched), DDIM(sched, 0.0, float(scheduler.final_alpha_cumprod)), total, grid)
    return {"vanilla": van, "nested": nested(inner_from_scheduler(scheduler, net, inner, eta=eta or 0.0), outer)}


class _NotThePipelines:
    """samplers()["vanilla"] for a pipeline whose scheduler nestedlib does not write out: refuses to run."""

    def __init__(self, name: str, scheduler: str):
        self.message = (f"{name}'s {scheduler} is not written out in nestedlib, so its vanilla sampler cannot be "
                        "reproduced here (the nested one uses nestedlib's DDIM on the same betas); call the pipeline "
                        "itself, or set pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, "
                        "clip_sample=False)")

    def __getattr__(self, attribute):
        raise ValueError(self.__dict__["message"])

"""Nested Diffusion around a diffusers pipeline you already have: a finished image after every outer step.

    pipe = StableDiffusionXLPipeline.from_pretrained("stabilityai/stable-diffusion-xl-base-1.0").to("cuda")
    nested = NestedPipeline(pipe, outer=5, inner=6)           # 30 network evaluations, a finished image every 6
    for step in nested.previews("an astronaut riding a horse", generator=torch.Generator("cuda").manual_seed(0)):
        step.images[0].save(f"astronaut_{step.nfe:02d}.png")
    out = nested("an astronaut riding a horse")               # or at once: out.images (final), out.previews

Each preview is the inner process's finished generation decoded by the pipeline's own VAE and image processor, not
the one-step x̂_0 that step previews (callback_on_step_end, latent2rgb, TAESD) show. The pipeline's progress bar
counts network evaluations and honours `pipe.set_progress_bar_config`; setting `pipe._interrupt = True` (from a
callback, as diffusers' pipelines read it) stops after the current network call and keeps the last finished
image. The models it drives and how: `nestedlib.pipelines.pipeline_model` and `samplers`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from .pipelines import pipeline_model, samplers
from .sampling import Context, Event, StopSampling, counting_nfe
from .schedules import positive_int


@dataclass
class NestedStep:
    """One outer step of Algorithm 2: its finished images, their latents, and the NFEs spent so far."""

    step: int  # outer step index, 0 ..
    nfe: int  # network evaluations spent when this image was finished
    images: Any  # the pipeline's output_type: a list of PIL images, a numpy array, a tensor ("pt"), or latents
    latents: torch.Tensor  # the inner process's final x_0 (latents; Flux: packed)


@dataclass
class NestedOutput:
    """What `NestedPipeline.__call__` returns: the last finished images and every preview before them."""

    images: Any
    previews: list[NestedStep]
    nfe: int
    interrupted: bool = False


class NestedPipeline:
    """Algorithm 2 with a diffusers pipeline's own network, conditioning, guidance and VAE (`pipeline_model`).

    outer, inner: the outer steps and the inner steps of each (a count, or one count per outer step); eta: the
    inner process's stochasticity (DDIM's eta on a DDPM path; 0 on a flow path is Euler).
    """

    def __init__(self, pipe, outer: int = 5, inner: int | list[int] = 4, eta: float = 0.0):
        self.pipe, self.outer, self.inner, self.eta = pipe, positive_int("outer", outer), inner, eta

    def previews(self, prompt: Any, *, generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                 guidance_scale: float | None = None, negative_prompt: str | None = None, height: int | None = None,
                 width: int | None = None, output_type: str = "pil",
                 callback: Callable[[Event], None] | None = None) -> Iterator[NestedStep]:
        """Yield each outer step's finished images as it completes (Algorithm 2, line 3's inner output, decoded).

        prompt: one prompt or a list (class labels for DiTPipeline). callback(event) sees every event of every
        depth (nestedlib.sampling.Event), the place to set `pipe._interrupt = True`; breaking out of the loop stops
        sampling too.
        """
        pipe = self.pipe
        prompts = [prompt] if isinstance(prompt, str) else prompt
        model = pipeline_model(pipe, prompts, guidance_scale, negative_prompt=negative_prompt, height=height,
                               width=width)
        process = samplers(model, self.outer, self.inner, eta=self.eta)["nested"]
        x = model.noise(generator) if latents is None else latents.to(model.device, model.dtype)
        start = getattr(model.schedule, "start", None)
        start = model.schedule.num_timesteps - 1 if start is None else start
        pipe._interrupt = False
        with counting_nfe(), torch.no_grad(), pipe.progress_bar(total=process.nfe(start)) as bar:
            ticked = [0]

            def report(event: Event) -> None:
                bar.update(event.nfe - ticked[0])  # one tick per network evaluation, at every depth
                ticked[0] = event.nfe
                if callback is not None:
                    callback(event)
                if getattr(pipe, "_interrupt", False):
                    raise StopSampling

            try:
                for event in process.iterate(x, start, Context(generator=generator, callback=report)):
                    yield NestedStep(event.path[0], event.nfe, self._images(model, event.x0, output_type), event.x0)
            except StopSampling:
                return

    def __call__(self, prompt: Any, **options) -> NestedOutput:
        """Run to the end (or to `pipe._interrupt`): the final images and every outer step's preview."""
        steps = list(self.previews(prompt, **options))
        if not steps:
            raise StopSampling("interrupted before the first outer step finished: no image to return")
        return NestedOutput(steps[-1].images, steps, steps[-1].nfe, interrupted=len(steps) < self.outer)

    def _images(self, model, x0: torch.Tensor, output_type: str):
        """x_0 decoded by the pipeline's VAE and postprocessed by its image processor, as the pipeline outputs."""
        if output_type == "latent":
            return x0
        images = model.decode(x0)  # [-1, 1]
        processor = getattr(self.pipe, "image_processor", None)
        if processor is not None:
            return processor.postprocess(images, output_type=output_type)
        arrays = (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().float().numpy()  # DiTPipeline's own
        if output_type == "np":
            return arrays
        if output_type == "pt":
            return torch.from_numpy(arrays).permute(0, 3, 1, 2)
        return self.pipe.numpy_to_pil(arrays)  # DiTPipeline's own conversion (one channel: mode "L")

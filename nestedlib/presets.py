"""Sampler presets: what "book" (this book's defaults) and "paper" (the authors' exact code paths) each set, as one
`Preset` object per preset with one named field per setting, and the unaltered Stable Diffusion 1.5 sampler that the
paper preset's vanilla baseline is (`sd15_timesteps`, `FixedGrid`). `nestedlib.pipelines` reads them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from .sampling import Context, Diffusion, Event
from .schedules import CLEAN, SPACINGS, positive_int


@dataclass(frozen=True)
class Preset:
    """A sampler preset: every setting in which the authors' code and this book's defaults differ, by name."""

    name: str
    grid_spacing: str  # DiT and pixel grids, outer and inner: "linspace" (rounded) or "space_timesteps" (DiT's)
    dit_guided_channels: int | None  # guidance on these first latent noise channels; None: all of them
    sd_inner_end_abar0: bool  # SD inner DDIM: last step from t = 1 to abar_0 = 0.99915 (True) or exactly to x̂_0
    sd_vanilla: str  # SD vanilla DDIM: "linspace" (round(linspace(1, 999)), to x̂_0) or "sd15" (`sd15_timesteps`)
    sd_guidance_below_one: bool  # w < 1 means eps_u + w (eps_c - eps_u) (True), or is refused (the authors: off)

    def __post_init__(self):
        if self.grid_spacing not in SPACINGS or self.sd_vanilla not in ("linspace", "sd15"):
            raise ValueError(f"preset {self.name!r}: grid_spacing must be one of {SPACINGS} and sd_vanilla 'linspace' "
                             f"or 'sd15', got {self.grid_spacing!r} and {self.sd_vanilla!r}")

    def __str__(self) -> str:
        return self.name


BOOK = Preset("book", grid_spacing="linspace", dit_guided_channels=None, sd_inner_end_abar0=False,
              sd_vanilla="linspace", sd_guidance_below_one=True)
"""This book's defaults: rounded-linspace grids, guidance on every channel (diffusers' DiTPipeline), every run ends
exactly at x̂_0."""
PAPER = Preset("paper", grid_spacing="space_timesteps", dit_guided_channels=3, sd_inner_end_abar0=True,
               sd_vanilla="sd15", sd_guidance_below_one=False)
"""The authors' exact code paths: improved-diffusion's `space_timesteps` grids and guidance on the first 3 latent
channels (their DiT script); the inner DDIM ending at abar_0 (their NestedScheduler); vanilla SD as diffusers'
DDIMScheduler with SD 1.5's config (the unaltered sampler the paper compares against)."""
PRESETS = {p.name: p for p in (BOOK, PAPER)}

# SD 1.5's scheduler config (its scheduler_config.json), as diffusers' DDIMScheduler.from_config reads it.
SD15_DDIM = {"timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False}


def preset_of(preset: str | Preset) -> Preset:
    """The Preset named `preset` ("book" or "paper"), or the Preset itself; anything else says what to pass."""
    if isinstance(preset, Preset):
        return preset
    if isinstance(preset, str) and preset in PRESETS:
        return PRESETS[preset]
    raise ValueError(f"unknown preset {preset!r}; use 'paper' (the authors' exact settings) or 'book'")


def sd15_timesteps(steps: int, num_timesteps: int = 1000, steps_offset: int = SD15_DDIM["steps_offset"]) -> list[int]:
    """diffusers' DDIMScheduler grid under SD 1.5's config ("leading" spacing, steps_offset 1): t_i = i (T // n) + 1,
    i = n - 1, ..., 0 (50 steps: 981, 961, ..., 1)."""
    steps = positive_int("the number of steps", steps)
    ratio = num_timesteps // steps
    grid = (np.arange(int(steps))[::-1] * ratio + steps_offset).tolist()
    if ratio == 0 or grid[0] > num_timesteps - 1:
        raise ValueError(f"SD 1.5's DDIM grid has no {steps} distinct steps at or below t={num_timesteps - 1} "
                         f"(stride {num_timesteps} // {steps}, offset {steps_offset}); use at most "
                         f"{num_timesteps // 2} steps")
    return grid


class FixedGrid(Diffusion):
    """Algorithm 1 from x_T over a pipeline's own grid, as diffusers samples (SD 1.5's DDIM: 981, 961, ..., 1).

    `timesteps(steps, num_timesteps)` gives the grid (e.g. `sd15_timesteps`); it is built when the sampler runs, so
    an impossible grid is an error then, as for `Diffusion`. The result is the sampler's last state, the pipeline's
    final latents: with abar_0 < 1 at the clean end (`set_alpha_to_one=False`) the last step returns
    sqrt(abar_0) x̂_0 + sqrt(1 - abar_0) epŝ, not x̂_0, so the last event reports that state as its x0; every earlier
    event previews the network's mean, as in `Diffusion`.
    """

    def __init__(self, x0_sampler, transition, steps: int, timesteps: Callable[[int, int], list[int]]):
        super().__init__(x0_sampler, transition, steps)
        self.timesteps = timesteps

    def grid(self, t_start: int, index: int = 0) -> list[int]:
        """The pipeline's grid; it is a vanilla sampler that starts from x_T, not an inner process."""
        top = self.schedule.num_timesteps - 1
        if t_start != top:
            raise ValueError(f"a FixedGrid sampler runs from x_T (t={top}) over its own grid; it cannot start at "
                             f"t={t_start} as an inner process")
        return self.timesteps(self.steps, top + 1)

    def iterate(self, x: torch.Tensor, t_start: int, ctx: Context, index: int = 0):
        """`Diffusion.iterate`, with the last event's x0 = its x (the sampler's output), for callbacks and results."""

        def last_is_output(event: Event) -> Event:
            return replace(event, x0=event.x) if event.depth == ctx.depth and event.t_next == CLEAN else event

        inner = replace(ctx, callback=lambda event: ctx.report(last_is_output(event)))
        for event in super().iterate(x, t_start, inner, index):
            yield last_is_output(event)

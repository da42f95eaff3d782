"""nestedlib: Nested Diffusion (Elata, Kawar, Michaeli, Elad; arXiv 2305.19066) as small, tested pieces."""
from .schedules import CLEAN, Schedule, outer_timesteps, split_budget, timesteps
from .transitions import DDIM, DDPM
from .sampling import (
    Diffusion, Estimate, Event, LearnedVariance, Network, NetworkMean, NFECounter, Result, StopSampling, counting_nfe,
    nested, run, sample_generators, stream, vanilla,
)

__version__ = "0.1.0"

"""Shared fixtures: a linear schedule, the 2-D toy and its exact epsilon network."""
import pytest
import torch

from nestedlib import Network, Schedule
from nestedlib.toy import GaussianMixture


@pytest.fixture(scope="session")
def schedule() -> Schedule:
    return Schedule.linear()


@pytest.fixture(scope="session")
def mixture() -> GaussianMixture:
    return GaussianMixture.default()


@pytest.fixture
def toy_net(mixture, schedule) -> Network:
    return Network(mixture.network(schedule))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)

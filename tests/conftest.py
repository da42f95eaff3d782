"""Shared fixtures: a linear schedule, the 2-D toy and its exact epsilon network; the `slow` tier."""
import inspect

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


def flip_last_byte(path) -> None:
    """Corrupt a weight file the way a broken download does: one byte changed, the size kept."""
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pytest_collection_modifyitems(items):
    """Mark `slow` every test that builds the book (the `html` fixture) or executes a chapter (calls
    test_notebooks.execute), so that `pytest -m "not slow"` is the unit layer; other slow tests carry the mark."""
    for item in items:
        fn = getattr(item, "function", None)
        if "html" in getattr(item, "fixturenames", ()) or (fn is not None and "execute(" in inspect.getsource(fn)):
            item.add_marker(pytest.mark.slow)

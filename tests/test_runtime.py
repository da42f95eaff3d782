"""The thread policy of the chapters: one torch thread unless asked, and a clear error for a bad request."""
import pytest
import torch

from nestedlib.runtime import THREADS_VARIABLE, set_threads


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_one_thread_unless_asked(monkeypatch):
    monkeypatch.delenv(THREADS_VARIABLE, raising=False)
    torch.set_num_threads(2)
    assert set_threads() == 1 and torch.get_num_threads() == 1


def test_the_environment_and_the_argument_choose(monkeypatch):
    monkeypatch.setenv(THREADS_VARIABLE, "2")
    assert set_threads() == 2 and torch.get_num_threads() == 2
    assert set_threads(1) == 1 and torch.get_num_threads() == 1  # the argument wins over the environment


@pytest.mark.parametrize("env", ["two", "0", "-1", "1.5"])
def test_a_bad_environment_value_is_refused_with_what_to_do(monkeypatch, env):
    monkeypatch.setenv(THREADS_VARIABLE, env)
    with pytest.raises(ValueError, match=THREADS_VARIABLE):
        set_threads()


@pytest.mark.parametrize("bad", [0, -2, 1.0, True])
def test_a_bad_argument_is_refused(bad):
    with pytest.raises(ValueError, match="threads"):
        set_threads(bad)


def test_progress_yields_every_item_and_draws_on_stderr_only(capsys):
    """The book build drops stderr (_config.yml: stderr_output: remove), so a bar there never reaches a page."""
    from nestedlib.runtime import progress

    assert list(progress(range(5), desc="work")) == [0, 1, 2, 3, 4]
    out = capsys.readouterr()
    assert out.out == "" and "work" in out.err and "5/5" in out.err

"""scripts/sweep.py records the code it ran: the commit, '+dirty' and the changed files, and refuses a modified tree
unless given --allow-dirty (a committed result then names a commit that regenerates it)."""
import importlib.util
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sweep(tmp_path, monkeypatch):
    """scripts/sweep.py, its ROOT pointed at a fresh git repository with one commit."""
    spec = importlib.util.spec_from_file_location("sweep_script", ROOT / "scripts" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path,
                                    check=True, capture_output=True, text=True).stdout
    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-q", "-m", "one")
    monkeypatch.setattr(module, "ROOT", tmp_path)
    return module, tmp_path, git("rev-parse", "HEAD").strip()


def test_a_clean_tree_records_its_commit(sweep):
    module, _, head = sweep
    assert module.check_clean(allow_dirty=False) == {"commit": head, "modified": []}


def test_a_modified_tree_is_refused_unless_allowed(sweep):
    module, repo, head = sweep
    (repo / "code.py").write_text("x = 2\n")
    (repo / "new.py").write_text("y = 1\n")  # an untracked file changes what runs, too
    with pytest.raises(SystemExit, match="--allow-dirty"):
        module.check_clean(allow_dirty=False)
    code = module.check_clean(allow_dirty=True)
    assert code["commit"] == head + "+dirty" and sorted(code["modified"]) == ["code.py", "new.py"]


def test_outside_a_checkout_the_commit_is_unknown(sweep, tmp_path_factory, monkeypatch):
    module, _, _ = sweep
    monkeypatch.setattr(module, "ROOT", tmp_path_factory.mktemp("not-a-repo"))
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(module.ROOT.parent))
    assert module.provenance() == {"commit": "unknown", "modified": []}


def test_the_option_is_documented():
    assert "--allow-dirty" in (ROOT / "scripts" / "sweep.py").read_text()

"""The scripts record the code they ran (`nestedlib.runtime.provenance`): the commit, '+dirty' and the changed files;
scripts/sweep.py refuses a modified tree unless given --allow-dirty (a committed result then names a commit that
regenerates it)."""
import subprocess
from pathlib import Path

import pytest

from nestedlib import runtime

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo(tmp_path):
    """A fresh git repository with one commit, and its HEAD."""
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path,
                                    check=True, capture_output=True, text=True).stdout
    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-q", "-m", "one")
    return tmp_path, git("rev-parse", "HEAD").strip()


def test_a_clean_tree_records_its_commit(repo):
    root, head = repo
    assert runtime.check_clean(root, False, "scripts/sweep.py") == {"commit": head, "modified": []}


def test_a_modified_tree_is_refused_unless_allowed(repo):
    root, head = repo
    (root / "code.py").write_text("x = 2\n")
    (root / "new.py").write_text("y = 1\n")  # an untracked file changes what runs, too
    with pytest.raises(SystemExit, match="scripts/sweep.py: .*--allow-dirty"):
        runtime.check_clean(root, False, "scripts/sweep.py")
    code = runtime.check_clean(root, True, "scripts/sweep.py")
    assert code["commit"] == head + "+dirty" and sorted(code["modified"]) == ["code.py", "new.py"]


def test_outside_a_checkout_the_commit_is_unknown(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.mktemp("not-a-repo")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(root.parent))
    assert runtime.provenance(root) == {"commit": "unknown", "modified": []}


def test_both_scripts_record_the_commit_through_the_library():
    for script in ("sweep.py", "anytime.py"):
        text = (ROOT / "scripts" / script).read_text()
        assert "runtime.provenance(" in text or "runtime.check_clean(" in text, script
        assert "git rev-parse" not in text and '"rev-parse"' not in text, script  # no copy of its own


def test_the_option_is_documented():
    assert "--allow-dirty" in (ROOT / "scripts" / "sweep.py").read_text()

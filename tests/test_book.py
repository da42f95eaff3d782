"""The whole book builds with warnings as errors (every notebook executed), as scripts/book.sh builds it."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_book_builds_without_warnings(tmp_path):
    jb = Path(sys.executable).with_name("jupyter-book")
    proc = subprocess.run(
        [str(jb), "build", str(ROOT), "-W", "-n", "--keep-going", "--path-output", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    html = tmp_path / "_build" / "html"
    assert (html / "notebooks" / "quickstart.html").exists()
    page = (html / "notebooks" / "quickstart.html").read_text()
    assert "<img" in page  # the executed notebook's figure is in the page

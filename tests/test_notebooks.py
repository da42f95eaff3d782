"""Every chapter runs top to bottom through papermill with small parameters, and the claims it rests on hold."""
import json
from pathlib import Path

import nbformat
import papermill
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# Small values for CI; the defaults in each notebook's parameters cell are what the rendered book shows.
SMALL = {
    "quickstart": dict(n_samples=600),
}


def execute(name: str, tmp_path: Path) -> dict:
    out_dir = tmp_path / name
    papermill.execute_notebook(
        str(ROOT / "notebooks" / f"{name}.ipynb"), str(tmp_path / f"{name}.ipynb"),
        parameters={**SMALL.get(name, {}), "out_dir": str(out_dir)}, cwd=str(ROOT), kernel_name="python3",
        progress_bar=False,
    )
    path = out_dir / "results.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_every_notebook_has_small_parameters():
    assert {p.stem for p in NOTEBOOKS} == set(SMALL)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_without_outputs_and_with_one_parameters_cell(nb):
    cells = nbformat.read(nb, as_version=4).cells
    code = [c for c in cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs before committing"
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1


def test_quickstart_claims(tmp_path):
    r = execute("quickstart", tmp_path)
    ed = {row["nfe"]: row for row in r["results"]["energy_distance"]}
    first, last = min(ed), max(ed)
    # anytime: after 20 % of the NFEs the nested preview is already a sample, vanilla's is not
    assert ed[first]["nested"] < 0.05 < 0.5 < ed[first]["vanilla"]
    # and the final results are equally good
    assert ed[last]["nested"] < 0.05 and ed[last]["vanilla"] < 0.05

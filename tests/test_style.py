"""What a reader sees: a result table shows in a live kernel and, once, numbered and captioned, in the built book."""
import re
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from nestedlib import style

ROOT = Path(__file__).resolve().parents[1]
TABLE = pd.DataFrame({"sampler": ["vanilla", "nested"], "FID": ["312.4", "298.1"]}).set_index("sampler")


@pytest.fixture(scope="module")
def shell():
    """An IPython shell, as a Jupyter kernel runs one (display() publishes to it), with its history kept in memory."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    yield shell
    InteractiveShell.clear_instance()


def shown_outputs(shell, *args, **kwargs) -> list:
    """The display_data outputs a cell calling show_table(*args, **kwargs) gets, as a notebook stores them."""
    from IPython.utils.capture import capture_output

    with capture_output() as captured:
        style.show_table(*args, **kwargs)
    return [nbformat.v4.new_output("display_data", data=o.data, metadata=o.metadata) for o in captured.outputs]


def test_a_table_is_shown_in_a_live_kernel(shell):
    outputs = shown_outputs(shell, "tbl-demo", TABLE)
    visible = [o for o in outputs if "text/html" in o.data]  # what Jupyter, JupyterLab or Colab render
    assert len(visible) == 1, outputs
    html = visible[0].data["text/html"]
    assert html.startswith(f'<div class="{style.IN_PLACE}"') and "<table" in html
    assert all(cell in html for cell in ("vanilla", "nested", "312.4", "298.1"))


def test_index_false_leaves_the_row_labels_out(shell):
    html = next(o.data["text/html"] for o in shown_outputs(shell, "tbl-demo", TABLE.reset_index(), index=False)
                if "text/html" in o.data)
    assert "vanilla" in html and not re.search(r"<th[^>]*>\s*0\s*</th>", html)


def test_the_book_gets_the_table_under_its_name_and_no_second_copy(shell):
    """myst-nb's glue extraction finds the table under its name; the cell keeps only the in-place copy."""
    from myst_nb.ext.glue import extract_glue_data_cell

    cell = nbformat.v4.new_code_cell("show_table(...)", outputs=shown_outputs(shell, "tbl-demo", TABLE))
    glued = dict(extract_glue_data_cell(cell))
    assert list(glued) == ["tbl-demo"] and "312.4" in glued["tbl-demo"]["data"]["text/html"]
    assert len(cell.outputs) == 1 and cell.outputs[0].data["text/html"].startswith(f'<div class="{style.IN_PLACE}"')


def test_a_built_page_shows_each_table_once_numbered_and_captioned(shell, tmp_path):
    """A one-page book through myst-nb and book/_ext: the table appears once, as "Table 1" with its caption, and
    the cell's other outputs (here a printed line) still show."""
    from sphinx.application import Sphinx

    outputs = [nbformat.v4.new_output("stream", name="stdout", text="computed from 2 seeds\n")]
    outputs += shown_outputs(shell, "tbl-demo", TABLE)
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Demo"),
        nbformat.v4.new_code_cell('print("computed from 2 seeds")\nshow_table("tbl-demo", table)', outputs=outputs),
        nbformat.v4.new_markdown_cell(
            "```{glue:figure} tbl-demo\n:figclass: result-table\n:name: tbl-demo-fig\n\nFID of each sampler.\n```"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(nb, src / "index.ipynb")
    (src / "conf.py").write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT / 'book' / '_ext')!r})\n"
        "extensions = ['myst_nb', 'book_assets']\nnb_execution_mode = 'off'\nnumfig = True\n"
        "exclude_patterns = ['_build']\n"
    )
    app = Sphinx(str(src), str(src), str(tmp_path / "html"), str(tmp_path / "doctrees"), "html",
                 status=None, warning=sys.stderr, warningiserror=True)
    app.build()
    page = (tmp_path / "html" / "index.html").read_text()
    assert page.count("<table") == 1 and style.IN_PLACE not in page
    figure = re.search(r'<figure class="[^"]*result-table[^"]*".*?</figure>', page, flags=re.S)
    assert figure and "<table" in figure[0] and "312.4" in figure[0]
    assert re.search(r'class="caption-number">Table 1', figure[0]) and "FID of each sampler." in figure[0]
    assert "computed from 2 seeds" in page

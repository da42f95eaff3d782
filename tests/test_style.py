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


@pytest.fixture(scope="module")
def built_page(shell, tmp_path_factory) -> str:
    """A one-page book through myst-nb and book/_ext: a cell that prints a line and shows a table, the table pasted
    with {glue:figure}, and a cell whose figure (captioned by cell metadata, as the chapters do) gets a phone layout."""
    from IPython.utils.capture import capture_output
    from sphinx.application import Sphinx

    tmp_path = tmp_path_factory.mktemp("page")
    outputs = [nbformat.v4.new_output("stream", name="stdout", text="computed from 2 seeds\n")]
    outputs += shown_outputs(shell, "tbl-demo", TABLE)
    fig, _ = grid_figure(2, 5)
    with capture_output() as captured:
        style.show_figure(fig, order="columns")
    figure_cell = nbformat.v4.new_code_cell("show_figure(fig)", outputs=[
        nbformat.v4.new_output("display_data", data=o.data, metadata=o.metadata) for o in captured.outputs])
    figure_cell.metadata["mystnb"] = {"figure": {"caption": "Ten panels.", "name": "fig-demo"},
                                      "image": {"alt": "Ten line plots."}}
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Demo"),
        nbformat.v4.new_code_cell('print("computed from 2 seeds")\nshow_table("tbl-demo", table)', outputs=outputs),
        nbformat.v4.new_markdown_cell(
            "```{glue:figure} tbl-demo\n:figclass: result-table\n:name: tbl-demo-fig\n\nFID of each sampler.\n```"),
        figure_cell,
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
    return (tmp_path / "html" / "index.html").read_text()


def test_a_built_page_shows_each_table_once_numbered_and_captioned(built_page):
    """The table appears once, as "Table 1" with its caption; the cell's other output (a printed line) still shows."""
    assert built_page.count("<table") == 1 and style.IN_PLACE not in built_page
    figure = re.search(r'<figure class="[^"]*result-table[^"]*".*?</figure>', built_page, flags=re.S)
    assert figure and "<table" in figure[0] and "312.4" in figure[0]
    assert re.search(r'class="caption-number">Table 1', figure[0]) and "FID of each sampler." in figure[0]
    assert "computed from 2 seeds" in built_page


def test_a_built_figure_carries_both_layouts_under_one_caption(built_page):
    """One figure, one number: the image as drawn (layout-wide) and the phone layout (layout-narrow, same alt)."""
    figure = re.search(r'<figure[^>]*id="fig-demo".*?</figure>', built_page, flags=re.S)
    assert figure, built_page[-3000:]
    images = re.findall(r"<img[^>]*>", figure[0])
    assert len(images) == 2 and "layout-wide" in images[0] and "layout-narrow" in images[1], images
    assert all('alt="Ten line plots."' in i and 'loading="lazy"' in i for i in images)
    assert figure[0].count("caption-number") == 1


def grid_figure(rows: int, cols: int, panel_in: float = 2.0):
    """A rows x cols grid of small line plots, each titled by its place, as the chapters draw them."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    style.setup_figures()
    fig, axes = plt.subplots(rows, cols, figsize=(panel_in * cols, panel_in * rows), squeeze=False, sharey=True)
    for r in range(rows):
        for c in range(cols):
            axes[r, c].plot([0, 1], [r, c])
            axes[r, c].set_title(f"row {r}, column {c}")
    fig.tight_layout()
    return fig, axes


def image_of(output, mime: str):
    import base64
    import io

    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(output.data[mime])))


def test_a_wide_grid_also_carries_a_phone_layout_that_fits_a_phone(shell):
    """A 2 x 5 grid (1,500 px) gets a phone layout in the same output: at most PHONE_WIDTH_IN wide, so a 358 px
    column shows it at MIN_SCALE or more; a live kernel ranks image/png first and shows the figure as drawn."""
    from IPython.utils.capture import capture_output

    fig, _ = grid_figure(2, 5)
    with capture_output() as captured:
        style.show_figure(fig)
    (output,) = captured.outputs
    wide, narrow = image_of(output, "image/png"), image_of(output, "image/jpeg")
    assert wide.width * style.MIN_SCALE > style.PHONE_COLUMN_PX  # would scroll sideways on a phone
    assert narrow.width * style.MIN_SCALE <= style.PHONE_COLUMN_PX and narrow.height > wide.height


def test_a_figure_a_phone_holds_is_shown_once(shell):
    from IPython.utils.capture import capture_output

    fig, _ = grid_figure(1, 2, panel_in=2.4)
    with capture_output() as captured:
        style.show_figure(fig)
    assert sorted(captured.outputs[0].data) == ["image/png", "text/plain"]


@pytest.mark.parametrize("order, expected", [
    ("rows", [[(0, 0), (0, 1)], [(0, 2), (1, 0)], [(1, 1), (1, 2)]]),  # reading order kept, two per phone row
    ("columns", [[(0, 0), (1, 0)], [(0, 1), (1, 1)], [(0, 2), (1, 2)]]),  # each desktop column is a phone row
])
def test_phone_layout_puts_the_panels_in_fewer_columns(order, expected):
    fig, axes = grid_figure(2, 3, panel_in=2.4)
    assert style.phone_layout(fig, order=order)
    placed = {}
    for r in range(2):
        for c in range(3):
            spec = axes[r, c].get_subplotspec()
            placed[spec.rowspan.start, spec.colspan.start] = (r, c)
    assert [[placed[i, j] for j in range(2)] for i in range(3)] == expected
    assert fig.get_size_inches()[0] <= style.PHONE_WIDTH_IN
    assert all(ax.yaxis.get_tick_params()["labelleft"] for ax in axes.flat)  # shared y: every panel labelled again


@pytest.mark.filterwarnings("error")  # e.g. tight_layout failing on a label placed by another panel
def test_phone_layout_labels_every_moved_panel():
    """A grid labelled once per row and column (x labels at the bottom, y labels on the left, titles on top) keeps
    every panel readable on its own once the panels move."""
    fig, axes = grid_figure(2, 3, panel_in=2.4)
    for ax in axes.flat:
        ax.set_title("")
    for c in range(3):
        axes[0, c].set_title(f"task {c}")
        axes[1, c].set_xlabel("NFE")
    for r in range(2):
        axes[r, 0].set_ylabel(f"measure {r}", fontsize=7)
    assert style.phone_layout(fig, order="columns")
    for r in range(2):
        for c in range(3):
            ax = axes[r, c]
            assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == (f"task {c}", "NFE", f"measure {r}")
            assert ax.yaxis.label.get_fontsize() == 7


def test_phone_layout_leaves_a_colour_bar_figure_alone():
    fig, axes = grid_figure(1, 4)
    fig.colorbar(axes[0, 0].imshow([[0, 1]]), ax=axes[0, -1])
    assert not style.phone_layout(fig) and fig.get_size_inches()[0] == 8.0
    with pytest.raises(ValueError, match="rows"):
        style.phone_layout(fig, order="diagonal")

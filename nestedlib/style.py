"""What a reader sees: result tables the book numbers and captions, one colour per sampler, figures fit to reuse.

* ``show_table(name, df)``: a chapter's result table (a pandas DataFrame), shown in place in a live kernel and handed
  to the book, which places it with ``{glue:figure}`` and ``:figclass: result-table`` as a numbered, captioned table
  and leaves the in-place copy out (book/_ext/book_assets.py).
* ``pm(values)``: "mean ± sd" over seeds, the form every table cell takes.
* ``colour(sampler)``: vanilla red, Nested Diffusion blue, the inner process green, in every chapter's figures.
* ``setup_figures()``: figures at 150 dpi with fonts that stay legible when a page scales them down.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

COLOURS = {
    "vanilla": "tab:red",  # vanilla sampling and its previews (the network's mean)
    "nested": "tab:blue",  # Nested Diffusion with the paper's split, and its outer previews
    "inner": "tab:green",  # the inner process's own one-step previews
    "floor": "0.45",  # real-vs-real references
}
OTHERS = ("tab:purple", "tab:orange", "tab:brown", "tab:olive", "tab:cyan", "tab:pink", "tab:gray")
PAPER_SPLITS = ("nested 5x20", "nested 5x50", "nested 25x4 (paper)", "nested, ddim inner")  # drawn as "nested"


def colour(name: str, others: Sequence[str] = ()) -> str:
    """A sampler's colour: "vanilla…" red, "nested" (and the paper's split) blue, "inner" green; any other name gets
    the next colour of OTHERS in the order of `others` (the chapter's list of its other samplers), so it is stable."""
    if name in COLOURS:
        return COLOURS[name]
    if name.startswith("vanilla"):
        return COLOURS["vanilla"]
    if name in PAPER_SPLITS:
        return COLOURS["nested"]
    rest = [n for n in others if n not in COLOURS and not n.startswith("vanilla") and n not in PAPER_SPLITS]
    return OTHERS[rest.index(name) % len(OTHERS)] if name in rest else OTHERS[-1]


def setup_figures(dpi: int = 150) -> None:
    """Matplotlib defaults of the book's figures: `dpi` dots per inch (150: sharp on a slide) and 9 pt text."""
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": dpi, "savefig.dpi": dpi, "font.size": 9, "axes.titlesize": 9,
                         "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8})


def pm(values, digits: int = 1, scale: float = 1.0) -> str:
    """"mean ± sd" of `values` x `scale` (sample standard deviation over seeds; only the mean for one value; "–" for
    none)."""
    v = np.asarray([x for x in values if x is not None], dtype=float) * scale
    if len(v) == 0:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f}\u00a0±\u00a0{v.std(ddof=1):.{digits}f}"  # no-break spaces: one cell, one line


IN_PLACE = "table-in-place"  # class of the copy a live kernel shows; the book drops it (book/_ext/book_assets.py)


def show_table(name: str, df, index: bool = True) -> None:
    """Show the DataFrame `df` in place and hand it to the book under `name` (myst-nb's glue, pasted where the text
    numbers and captions it). The in-place copy is wrapped in a div of class IN_PLACE, which the book build leaves
    out, so a live kernel (Jupyter, Colab) shows the table once and the book shows it once, where it is pasted.
    index=False leaves the row labels out."""
    from IPython.core.formatters import format_display_data
    from IPython.display import display

    table = df if index else df.style.hide(axis="index")
    bundle, _ = format_display_data(table)
    shown = {"text/html": f'<div class="{IN_PLACE}" data-glue="{name}">{bundle["text/html"]}</div>',
             "text/plain": bundle.get("text/plain", "")}
    display(shown, raw=True)
    try:
        from myst_nb import glue
    except ImportError:  # Colab or a Jupyter without the book's tools: nothing to hand over
        return
    glue(name, table, display=False)  # a record no frontend shows (its mime types carry myst-nb's prefix)

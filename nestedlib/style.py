"""What a reader sees: result tables the book numbers and captions, one colour per sampler, figures fit to reuse.

* ``show_table(name, df)``: a chapter's result table (a pandas DataFrame), shown in place in a live kernel and handed
  to the book, which places it with ``{glue:figure}`` and ``:figclass: result-table`` as a numbered, captioned table
  and leaves the in-place copy out (book/_ext/book_assets.py).
* ``glue(name, value)``: a number or a phrase handed to the page's text (``{glue:text}``).
* ``pm(values)``: "mean ± sd" over seeds, the form every table cell takes.
* ``colour(sampler)``: vanilla red, Nested Diffusion blue, the inner process green, in every chapter's figures.
* ``setup_figures()``: figures at 150 dpi with fonts that stay legible when a page scales them down.
* ``show_figure(fig)``: a figure as drawn, plus, for a wide grid of panels, the same panels in fewer columns for a
  phone, in the same output (the book shows that one on narrow screens: book/_ext/book_assets.py).
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


PHONE_COLUMN_PX = 358  # CSS pixels of the text column on a 390 px phone
MIN_SCALE = 0.45  # the smallest scale a page shows a figure at (book-figures.js): 9 pt at 150 dpi stays 8 px tall
PHONE_WIDTH_IN = 4.8  # a phone layout's width: 720 px at 150 dpi, shown at half its size in the phone's column


def _image_bytes(fig, fmt: str = "png") -> bytes:
    """`fig` saved as the inline backend saves it (tight bounding box, savefig.dpi), as png or jpeg."""
    import io

    buf = io.BytesIO()
    kwargs = {"pil_kwargs": {"quality": 90}} if fmt == "jpeg" else {}
    fig.savefig(buf, format=fmt, bbox_inches="tight", facecolor="white", **kwargs)
    return buf.getvalue()


def _label_from(label, others) -> None:
    """Give an empty axis label or title the text and style of the first non-empty one of `others`."""
    if label.get_text():
        return
    source = next((o for o in others if o.get_text()), None)
    if source is not None:  # not Text.update_from: that also copies the other panel's transform
        label.set_text(source.get_text())
        label.set_fontproperties(source.get_fontproperties())
        label.set(color=source.get_color(), rotation=source.get_rotation(), ha=source.get_ha(), va=source.get_va())


def phone_layout(fig, order: str = "rows") -> bool:
    """Re-lay `fig`'s grid of panels out for a phone, in place: k columns (as many as fit PHONE_WIDTH_IN with each
    panel at 75 % of its width or more), the panels taken row by row (order="rows") or column by column
    (order="columns": a desktop column, e.g. one NFE, becomes whole phone rows). A panel without an x label, y label
    or title takes its desktop column's x label and title and its row's y label, which the desktop grid wrote once.
    False when the figure is not one grid of single-cell panels (then it is left as it is)."""
    import math

    from matplotlib.gridspec import GridSpec
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    if order not in ("rows", "columns"):
        raise ValueError(f'order must be "rows" or "columns", not {order!r}')
    panels = [ax for ax in fig.axes if ax.get_visible()]
    specs = [ax.get_subplotspec() for ax in panels]
    if not panels or None in specs or len({id(s.get_gridspec()) for s in specs}) > 1 or any(
            len(s.rowspan) > 1 or len(s.colspan) > 1 for s in specs):
        return False  # colour bars, insets or panels spanning cells: no safe way to move them
    rows, cols = specs[0].get_gridspec().get_geometry()
    at = {(s.rowspan.start, s.colspan.start): ax for s, ax in zip(specs, panels)}
    for (r, c), ax in at.items():  # labels a desktop grid writes once per row or column go on every moved panel
        _label_from(ax.xaxis.label, [at[i, c].xaxis.label for i in range(rows - 1, -1, -1) if (i, c) in at])
        _label_from(ax.yaxis.label, [at[r, j].yaxis.label for j in range(cols) if (r, j) in at])
        _label_from(ax.title, [at[i, c].title for i in range(rows) if (i, c) in at])
    key = (lambda s: (s.rowspan.start, s.colspan.start)) if order == "rows" else (
        lambda s: (s.colspan.start, s.rowspan.start))
    panels = [ax for _, ax in sorted(zip(map(key, specs), panels), key=lambda t: t[0])]
    width, height = fig.get_size_inches()
    panel_w, panel_h = width / cols, height / rows
    k = max(1, min(int(PHONE_WIDTH_IN // (0.75 * panel_w)), cols if order == "rows" else rows, len(panels)))
    if order == "columns":  # a desktop column fills whole phone rows: 4 panels go 2 + 2, not 3 + 1
        k = max(d for d in range(1, k + 1) if rows % d == 0)
    new_w = min(k * panel_w, PHONE_WIDTH_IN)
    scale = new_w / (k * panel_w)
    grid = GridSpec(math.ceil(len(panels) / k), k, figure=fig)
    for i, ax in enumerate(panels):
        ax.set_subplotspec(grid[i // k, i % k])
        if len(ax.get_shared_x_axes().get_siblings(ax)) > 1 or len(ax.get_shared_y_axes().get_siblings(ax)) > 1:
            ax.tick_params(labelbottom=True, labelleft=True)  # shared axes hid the inner panels' tick labels
    fig.set_size_inches(new_w, panel_h * scale * math.ceil(len(panels) / k))
    if not isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine):  # constrained layout redoes itself
        fig.tight_layout()
    return True


def show_figure(fig, order: str = "rows") -> None:
    """Display `fig` (and close it). When it is wider than a phone's column holds at MIN_SCALE, the same output also
    carries `phone_layout(fig, order)` as image/jpeg: Jupyter and Colab rank image/png first, so a live kernel shows
    the figure as drawn; the book shows the phone layout on narrow screens instead of scrolling sideways."""
    import base64
    import io

    import matplotlib.pyplot as plt
    from IPython.display import display
    from PIL import Image

    wide = _image_bytes(fig)
    bundle = {"image/png": base64.b64encode(wide).decode(), "text/plain": repr(fig)}
    if Image.open(io.BytesIO(wide)).width * MIN_SCALE > PHONE_COLUMN_PX and phone_layout(fig, order):
        bundle["image/jpeg"] = base64.b64encode(_image_bytes(fig, "jpeg")).decode()
    plt.close(fig)
    display(bundle, raw=True)


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
        from myst_nb import glue as _glue
    except ImportError:  # Colab or a Jupyter without the book's tools: nothing to hand over
        return
    _glue(name, table, display=False)  # a record no frontend shows (its mime types carry myst-nb's prefix)


def glue(name: str, value, display: bool = False) -> None:
    """Hand a number or a phrase to the page's text (myst-nb's glue, as a plain int, float or str: `{glue:text}`), or
    print it where myst-nb is not installed (e.g. Colab)."""
    if not isinstance(value, str):
        value = int(value) if isinstance(value, (int, np.integer)) else float(value)
    try:
        from myst_nb import glue as _glue
    except ImportError:
        print(f"{name} = {value}")
        return
    _glue(name, value, display=display)

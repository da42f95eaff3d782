"""Sphinx extension for the book's pages: small fixes that keep the browser console clean and the HTML valid.

- Drops repeated inline <script> bodies: with Jupyter Book 1.0.4, sphinx-thebe and sphinx-togglebutton each add
  their inline configuration twice, and the second `const THEBE_JS_URL = ...` is a SyntaxError on every page.
- Adds a MathJax 2 -> 3 shim for ipywidgets' HTML manager, which typesets widget labels with MathJax.Hub.Queue.
- Sets the theme's default colour mode, so that a first visit (empty localStorage) logs no error.
- Makes element ids unique: sphinx-exercise and sphinx-proof give every exercise, solution and proof the same id.
- Registers the pybtex style `author_year`, whose bibliography labels read as the text cites ("Efron, 2011").
- Adds book.css: on a phone, long inline math and code wrap instead of widening the page; result tables scroll
  sideways inside their own box.
- Adds book-figures.js: on a phone, a wide figure is shown at 45 % of its size or more and scrolls in its own box.
- Numbers result tables as tables: a `{glue:figure}` pasting a DataFrame with `:figclass: result-table` becomes a
  `result_table` node, which Sphinx counts apart from figures ("Table 10.1") and `{numref}` cites as a table.
- Leaves out the in-place copy of each result table: `nestedlib.style.show_table` shows a table in the cell (so a
  live kernel shows it) wrapped in `<div class="table-in-place">`, and glues it; the page shows it once, where the
  text pastes it with its number and caption. Nothing else the cell shows is touched.
- Shows a figure's phone layout on phones: `nestedlib.style.show_figure` puts a wide grid of panels into one output
  twice, as drawn (image/png, what a live kernel shows) and re-laid out in fewer columns (image/jpeg). Both become
  images of the page, classes layout-wide and layout-narrow, and book.css shows one by the screen's width.
"""
from collections import Counter
from pathlib import Path

from docutils import nodes
from sphinx.transforms import SphinxTransform
from pybtex.plugin import register_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle

# ids that sphinx-exercise / sphinx-proof put on every directive of a kind, whatever its label
REPEATED_IDS = {"exercise-content", "solution-content", "proof-content", "proof"}


def _dedupe(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        body = getattr(script, "attributes", {}).get("body")
        key = ("body", body) if body else ("file", str(script))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    scripts[:] = kept


def _unique_ids(app, doctree, docname):
    """Number the ids sphinx-exercise and sphinx-proof repeat: `solution-content` -> `solution-content-1`, ..."""
    counts: Counter = Counter()
    for node in doctree.findall(nodes.Element):
        for i, id_ in enumerate(node["ids"]):
            if id_ in REPEATED_IDS:
                counts[id_] += 1
                node["ids"][i] = f"{id_}-{counts[id_]}"


class AuthorYearLabels(BaseLabelStyle):
    """Bibliography labels as sphinxcontrib-bibtex's author_year style cites in the text: "Efron, 2011",
    "Ho and Salimans, 2021", "Elata et al., 2023"."""

    def format_labels(self, sorted_entries):
        for entry in sorted_entries:
            people = entry.persons.get("author") or entry.persons.get("editor") or []
            last = [Text.from_latex(" ".join(p.prelast_names + p.last_names)).render_as("text") for p in people]
            names = last[0] if len(last) == 1 else " and ".join(last) if len(last) == 2 else f"{last[0]} et al."
            yield f"{names}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearStyle(UnsrtStyle):
    """pybtex's unsrt entries, sorted by author and year, labelled by `AuthorYearLabels`."""

    default_label_style = "author_year"
    default_sorting_style = "author_year_title"


register_plugin("pybtex.style.labels", "author_year", AuthorYearLabels)
register_plugin("pybtex.style.formatting", "author_year", AuthorYearStyle)


class result_table(nodes.figure):
    """A chapter's result table (a pasted DataFrame with a caption): numbered as "Table", rendered as a figure."""


class ResultTables(SphinxTransform):
    """Turn `{glue:figure}`s of class result-table into result_table nodes, before Sphinx numbers them."""

    default_priority = 200

    def apply(self, **kwargs):
        for fig in list(self.document.findall(nodes.figure)):
            if "result-table" in fig["classes"]:
                table = result_table(fig.rawsource, *fig.children, **fig.attributes)
                fig.replace_self(table)
                for id_ in table["ids"]:  # labels ({numref}) look the node up by id
                    self.document.ids[id_] = table


IN_PLACE = '<div class="table-in-place"'  # nestedlib.style.IN_PLACE: a table a live kernel shows in its cell


class DropInPlaceTables(SphinxTransform):
    """Remove the cell outputs that are in-place copies of glued result tables (and a cell output box left empty)."""

    default_priority = 200

    def apply(self, **kwargs):
        for raw in list(self.document.findall(nodes.raw)):
            if not raw.astext().lstrip().startswith(IN_PLACE):
                continue
            bundle = raw
            while bundle is not None and bundle.get("nb_element") != "mime_bundle":
                bundle = bundle.parent
            if bundle is None or bundle.parent is None:
                continue
            box = bundle.parent
            box.remove(bundle)
            if "cell_output" in box.get("classes", []) and not box.children:
                box.parent.remove(box)


class PhoneLayouts(SphinxTransform):
    """A cell output carrying image/png and image/jpeg (nestedlib.style.show_figure) keeps both images: the png as
    drawn (class layout-wide), the jpeg with the panels in fewer columns (class layout-narrow, same alt text)."""

    default_priority = 200

    def apply(self, **kwargs):
        for bundle in list(self.document.findall(nodes.container)):
            if bundle.get("nb_element") != "mime_bundle":
                continue
            images = {c.get("mime_type"): c.children[0] for c in bundle.children
                      if c.children and isinstance(c.children[0], nodes.image)}
            if not {"image/png", "image/jpeg"} <= set(images):
                continue
            wide, narrow = images["image/png"], images["image/jpeg"]
            wide["classes"].append("layout-wide")
            narrow["classes"].append("layout-narrow")
            if wide.get("alt"):
                narrow["alt"] = wide["alt"]
            wide["loading"] = narrow["loading"] = "lazy"  # the browser fetches only the one the screen shows
            bundle.replace_self([wide.deepcopy(), narrow.deepcopy()])


def _visit_result_table(self, node):
    self.visit_figure(node)


def _depart_result_table(self, node):
    self.depart_figure(node)


def _static(app, config):
    config.html_static_path.append(str(Path(__file__).parent / "static"))
    config.html_context.setdefault("default_mode", "light")


def setup(app):
    app.add_enumerable_node(result_table, "table", html=(_visit_result_table, _depart_result_table))
    app.add_transform(ResultTables)
    app.add_transform(DropInPlaceTables)
    app.add_transform(PhoneLayouts)
    app.connect("config-inited", _static)
    app.connect("html-page-context", _dedupe, priority=900)
    app.connect("doctree-resolved", _unique_ids)
    app.add_js_file("mathjax-v2-shim.js", priority=900, defer="defer")  # after MathJax (priority 500 by default)
    app.add_css_file("book.css", priority=900)
    app.add_js_file("book-figures.js", priority=900, defer="defer")  # phones: wide figures scroll, labels stay legible  # after the theme's and the extensions' stylesheets
    return {"parallel_read_safe": True, "parallel_write_safe": True}

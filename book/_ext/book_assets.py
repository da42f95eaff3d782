"""Sphinx extension for the book's pages: small fixes that keep the browser console clean.

- Drops repeated inline <script> bodies: with Jupyter Book 1.0.4, sphinx-thebe and sphinx-togglebutton each add
  their inline configuration twice, and the second `const THEBE_JS_URL = ...` is a SyntaxError on every page.
- Adds a MathJax 2 -> 3 shim for ipywidgets' HTML manager, which typesets widget labels with MathJax.Hub.Queue.
- Sets the theme's default colour mode, so that a first visit (empty localStorage) logs no error.
"""
from pathlib import Path


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


def _static(app, config):
    config.html_static_path.append(str(Path(__file__).parent / "static"))
    config.html_context.setdefault("default_mode", "light")


def setup(app):
    app.connect("config-inited", _static)
    app.connect("html-page-context", _dedupe, priority=900)
    app.add_js_file("mathjax-v2-shim.js", priority=900, defer="defer")  # after MathJax (priority 500 by default)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

"""The library holds what the chapters import (d2l's rule): every nestedlib module is used by at least one notebook."""
import ast
import importlib
import json
from pathlib import Path

import nestedlib

ROOT = Path(__file__).resolve().parents[1]


def _notebook_imports() -> set[str]:
    """Modules of nestedlib the notebooks import, directly (`nestedlib.toy`) or through a name `nestedlib` re-exports."""
    used = set()
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            source = "".join(cell["source"])
            try:
                tree = ast.parse(source)
            except SyntaxError:  # cells with IPython magics
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nestedlib"):
                    if node.module == "nestedlib":
                        used |= {getattr(nestedlib, a.name).__module__ for a in node.names
                                 if hasattr(getattr(nestedlib, a.name), "__module__")}
                    else:
                        used.add(node.module)
    return used


def test_every_module_is_imported_by_a_chapter():
    modules = {f"nestedlib.{p.stem}" for p in (ROOT / "nestedlib").glob("*.py") if p.stem != "__init__"}
    for m in modules:
        importlib.import_module(m)
    unused = modules - _notebook_imports()
    assert not unused, f"not imported by any notebook (move to scripts/ or use it in a chapter): {sorted(unused)}"

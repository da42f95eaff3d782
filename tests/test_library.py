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
                    if node.module == "nestedlib":  # a re-exported name, or a submodule (`from nestedlib import sweep`)
                        for a in node.names:
                            obj = getattr(nestedlib, a.name)
                            used.add(obj.__name__ if isinstance(obj, type(nestedlib)) else getattr(obj, "__module__", ""))
                    else:
                        used.add(node.module)
    return used


def _library_imports(module: str) -> set[str]:
    """The nestedlib modules that `module` imports (relative or absolute, at the top or inside a function)."""
    tree = ast.parse((ROOT / "nestedlib" / f"{module.split('.')[-1]}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .weights import ...
                found.add(f"nestedlib.{node.module}")
            elif node.level == 1:  # from . import data
                found |= {f"nestedlib.{a.name}" for a in node.names}
            elif node.module and node.module.startswith("nestedlib."):
                found.add(node.module)
    return found


def test_every_module_is_imported_by_a_chapter():
    """Every module is imported by a chapter, or by a module a chapter imports (the files that models.py was split
    into: errors, weights, architectures, prompts, presets)."""
    modules = {f"nestedlib.{p.stem}" for p in (ROOT / "nestedlib").glob("*.py") if p.stem != "__init__"}
    for m in modules:
        importlib.import_module(m)
    reached, todo = set(), list(_notebook_imports() & modules)
    while todo:
        m = todo.pop()
        if m not in reached:
            reached.add(m)
            todo += list(_library_imports(m) & modules)
    unused = modules - reached
    assert not unused, f"not imported by any notebook (move to scripts/ or use it in a chapter): {sorted(unused)}"

"""Execute the book's chapters side by side, one torch thread each, into the cache the book build reads.

    .venv/bin/python scripts/execute_chapters.py [--jobs 2] [--cache _build/.jupyter_cache] [chapter ...]

Jupyter Book runs notebooks one after another. With one torch thread per notebook (nestedlib.runtime.set_threads,
chosen because it stays near its idle speed beside a busy process) that would leave cores idle, so this script runs
`--jobs` notebooks at once (default: the CPU count) and stores each executed notebook in a jupyter-cache; the build
(_config.yml: execute_notebooks: cache) then takes the outputs from there. The cache is emptied first, so every
figure comes from this run's code: scripts/book.sh and the book test call this script, build, and remove the cache.

Each chapter's per-cell limit is _config.yml's execute.timeout. Per chapter it prints the wall time and its longest
cell; `--times FILE` writes every cell's time as JSON (scripts/time_chapters.py compares idle and loaded runs).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def chapters() -> list[Path]:
    """The notebooks of _toc.yml, in reading order (only files the TOC lists are built)."""
    found: list[Path] = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                path = ROOT / f"{node['file']}.ipynb"
                if path.exists():
                    found.append(path)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(yaml.safe_load((ROOT / "_toc.yml").read_text()))
    return found


def cell_seconds(nb) -> list[tuple[int, float]]:
    """(code cell index, seconds) from nbclient's record_timing metadata."""
    out = []
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(code):
        timing = cell.get("metadata", {}).get("execution", {})
        start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
        if start and end:
            seconds = (datetime.fromisoformat(end.rstrip("Z")) - datetime.fromisoformat(start.rstrip("Z"))).total_seconds()
            out.append((i, seconds))
    return out


def execute_one(path: str, timeout: int) -> dict:
    """Run one notebook top to bottom in its own folder (as the book build does); return it executed, with timings."""
    import nbformat
    from jupyter_cache.executors.utils import single_nb_execution

    nb = nbformat.read(path, as_version=4)
    result = single_nb_execution(nb, cwd=str(Path(path).parent), timeout=timeout, allow_errors=False,
                                 record_timing=True)
    cells = cell_seconds(result.nb)
    for cell in result.nb.cells:  # the cache matches notebooks by code and cell metadata: leave them as committed
        cell.get("metadata", {}).pop("execution", None)
    return {"path": path, "nb": nbformat.writes(result.nb), "seconds": result.time, "error": result.exc_string,
            "cells": cells}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="chapter stems (default: every chapter of _toc.yml)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="notebooks at once (default: CPU count)")
    ap.add_argument("--cache", default=str(ROOT / "_build" / ".jupyter_cache"), help="jupyter-cache folder")
    ap.add_argument("--times", default=None, help="write each chapter's and cell's seconds to this JSON file")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")

    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    todo = chapters()
    if args.names:
        unknown = set(args.names) - {p.stem for p in todo}
        if unknown:
            ap.error(f"not chapters of _toc.yml: {sorted(unknown)}; choose from {[p.stem for p in todo]}")
        todo = [p for p in todo if p.stem in args.names]
    timeout = int(yaml.safe_load((ROOT / "_config.yml").read_text())["execute"]["timeout"])
    shutil.rmtree(args.cache, ignore_errors=True)  # every output from this run's code, none from an earlier one
    cache = get_cache(args.cache)
    os.environ.setdefault("NESTEDLIB_THREADS", "1")  # the kernels inherit it: one torch thread per chapter

    started, times, failed = time.perf_counter(), {}, []
    print(f"executing {len(todo)} chapters, {args.jobs} at a time, cell limit {timeout} s", flush=True)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(execute_one, str(p), timeout) for p in todo]
        for future in as_completed(futures):
            r = future.result()
            name = Path(r["path"]).stem
            longest = max(r["cells"], key=lambda c: c[1], default=(None, 0.0))
            times[name] = {"seconds": r["seconds"], "cells": r["cells"]}
            if r["error"]:
                failed.append(name)
                print(f"FAILED {name} after {r['seconds']:.0f} s\n{r['error'][-3000:]}", flush=True)
                continue
            stage = cache.add_nb_to_project(r["path"])
            cache.cache_notebook_bundle(CacheBundleIn(nbformat.reads(r["nb"], as_version=4), stage.uri,
                                                      data={"execution_seconds": r["seconds"]}),
                                        check_validity=False, overwrite=True)
            print(f"{name:>16}: {r['seconds']:6.0f} s, longest cell #{longest[0]} {longest[1]:.0f} s "
                  f"({time.perf_counter() - started:.0f} s since start)", flush=True)
    total = time.perf_counter() - started
    print(f"all chapters: {total:.0f} s wall, {sum(t['seconds'] for t in times.values()):.0f} s of chapter time", flush=True)
    if args.times:
        Path(args.times).write_text(json.dumps({"jobs": args.jobs, "wall_s": total, "chapters": times}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

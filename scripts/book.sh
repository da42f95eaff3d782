#!/usr/bin/env bash
# Sets everything up, then builds the whole book: every chapter executed afresh (side by side, one torch thread
# each: scripts/execute_chapters.py), warnings as errors, HTML in _build/html. Chapter and cell times go to
# _build/chapter-times.json.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cache=_build/.jupyter_cache
trap 'rm -rf "$cache"' EXIT  # a later plain `jupyter-book build` executes afresh instead of reusing these outputs
.venv/bin/python scripts/execute_chapters.py --cache "$cache" --times _build/chapter-times.json
.venv/bin/jupyter-book build . --all -W -n --keep-going --builder html "$@"
echo "open _build/html/index.html"

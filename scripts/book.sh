#!/usr/bin/env bash
# Sets everything up, then builds the whole book: every notebook executed, warnings as errors, HTML in _build/html.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/jupyter-book build . -W -n --keep-going --builder html "$@"
echo "open _build/html/index.html"

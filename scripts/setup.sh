#!/usr/bin/env bash
# Sets up everything the book and the tests need, idempotently; needs only the package registries:
#   .venv/ with the pinned environment of requirements.txt and nestedlib (editable), re-installed when the pins change;
#   _vendor/ with the widget and MathJax JavaScript (scripts/fetch_static.sh);
#   .cache/emoji/ with the two colour emoji packages and the 32x32 array built from them (scripts/fetch_emoji.sh);
#   Chromium and ChromeDriver for the browser test, from Debian's packages, when running as root.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.setup-stamp
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt
  .venv/bin/python -m pip install --quiet --no-deps -e .
  .venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
  echo "$want" > "$stamp"
  echo "python environment ready in .venv"
fi
bash scripts/fetch_static.sh
bash scripts/fetch_emoji.sh  # the colour emoji packages (.cache/emoji/, about 140 MB) and their 32x32 array
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing chromium and chromium-driver (Debian) for the browser test"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "note: chromium/chromedriver missing and not root; the browser test will be skipped" >&2
  fi
fi

#!/usr/bin/env bash
# Puts the colour emoji of the emoji stand-in into .cache/emoji/ (or $NESTEDLIB_EMOJI_DIR), from the npm registry, each
# package tarball checked against a pinned sha256, then builds the 32x32 array (nestedlib.data.build_emoji):
#   - emoji-datasource-twitter 16.0.0: Twemoji graphics, CC-BY 4.0 (Copyright Twitter Inc. and other contributors);
#   - emoji-datasource-google  16.0.0: Noto Emoji graphics, Apache License 2.0 (Google).
# Both carry 64 px PNGs and the same JSON index (emoji.json: name, short names, category, sub-category). Only the
# openly licensed vendors are fetched (the Apple and Facebook packages are not). Nothing here is committed: the
# tarballs stay in the cache and the array is rebuilt from them, checked against the sha256 pinned in nestedlib/data.py.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${NESTEDLIB_EMOJI_DIR:-.cache/emoji}
PY=${PY:-.venv/bin/python}
mkdir -p "$cache"

fetch() {  # fetch NAME VERSION SHA256-OF-TARBALL LICENCE-LINE-IN-README
  local name=$1 version=$2 sha=$3 licence=$4
  local tgz="$cache/$name-$version.tgz"
  if [ -f "$tgz" ] && [ "$(sha256sum "$tgz" | cut -d' ' -f1)" = "$sha" ]; then
    return 0
  fi
  command -v npm >/dev/null || { echo "npm is needed to fetch $name (apt-get install npm)" >&2; exit 1; }
  local tmp got
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$name@$version" >/dev/null 2>&1)
  got=$(sha256sum "$tmp/$name-$version.tgz" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    echo "$name@$version has sha256 $got, expected $sha; refusing to use it" >&2
    rm -rf "$tmp"
    exit 1
  fi
  # The graphics' licence is stated in the package's README (its LICENSE file is the MIT licence of the data and code).
  if ! tar xzf "$tmp/$name-$version.tgz" -O package/README.md | grep -qF "$licence"; then
    echo "$name@$version: its README no longer says \"$licence\"; check the licence before using the images" >&2
    rm -rf "$tmp"
    exit 1
  fi
  mv "$tmp/$name-$version.tgz" "$tgz"
  rm -rf "$tmp"
  echo "fetched $name $version into $tgz"
}

fetch emoji-datasource-twitter 16.0.0 f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877 \
  "Twitter images are available under the [Creative Commons Attribution 4.0 license]"
fetch emoji-datasource-google 16.0.0 fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438 \
  "Android/Google/Noto images, are available under the [Apache License 2.0]"
if [ "${NESTEDLIB_EMOJI_BUILD:-1}" = 1 ]; then
  NESTEDLIB_EMOJI_DIR="$cache" PYTHONPATH=$PWD "$PY" -m nestedlib.data emoji
fi

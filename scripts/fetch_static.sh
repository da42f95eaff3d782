#!/usr/bin/env bash
# Puts the JavaScript the rendered book needs into _vendor/ (copied to the built _static/), from the npm registry, each checked against a
# pinned sha256, so that pages load it from the book's own files and work offline (no CDN at read time):
#   - @jupyter-widgets/html-manager: renders the ipywidgets (NFE sliders) in a static page;
#   - mathjax (es5, without the speech engine): renders the equations.
set -euo pipefail
cd "$(dirname "$0")/.."
vendor=_vendor

fetch() {  # fetch NAME VERSION FILE-INSIDE-PACKAGE SHA256 DEST-DIR [EXTRAS: folders or globs beside FILE...]
  local name=$1 version=$2 file=$3 sha=$4 dest=$5
  shift 5
  if [ -f "$dest/$(basename "$file")" ] && [ "$(sha256sum "$dest/$(basename "$file")" | cut -d' ' -f1)" = "$sha" ]; then
    return 0
  fi
  command -v npm >/dev/null || { echo "npm is needed to fetch $name (apt-get install npm)" >&2; exit 1; }
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$name@$version" >/dev/null 2>&1 && tar xzf ./*.tgz)
  local got
  got=$(sha256sum "$tmp/package/$file" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    echo "$name $file has sha256 $got, expected $sha; refusing to use it" >&2
    rm -rf "$tmp"
    exit 1
  fi
  rm -rf "$dest"
  mkdir -p "$dest"
  cp "$tmp/package/$file" "$dest/"
  cp "$tmp/package/LICENSE"* "$dest/" 2>/dev/null || true
  local base extra
  base="$tmp/package/$(dirname "$file")"
  for extra in "$@"; do  # folders or glob patterns, relative to FILE's folder
    for found in $base/$extra; do
      cp -r "$found" "$dest/"
    done
  done
  rm -rf "$tmp"
  echo "fetched $name $version into $dest"
}

fetch @jupyter-widgets/html-manager 1.0.15 dist/embed.js \
  8f6d2d3f856d8595d1841dec3019d99bbe74d331f2a5178c2a33bfec729e3d6a "$vendor/html-manager" \
  "*.woff2" "*.woff" "*.ttf" "*.eot" "*.svg"
fetch mathjax 3.2.2 es5/tex-mml-chtml.js \
  300480069078b5892d2363a2b65e2dfbbf30fe5c80f83edbfecf4610fd093862 "$vendor/mathjax" \
  output input ui a11y adaptors

#!/usr/bin/env bash
# CPU run of Table 1 on the colour stand-in (emoji-dit): one scripts/sweep.py process per seed, one torch thread each
# (two cores: two seeds at a time), each seed's results.json copied here as seed<S>.json.
#   N=1000 bash results/table1-emoji-cpu/run.sh      # the committed sweep: about 2 h per seed on one core
#   N=100 SEEDS="0 1 2" bash results/table1-emoji-cpu/run.sh
# --resume keeps every finished micro-batch under $OUT/seed<S>/parts: run the same command again (from the same
# commit) and an interrupted sweep continues where it stopped, with the numbers of one uninterrupted run.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-1000}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/table1-emoji-n$N}
here=results/table1-emoji-cpu
for s in ${SEEDS:-0 1 2}; do
  NESTEDLIB_THREADS=1 "$PY" scripts/sweep.py --model emoji-dit --budgets 100 150 250 --samples "$N" --seeds "$s" \
    --batch 50 --preset paper --resume --out "$OUT/seed$s" 2>&1 | grep -v "it/s\]" | tail -20 &
  [ "$(jobs -r | wc -l)" -ge "${JOBS:-2}" ] && wait -n
done
wait
for s in ${SEEDS:-0 1 2}; do cp "$OUT/seed$s/results.json" "$here/seed$s.json"; done

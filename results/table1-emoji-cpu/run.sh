#!/usr/bin/env bash
# CPU run of Table 1 on the colour stand-in (emoji-dit): one scripts/sweep.py process per seed, one torch thread each
# (two cores: two seeds at a time), each seed's results.json copied here as seed<S>.json.
#   bash results/table1-emoji-cpu/run.sh            # N=300 samples per cell, seeds 0 1 2
#   N=1000 SEEDS="0 1 2" bash results/table1-emoji-cpu/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-300}
PY=${PY:-.venv/bin/python}
here=results/table1-emoji-cpu
for s in ${SEEDS:-0 1 2}; do
  NESTEDLIB_THREADS=1 "$PY" scripts/sweep.py --model emoji-dit --budgets 100 150 250 --samples "$N" --seeds "$s" \
    --batch 50 --preset paper --out "runs/table1-emoji/seed$s" 2>&1 | grep -v "it/s\]" | tail -20 &
  [ "$(jobs -r | wc -l)" -ge "${JOBS:-2}" ] && wait -n
done
wait
for s in ${SEEDS:-0 1 2}; do cp "runs/table1-emoji/seed$s/results.json" "$here/seed$s.json"; done

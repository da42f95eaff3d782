#!/usr/bin/env bash
# GPU run for issue 8's "how strong is the effect, and why": the early ratio under other settings, and dense curves.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
T0=$(date +%s); LIMIT=${LIMIT:-440}
sweep() {  # name, args...
  local name=$1; shift
  local left=$(( LIMIT - ($(date +%s) - T0) ))
  [ $left -lt 40 ] && { echo "skip $name: $left s left"; return; }
  timeout $left torchrun --nproc_per_node 6 --master_port $PORT scripts/sweep.py --seeds 0 1 2 --batch 250 \
    --device cuda --out $OUT/$name "$@" > /tmp/$name.log 2>&1
  echo "$name rc=$? at $(( $(date +%s) - T0 )) s"; grep -v "it/s\]" /tmp/$name.log | tail -14
}
V="--budgets 100 --samples 4000 --judges classifier logits pixels"
( PORT=29501; sweep uncond $V --preset paper --unconditional; sweep guid1 $V --preset paper --guidance 1;
  sweep guid3 $V --preset paper --guidance 3; sweep book $V --preset book ) &
( PORT=29502; sweep dense --budgets 100 250 --percents $(seq 20 4 100) --samples 3000 --preset paper ) &
wait
tar czf $OUT/logs.tgz -C /tmp uncond.log guid1.log guid3.log book.log dense.log 2>/dev/null
echo "all done at $(( $(date +%s) - T0 )) s"

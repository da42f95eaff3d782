#!/usr/bin/env bash
# GPU run of Table 1 (issue 8): probe, then one results.json per seed.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi -L; nproc
python3 -c "import torch, diffusers, torchmetrics; print(torch.__version__, diffusers.__version__, torchmetrics.__version__)"
K=${K:-8}
T0=$(date +%s)
torchrun --nproc_per_node $K scripts/sweep.py --budgets 100 --samples 2000 --seeds 0 --batch 250 --preset paper \
  --device cuda --out $OUT/probe 2>&1 | grep -v "it/s\]" | tail -15
echo "probe took $(( $(date +%s) - T0 )) s"
for s in 0 1 2; do
  left=$(( ${LIMIT:-570} - ($(date +%s) - T0) ))
  [ $left -lt 60 ] && { echo "stop before seed $s: $left s left"; break; }
  timeout $left torchrun --nproc_per_node $K scripts/sweep.py --budgets 100 150 250 --samples 10000 --seeds $s \
    --batch 250 --preset paper --judges classifier logits pixels --device cuda --out $OUT/table1-seed$s 2>&1 \
    | grep -v "it/s\]" | tail -22
  echo "seed $s done at $(( $(date +%s) - T0 )) s"
done

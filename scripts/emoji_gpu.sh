#!/usr/bin/env bash
# The emoji stand-in's GPU job as one command: train emoji-vae, then emoji-dit, on the GPU within fixed wall-clock
# budgets (checkpoints in runs/, resumable with --resume), measure both, and pack the bundles for the trip back.
# Every random draw is made on the CPU from the run's seeded generator; only the networks run on the GPU.
#
# Prepare on a machine with the package registry (the device machine has none), in the repository root:
#   bash scripts/fetch_emoji.sh        # .cache/emoji/emoji32-16.0.0.npz: the built array (25 MB), sha256-checked
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 importlib_metadata==10.2.0 zipp==4.1.2
# and carry `.cache/emoji/emoji32-16.0.0.npz` and `.whl` (data/emoji-classifier, the judge, is in the repository).
# Run:  VAE_MIN=3 DIT_MIN=5 bash scripts/emoji_gpu.sh      (what comes back: $OUT/*.tgz.part*, $OUT/log)
# Back here: cat emoji-*.tgz.part* | tar xz  (then the sha256 of every file is checked on load).
set -euo pipefail
cd "$(dirname "$0")/.."
VAE_MIN=${VAE_MIN:-3}      # wall-clock cap of the VAE's training (its shipped 8,000 steps of 256, if they fit)
DIT_MIN=${DIT_MIN:-4}      # wall-clock cap of the DiT's training (its shipped 12,000 steps of 256, if they fit)
VAE_STEPS=${VAE_STEPS:-8000} VAE_BATCH=${VAE_BATCH:-256}
DIT_STEPS=${DIT_STEPS:-12000} DIT_BATCH=${DIT_BATCH:-256}
out=${OUT:-runs/gpu-out}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 NESTEDLIB_THREADS=${NESTEDLIB_THREADS:-8}
{
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  python3 -c "from nestedlib import data; x, _ = data.emoji('train'); print('emoji array ok', tuple(x.shape))"
  python3 scripts/train.py emoji-vae --device cuda --batch "$VAE_BATCH" --steps "$VAE_STEPS" --minutes "$VAE_MIN" \
    --save-partial --threads "$NESTEDLIB_THREADS"
  python3 scripts/evaluate.py emoji-vae
  python3 scripts/train.py emoji-dit --device cuda --batch "$DIT_BATCH" --steps "$DIT_STEPS" --minutes "$DIT_MIN" \
    --save-partial --threads "$NESTEDLIB_THREADS"
  python3 scripts/evaluate.py emoji-dit --device cuda
  # one process feeding the GPU: the sweep's micro-batch against the bare network, noise row by row and drawn ahead
  python3 scripts/sweep_throughput.py --model mnist-dit --device cuda --batch 250 1000 --budget 100
  python3 scripts/sweep_throughput.py --model emoji-dit --device cuda --batch 1000 --budget 100
} 2>&1 | tr '\r' '\n' | grep -v '^\s*$' | tee "$out/log"
for m in emoji-vae emoji-dit; do  # files come back at most 16 MiB each: split the packed bundle
  tar czf - "data/$m" | split -b 15m -d - "$out/$m.tgz.part"
done
ls -la "$out"
